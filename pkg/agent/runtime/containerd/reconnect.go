package containerd

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// containerd restarts.
//
// The node's containerd may restart (an upgrade, a crash, the chaos test).
// The runc shims and the sandboxes' processes outlive it, and the runtime's
// client reconnects on its own, so a restart must change nothing a sandbox
// can see:
//
//   - A wait on a task (task.Wait) breaks when the connection drops: its
//     channel delivers a status with an error and exit code 255. That is not
//     an exit. The runtime loads the container's task again and waits again,
//     with backoff, until containerd answers or the runtime closes (waitExit).
//     A task that exited meanwhile answers its true status at once; one that
//     containerd lost is decided from durable facts, as after an agent
//     restart (adopt.go): the sandbox ran, so it is ContainerLost.
//   - A create that fails because containerd cannot be reached, before the
//     sandbox's command may have run, is not final (api.ReasonRuntimeUnavailable):
//     the agent does not record it, the control plane's next sync creates the
//     sandbox again, and whatever the first create left is settled by the
//     durable facts (no started label, no task or a created one: removed and
//     made again, once).

// Backoff of re-attaching to a task after a broken wait.
const (
	reattachMin = 100 * time.Millisecond
	reattachMax = 5 * time.Second
	// callTimeout bounds one containerd call made while re-attaching.
	callTimeout = 10 * time.Second
)

// unavailable says whether err means that containerd could not be reached
// (it restarts, or its socket is not there yet), rather than that it refused
// or failed what was asked. It is for the steps of a create before the
// sandbox's command may run: a caller must not take it to mean that nothing
// happened on containerd's side (a create may have been applied before the
// connection broke), only that the outcome is settled by the durable facts
// on the next create.
//
// A failure to connect, or a connection that broke under the call, is
// containerd's absence. An Unavailable or DeadlineExceeded that containerd
// itself answered (a shim that would not start, a call that ran out of
// time) is only if containerd does not answer now: otherwise the create
// would be retried on every sync, failing the same way.
func (r *Runtime) unavailable(err error) bool {
	if err == nil {
		return false
	}
	if notDialed(err) {
		return true
	}
	msg := err.Error()
	if errdefs.IsUnavailable(err) || strings.Contains(msg, "code = Unavailable") {
		for _, broken := range []string{"connection error", "error reading from server", "transport is closing",
			"connection reset by peer", "broken pipe"} {
			if strings.Contains(msg, broken) {
				return true
			}
		}
		return !r.serving()
	}
	if errdefs.IsDeadlineExceeded(err) || strings.Contains(msg, "code = DeadlineExceeded") {
		return !r.serving()
	}
	return false
}

// notDialed says whether err is a failure to connect to containerd's socket
// (refused, or no socket): the request never reached containerd. (A
// registry's refused connection is TCP, and is not this.)
func notDialed(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" && op.Net == "unix" && (errors.Is(op.Err, syscall.ECONNREFUSED) || errors.Is(op.Err, syscall.ENOENT)) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "code = Unavailable") &&
		(strings.Contains(msg, "connect: connection refused") || strings.Contains(msg, "connect: no such file or directory"))
}

// serving says whether containerd answers a health check within a second.
func (r *Runtime) serving() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ok, err := r.client.IsServing(ctx)
	return err == nil && ok
}

// createUnavailable is the status of a create that could not reach
// containerd before the sandbox's command could run: not final (see above).
func (r *Runtime) createUnavailable(spec api.SandboxSpec, id string, err error) api.SandboxStatus {
	st := r.failed(spec, id, api.ReasonRuntimeUnavailable, err)
	st.Message = "containerd is unavailable; the sandbox is created again on the next sync: " + err.Error()
	return st
}

// failedCreate is the status of a create that failed before the sandbox's
// command could run: not final when containerd could not be reached,
// otherwise reason.
func (r *Runtime) failedCreate(spec api.SandboxSpec, id, reason string, err error) api.SandboxStatus {
	if r.unavailable(err) {
		return r.createUnavailable(spec, id, err)
	}
	return r.failed(spec, id, reason, err)
}

// waitEnd is how a wait on a task ended.
type waitEnd int

const (
	waitExited      waitEnd = iota // the process exited: the status is its exit
	waitNoTask                     // the container has no task any more (containerd lost it)
	waitNoContainer                // the container was removed
	waitClosed                     // the runtime closed
)

