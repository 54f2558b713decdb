package containerd

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// Restart safety.
//
// An agent may die at any point of a create. The next agent decides what
// became of each sandbox container from durable facts only, never from
// what it remembers or from files that may or may not have been written:
//
//   - LabelStarted, written once the sandbox's command is known to run
//     (cold: after the task started and got its CPU limit; warm: after the
//     init confirmed the exec and the CPU limit was set);
//   - the container's task: none, Created, Running or Stopped with an exit
//     status;
//   - for a claimed warm container without LabelStarted whose task runs:
//     whether its init still waits for a command (it calls the agent's
//     socket again when its agent went away before sending one).
//
// What they mean:
//
//	LabelStarted  task                      decision
//	yes           Running/Paused            running (or paused): adopted
//	yes           Stopped (code)            exited: the true exit code
//	yes           none/unknown              ContainerLost (containerd or the node restarted)
//	yes           Created                   Failed (impossible: the label follows the start)
//	no            none/unknown              never ran: removed, the next create makes it once
//	no            Created                   never ran (died before Start): removed
//	no            Running, warm, init waits never ran (died before the command was sent): removed
//	no            Running, otherwise        started, died before the label: limits set, label written, adopted
//	no            Stopped (code)            started and exited before the label: label written, the true exit
//
// A container lacking the label with no task is ambiguous only if the agent
// died in the microseconds between the start and the label and containerd
// or the node restarted afterwards; it is taken as never ran.

// LabelStarted is the time (RFC 3339) the sandbox's command was known to run.
const LabelStarted = "fast-sandbox.io/started-at"

// failAt, when set (by tests only), is asked at each named step of a create;
// true makes the create return there without any cleanup, as if the agent
// died at that point.
var failAt func(step string) bool

// Steps of a create at which failAt is asked.
const (
	stepColdImage     = "cold: image found, before the container"
	stepColdContainer = "cold: container created"
	stepColdTask      = "cold: task created"
	stepColdStarted   = "cold: task started"
	stepColdLimited   = "cold: CPU limit set"
	stepColdLabelled  = "cold: started label written"
	stepWarmClaimed   = "warm: claim labels written"
	stepWarmSent      = "warm: command sent to the init"
	stepWarmConfirmed = "warm: exec confirmed"
	stepWarmLimited   = "warm: CPU limit set"
	stepWarmLabelled  = "warm: started label written"
)

// crashAt says whether a create should stop at step (fault injection).
func crashAt(step string) bool { return failAt != nil && failAt(step) }

// crashed is what a create returns when it was stopped at step.
func crashed(status api.SandboxStatus, step string) api.SandboxStatus {
	status.State, status.Reason, status.Message = api.StateFailed, api.ReasonCreateFailed, "fault injected at "+step
	return status
}

// verdict is what to do with a sandbox container found in containerd.
type verdict int

const (
	keep     verdict = iota // report its status
	neverRan                // its command never ran: remove it
	mark                    // it started but is not marked: set limits, mark, report
)

// inspect reads a sandbox container's labels and task and decides (see the
// table above). The task is nil when there is none.
func (r *Runtime) inspect(ctx context.Context, c client.Container) (api.SandboxStatus, verdict, client.Task, error) {
	info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil {
		return api.SandboxStatus{}, keep, nil, fmt.Errorf("reading container %s: %w", c.ID(), err)
	}
	l := info.Labels
	st := api.SandboxStatus{UID: l[LabelUID], Namespace: l[LabelNamespace], Name: l[LabelName], ContainerID: c.ID()}
	if st.UID == "" {
		return st, keep, nil, nil
	}
	warm := l[LabelWarm] == "true"
	st.Start = api.StartCold
	if warm {
		st.Start = api.StartWarm
	}
	if c.ID() != ContainerID(st.UID) {
		r.mu.Lock()
		r.ids[st.UID] = c.ID()
		r.mu.Unlock()
	}
	_, _ = fmt.Sscan(l[LabelCPU], &st.CPUMillis)
	_, _ = fmt.Sscan(l[LabelMemory], &st.MemoryBytes)
	if t, err := time.Parse(time.RFC3339Nano, l[LabelCreated]); err == nil {
		st.CreatedAt = &t
	}
	started := false
	if t, err := time.Parse(time.RFC3339Nano, l[LabelStarted]); err == nil {
		st.StartedAt, started = &t, true
	}
	r.mu.Lock()
	known, ok := r.known[st.UID]
	r.mu.Unlock()
	if ok && !alive(known.State) {
		return known, keep, nil, nil // final status already computed
	}
	if ok && known.StartedAt != nil {
		st.StartedAt = known.StartedAt
	}
	task, err := c.Task(ctx, nil)
	if err != nil && !errdefs.IsNotFound(err) {
		return api.SandboxStatus{}, keep, nil, fmt.Errorf("loading task of %s: %w", c.ID(), err)
	}
	var ts client.Status
	if err == nil {
		if ts, err = task.Status(ctx); err != nil {
			return api.SandboxStatus{}, keep, nil, fmt.Errorf("reading task status of %s: %w", c.ID(), err)
		}
	}
	if task == nil || ts.Status == client.Unknown {
		// No process, and none to come: the shim is gone with its task.
		if !started {
			return st, neverRan, task, nil
		}
		st.State, st.Reason = api.StateFailed, api.ReasonContainerLost
		st.Message = "the container has no task: containerd or the node restarted while it ran"
		return st, keep, task, nil
	}
	v := keep
	switch ts.Status {
	case client.Running, client.Paused, client.Pausing:
		st.State = api.StateRunning
		if ts.Status != client.Running {
			st.State = api.StatePaused // frozen, alive
		}
		if !started {
			if warm && r.initWaiting(c.ID()) {
				return st, neverRan, task, nil
			}
			v = mark
		}
	case client.Stopped:
		if !started {
			v = mark
		}
		st = r.finalStatus(ctx, c, st, ts.ExitStatus, ts.ExitTime)
	default: // Created: runc waits to start the command.
		if !started {
			return st, neverRan, task, nil
		}
		st.State, st.Reason = api.StateFailed, api.ReasonCreateFailed
		st.Message = fmt.Sprintf("the container's task is %s although it was marked started", ts.Status)
	}
	if v == mark && st.StartedAt == nil {
		// It started between its creation and now; its creation is the
		// closer bound, as agents die in the middle of a create.
		st.StartedAt = st.CreatedAt
		if st.StartedAt == nil {
			now := time.Now()
			st.StartedAt = &now
		}
	}
	return st, v, task, nil
}

