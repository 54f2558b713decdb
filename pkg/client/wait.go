package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// Condition says whether a Sandbox is what Wait waits for. An error ends
// the wait with that error (e.g. the sandbox can no longer get there).
type Condition func(*v1alpha1.Sandbox) (bool, error)

// Running is true once the sandbox's container runs: phase Running, or
// Paused (it runs again when resumed, and an idle-paused one when talked
// to). It fails when the sandbox finished first.
func Running(sb *v1alpha1.Sandbox) (bool, error) {
	switch sb.Status.Phase {
	case v1alpha1.SandboxRunning, v1alpha1.SandboxPaused:
		return true, nil
	case v1alpha1.SandboxSucceeded, v1alpha1.SandboxFailed:
		return false, &FinishedError{Sandbox: sb}
	}
	return false, nil
}

// Finished is true once the sandbox finished: phase Succeeded or Failed.
func Finished(sb *v1alpha1.Sandbox) (bool, error) {
	return IsFinished(sb), nil
}

// IsFinished says whether the sandbox is in phase Succeeded or Failed.
func IsFinished(sb *v1alpha1.Sandbox) bool {
	return sb.Status.Phase == v1alpha1.SandboxSucceeded || sb.Status.Phase == v1alpha1.SandboxFailed
}

// FinishedError says that a sandbox finished before it got where it was
// waited for.
type FinishedError struct {
	Sandbox *v1alpha1.Sandbox
}

func (e *FinishedError) Error() string {
	st := e.Sandbox.Status
	msg := fmt.Sprintf("sandbox %q finished: %s", e.Sandbox.Name, st.Phase)
	if st.Reason != "" {
		msg += " (" + st.Reason + ")"
	}
	if st.ExitCode != nil {
		msg += fmt.Sprintf(", exit code %d", *st.ExitCode)
	}
	if st.Message != "" {
		msg += ": " + st.Message
	}
	return msg
}

// Wait watches the Sandbox until cond is true of it and returns it as it
// was then. It fails when cond fails, when the Sandbox does not exist or is
// deleted (a NotFound *apierrors.StatusError), or when ctx ends (the error
// then says the phase it was last seen in and wraps ctx.Err()). Watches that
// break are resumed (it lists and watches again).
func (c *Client) Wait(ctx context.Context, namespace, name string, cond Condition) (*v1alpha1.Sandbox, error) {
	sandboxes := c.sandboxes.SandboxV1alpha1().Sandboxes(namespace)
	selector := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = selector
			return sandboxes.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = selector
			return sandboxes.Watch(ctx, opts)
		},
	}
	notFound := apierrors.NewNotFound(v1alpha1.Resource("sandboxes"), name)

	var last *v1alpha1.Sandbox
	precondition := func(store cache.Store) (bool, error) {
		_, exists, err := store.Get(&metav1.ObjectMeta{Namespace: namespace, Name: name})
		if err != nil {
			return true, err
		}
		if !exists {
			return true, notFound
		}
		return false, nil
	}
	// A clientset that cannot stream lists (a fake) says so; the reflector
	// then lists and watches.
	listWatcher := cache.ToListWatcherWithWatchListSemantics(lw, c.sandboxes)
	ev, err := watchtools.UntilWithSync(ctx, listWatcher, &v1alpha1.Sandbox{}, precondition, func(ev watch.Event) (bool, error) {
		sb, ok := ev.Object.(*v1alpha1.Sandbox)
		if !ok || sb.Name != name || sb.Namespace != namespace {
			// The field selector keeps others out; a fake or a
			// proxy may not honour it.
			return false, nil
		}
		if ev.Type == watch.Deleted {
			return false, notFound
		}
		last = sb
		return cond(sb)
	})
	if err != nil {
		if ctx.Err() != nil {
			phase := "not seen"
			if last != nil {
				phase = "last in phase " + string(last.Status.Phase)
				if last.Status.Phase == "" {
					phase = "last seen without a phase"
				}
				if st := last.Status; st.Reason != "" || st.Message != "" {
					phase += ": " + strings.TrimPrefix(st.Reason+" "+st.Message, " ")
				}
			}
			return last, fmt.Errorf("waiting for sandbox %s/%s (%s): %w", namespace, name, phase, ctx.Err())
		}
		return last, err
	}
	sb, ok := ev.Object.(*v1alpha1.Sandbox)
	if !ok {
		return nil, errors.New("waiting for a sandbox: the watch answered no Sandbox")
	}
	return sb, nil
}