// waitExit waits for the exit of a container's task through exitCh, or,
// when exitCh is nil, attaches to the task first. A status that carries an
// error is not an exit: the wait broke (containerd restarted, the
// connection dropped). Then it loads the container's task again and waits
// again, with backoff, until it gets an exit, finds the task or the
// container gone, or the runtime closes.
func (r *Runtime) waitExit(c client.Container, exitCh <-chan client.ExitStatus) (client.ExitStatus, waitEnd) {
	delay := reattachMin
	var attached time.Time
	for {
		if exitCh != nil {
			select {
			case <-r.ctx.Done():
				return client.ExitStatus{}, waitClosed
			case es, ok := <-exitCh:
				if ok && es.Error() == nil {
					return es, waitExited
				}
				if r.ctx.Err() != nil {
					return client.ExitStatus{}, waitClosed
				}
				r.log.Info("the wait on a sandbox's task broke (containerd restarted?); attaching to it again",
					"container", c.ID(), "err", es.Error())
				exitCh = nil
				if !attached.IsZero() && time.Since(attached) > time.Minute {
					delay = reattachMin
				}
			}
		}
		select {
		case <-r.ctx.Done():
			return client.ExitStatus{}, waitClosed
		case <-time.After(delay):
		}
		delay = min(2*delay, reattachMax)
		ch, end, err := r.attach(c)
		switch {
		case r.ctx.Err() != nil:
			return client.ExitStatus{}, waitClosed
		case err != nil:
			r.log.V(1).Info("attaching to a sandbox's task; retrying", "container", c.ID(), "err", err, "retryIn", delay)
		case ch == nil:
			return client.ExitStatus{}, end
		default:
			exitCh, attached = ch, time.Now()
		}
	}
}

// attach loads a container's task and waits on it. With no channel, end
// says why: the task or the container is gone.
func (r *Runtime) attach(c client.Container) (<-chan client.ExitStatus, waitEnd, error) {
	ctx, cancel := context.WithTimeout(r.ctx, callTimeout)
	defer cancel()
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		if _, err := c.Info(ctx, client.WithoutRefreshedMetadata); errdefs.IsNotFound(err) {
			return nil, waitNoContainer, nil
		} else if err != nil {
			return nil, 0, err
		}
		return nil, waitNoTask, nil
	}
	if err != nil {
		return nil, 0, err
	}
	s, err := task.Status(ctx)
	if errdefs.IsNotFound(err) {
		return nil, waitNoTask, nil
	}
	if err != nil {
		return nil, 0, err
	}
	if s.Status == client.Unknown {
		return nil, waitNoTask, nil // its shim is gone: no process, none to come
	}
	ch, err := task.Wait(r.ctx)
	if err != nil {
		return nil, 0, err
	}
	return ch, 0, nil
}

// endWait reports what a wait on a running sandbox's task came to. A
// sandbox that ended is detached from its network (its namespace died with
// its process; egress.go).
func (r *Runtime) endWait(c client.Container, st api.SandboxStatus, es client.ExitStatus, end waitEnd) {
	switch end {
	case waitExited:
		r.deliverExit(c, st, es)
		r.detachEgress(c.ID())
	case waitNoTask:
		r.report(r.lostStatus(c, st))
		r.detachEgress(c.ID())
	case waitNoContainer:
		r.mu.Lock()
		delete(r.waited, st.UID)
		r.mu.Unlock()
	}
}

// lostStatus is the status of a running sandbox whose task containerd no
// longer has, from the durable facts (adopt.go). This runtime saw it run,
// so it is ContainerLost even if it was not yet labelled started.
func (r *Runtime) lostStatus(c client.Container, st api.SandboxStatus) api.SandboxStatus {
	ctx, cancel := context.WithTimeout(r.ctx, callTimeout)
	defer cancel()
	if cur, v, _, err := r.inspect(ctx, c); err == nil && v != neverRan && cur.State != "" && !alive(cur.State) {
		return cur
	}
	now := time.Now()
	st.State, st.Reason, st.FinishedAt = api.StateFailed, api.ReasonContainerLost, &now
	st.Message = "the container has no task: containerd or the node restarted while it ran"
	return st
}