// settle inspects a sandbox container and acts on the verdict: a container
// whose command never ran is removed (found is false: the next create makes
// the sandbox once); one that started but is not marked gets its limits and
// its label. It is for containers no create of this runtime is making.
func (r *Runtime) settle(ctx context.Context, c client.Container) (st api.SandboxStatus, found bool, err error) {
	st, v, task, err := r.inspect(ctx, c)
	if err != nil {
		return st, false, err
	}
	switch v {
	case neverRan:
		r.log.Info("removing the container of a sandbox whose command never ran (an agent stopped while creating it); the next create makes it again",
			"sandbox", st.Namespace+"/"+st.Name, "container", c.ID())
		if err := r.removeContainer(ctx, c); err != nil {
			return st, false, fmt.Errorf("removing the unstarted container of sandbox %s: %w", st.UID, err)
		}
		r.forgetID(st.UID)
		return st, false, nil
	case mark:
		if alive(st.State) {
			// The agent may have died before the CPU limit was set.
			var pids int64
			if labels, err := c.Labels(ctx); err == nil {
				_, _ = fmt.Sscan(labels[LabelPids], &pids)
			}
			if err := r.setLimits(ctx, c.ID(), task, limitsOf(st.CPUMillis, st.MemoryBytes, pids)); err != nil {
				return st, false, fmt.Errorf("setting the limits of adopted sandbox %s: %w", st.UID, err)
			}
		}
		if err := r.markStarted(ctx, c, *st.StartedAt); err != nil {
			return st, false, err
		}
	}
	return st, true, nil
}

// markStartedSoon writes LabelStarted off the start path: the write is a
// containerd metadata commit (about 2 ms, most of a warm start), and until
// it lands a restarted agent still tells a start from the task, which runs
// or has exited (see the table above); only a task lost in those
// milliseconds as well would be taken for one that never ran.
func (r *Runtime) markStartedSoon(c client.Container, at time.Time, spec api.SandboxSpec) {
	go func() {
		ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
		defer cancel()
		if err := r.markStarted(ctx, c, at); err != nil && !errdefs.IsNotFound(err) && r.ctx.Err() == nil {
			r.log.Error(err, "the sandbox runs but is not marked started", "sandbox", klogRef(spec), "container", c.ID())
		}
	}()
}

// markStarted records that a container's command runs (LabelStarted).
func (r *Runtime) markStarted(ctx context.Context, c client.Container, at time.Time) error {
	if _, err := c.SetLabels(ctx, map[string]string{LabelStarted: at.UTC().Format(time.RFC3339Nano)}); err != nil {
		return fmt.Errorf("labelling container %s started: %w", c.ID(), err)
	}
	return nil
}

// beginCreate makes the creates of one sandbox UID take turns, so that a
// create never mistakes another's unfinished container for a dead agent's.
// It returns the function that ends the turn.
func (r *Runtime) beginCreate(uid string) func() {
	for {
		r.mu.Lock()
		busy, ok := r.creating[uid]
		if !ok {
			done := make(chan struct{})
			r.creating[uid] = done
			r.mu.Unlock()
			return func() {
				r.mu.Lock()
				delete(r.creating, uid)
				r.mu.Unlock()
				close(done)
			}
		}
		r.mu.Unlock()
		<-busy
	}
}

func (r *Runtime) isCreating(uid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.creating[uid]
	return ok
}
