// Package kubetest holds what the integration and end-to-end tests share
// for working against a Kubernetes API server: waits on Sandboxes,
// SandboxPools, Pods and any condition, which fail with the last state they
// saw (never with a nil dereference when the object was never seen); the
// check that something does not happen over a window; test namespaces; and
// sample fast-sandbox objects.
package kubetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Poll is how a wait polls: every Interval, for at most Timeout.
type Poll struct {
	Interval time.Duration
	Timeout  time.Duration
}

// interval is p.Interval, or a hundredth of the timeout (between 10ms and
// 1s) when it is not set.
func (p Poll) interval() time.Duration {
	if p.Interval > 0 {
		return p.Interval
	}
	return min(max(p.Timeout/100, 10*time.Millisecond), time.Second)
}

// Until calls cond at once and then every p.Interval until it returns nil,
// and returns nil then. An error from cond means "not yet" and says why.
// Once p.Timeout has passed, or ctx is done, Until returns an error that
// says so and wraps cond's last error.
func (p Poll) Until(ctx context.Context, cond func(context.Context) error) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, p.interval(), p.Timeout, true, func(ctx context.Context) (bool, error) {
		err := cond(ctx)
		// An error of a call that the deadline cut short says nothing of
		// the condition: keep the one before.
		if err == nil || ctx.Err() == nil || last == nil {
			last = err
		}
		return err == nil, nil
	})
	if err == nil {
		return nil
	}
	if last == nil {
		return fmt.Errorf("gave up after %s: %w", p.Timeout, err)
	}
	return fmt.Errorf("still not after %s: %w", p.Timeout, last)
}

// Eventually waits as Until does and fails the test when the condition is
// not met in time, with what was awaited and cond's last error.
func Eventually(tb testing.TB, p Poll, what string, cond func(context.Context) error) {
	tb.Helper()
	if err := p.Until(context.Background(), cond); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}

// Consistently calls cond at once, every p.Interval and once more at the
// end of p.Timeout, and fails the test at the first error. It checks that
// something does not happen over a window, where a sleep and one look would
// see only the window's end.
func Consistently(tb testing.TB, p Poll, what string, cond func(context.Context) error) {
	tb.Helper()
	start := time.Now()
	end := start.Add(p.Timeout)
	for {
		if err := cond(context.Background()); err != nil {
			tb.Fatalf("%s: not so %s into the %s window: %v", what, time.Since(start).Round(time.Millisecond), p.Timeout, err)
		}
		left := time.Until(end)
		if left <= 0 {
			return
		}
		time.Sleep(min(p.interval(), left))
	}
}

// Want is what a wait on an object waits for: a predicate, and what it
// means (for the failure message).
type Want[T any] struct {
	What string
	OK   func(T) bool
}

// Where is the Want that ok says what means.
func Where[T any](what string, ok func(T) bool) Want[T] {
	return Want[T]{What: what, OK: ok}
}

// Exists wants the object to exist, whatever its state.
func Exists[T any]() Want[T] {
	return Where("existence", func(T) bool { return true })
}

// errNotYet is the condition error of an object seen not to be as wanted;
// the failure message describes the object instead.
var errNotYet = errors.New("not yet")

// waitObject polls get until want holds of the object, and returns it. On
// timeout it fails the test with the last object seen (described by
// describe) and the last error of get, whichever there are.
func waitObject[T any](tb testing.TB, p Poll, what string, get func(context.Context) (T, error), want Want[T], describe func(T) string) T {
	tb.Helper()
	o, err := observe(p, get, func(obj T, err error) bool { return err == nil && want.OK(obj) })
	if err != nil {
		tb.Fatalf("%s never had %s within %s: %s", what, want.What, p.Timeout, o.state(describe))
	}
	return o.last
}

// waitGone polls get until it fails with an error that gone says means
// the object is gone. On timeout it fails the test with the object as last
// seen.
func waitGone[T any](tb testing.TB, p Poll, what string, get func(context.Context) (T, error), gone func(error) bool, describe func(T) string) {
	tb.Helper()
	o, err := observe(p, get, func(_ T, err error) bool { return gone(err) })
	if err != nil {
		tb.Fatalf("%s still there after %s: %s", what, p.Timeout, o.state(describe))
	}
}

// observed is what polls of an object saw: the object last read, if any
// was, and the error of the last read, if it failed.
type observed[T any] struct {
	last T
	seen bool
	err  error
}

// observe polls get until done says its result is what is awaited.
func observe[T any](p Poll, get func(context.Context) (T, error), done func(T, error) bool) (observed[T], error) {
	var o observed[T]
	err := p.Until(context.Background(), func(ctx context.Context) error {
		obj, err := get(ctx)
		switch {
		case err == nil:
			o.last, o.seen, o.err = obj, true, nil
		case ctx.Err() == nil: // not a read that the deadline cut short
			o.err = err
		}
		switch {
		case done(obj, err):
			return nil
		case err != nil:
			return err
		}
		return errNotYet
	})
	return o, err
}

func (o observed[T]) state(describe func(T) string) string {
	switch {
	case o.seen && o.err == nil:
		return "last seen " + describe(o.last)
	case o.seen:
		return fmt.Sprintf("last seen %s; then reading it failed: %v", describe(o.last), o.err)
	case o.err != nil:
		return fmt.Sprintf("never seen: reading it failed: %v", o.err)
	default:
		return "never seen (no read finished in time)"
	}
}
