package agent

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// Pause, resume and idleness.
//
// A sandbox is paused when its spec says so (PauseReasonSpec), or when its
// idle timeout passed without activity and its policy is Pause
// (PauseReasonIdle). The agent converges to that: a sync that sets Paused
// pauses it, one that clears it resumes a sandbox paused by spec; the idle
// check pauses an idle one, and the next exec, attach or files call resumes
// it first. An idle sandbox with policy Delete is only reported (Idle) for
// the control plane to delete.
//
// Activity is an exec, attach, log follow or files call: its start and its
// end, and it counts as activity while in progress. The idle timeout counts
// from the last activity, from when the agent learnt of the sandbox (its
// creation or adoption) or from its last resume by spec, whichever is last.
//
// Runtime calls of one sandbox's Pause and Resume are serialized by its
// control's op mutex, taken before Agent.mu and never under it; the state
// they leave is recorded in Agent.sandboxes under Agent.mu.

// pauseTimeout bounds one Pause or Resume in the runtime.
const pauseTimeout = 30 * time.Second

// DefaultIdleCheckPeriod is how often, by default, the agent looks for idle
// sandboxes.
const DefaultIdleCheckPeriod = time.Second

// Messages of the interactive routes' refusals (docs/interactive.md).
const (
	msgPausedBySpec = "sandbox is paused (spec.paused); resume it first"
	msgFinished     = "sandbox has finished"
)

// control is what the agent keeps of one sandbox for pause and idleness.
// Its fields, except op, are guarded by Agent.mu.
type control struct {
	op sync.Mutex // serializes the sandbox's Pause and Resume calls

	// From the last sync that listed the sandbox.
	synced      bool // a sync listed it since the agent started
	paused      bool
	idleTimeout time.Duration // 0: none
	deleteIdle  bool          // policy Delete

	active      int       // interactive calls in progress
	last        time.Time // see the idle timeout above
	hadActivity bool

	// queued is closed once the converge that is waiting for op has run;
	// nil when none waits.
	queued chan struct{}
}

// controlOf returns the control of uid, made now if missing. Called with mu held.
func (a *Agent) controlOf(uid string) *control {
	c := a.controls[uid]
	if c == nil {
		c = &control{last: a.clock.Now()}
		a.controls[uid] = c
	}
	return c
}

// setControl records the pause and idle fields of a desired spec. Called with mu held.
func (a *Agent) setControl(s api.SandboxSpec) *control {
	c := a.controlOf(s.UID)
	c.synced = true
	c.paused = s.Paused
	c.idleTimeout = 0
	if s.IdleTimeoutSeconds > 0 {
		c.idleTimeout = time.Duration(s.IdleTimeoutSeconds) * time.Second
	}
	c.deleteIdle = s.IdlePolicy == api.IdlePolicyDelete
	return c
}

// pausesWhenIdle says whether the idle check pauses the sandbox.
func (c *control) pausesWhenIdle() bool { return c.idleTimeout > 0 && !c.deleteIdle }

// idle says whether the sandbox has been idle for its timeout at now.
func (c *control) idle(now time.Time) bool {
	return c.idleTimeout > 0 && c.active == 0 && !now.Before(c.last.Add(c.idleTimeout))
}

// alive says whether a sandbox's processes exist (running or frozen).
func alive(st api.SandboxStatus) bool {
	return st.State == api.StateRunning || st.State == api.StatePaused
}

// wantsConverge says whether a sandbox's pause state differs from what its
// control asks, so that converge has something to do. Called with mu held.
func (a *Agent) wantsConverge(uid string) bool {
	st, ok := a.sandboxes[uid]
	c := a.controls[uid]
	if !ok || c == nil || !c.synced || a.deleting[uid] || a.stopping[uid] {
		return false
	}
	switch st.State {
	case api.StateRunning:
		return c.paused
	case api.StatePaused:
		switch st.PauseReason {
		case api.PauseReasonSpec:
			return !c.paused
		case api.PauseReasonIdle:
			return c.paused || !c.pausesWhenIdle()
		default: // adopted paused: the reason is not known yet
			return true
		}
	}
	return false
}

// startConverge makes the sandbox's pause state what its control asks, in
// the background, and returns a channel closed once done. At most one
// converge of a sandbox waits for its op mutex: it decides when it gets it,
// from the state then. Called with mu held.
func (a *Agent) startConverge(uid string) <-chan struct{} {
	c := a.controlOf(uid)
	if c.queued != nil {
		return c.queued
	}
	done := make(chan struct{})
	c.queued = done
	go func() {
		defer close(done)
		c.op.Lock()
		defer c.op.Unlock()
		a.mu.Lock()
		if c.queued == done {
			c.queued = nil
		}
		a.mu.Unlock()
		a.converge(uid, c)
	}()
	return done
}

// converge runs with c.op held.
func (a *Agent) converge(uid string, c *control) {
	a.mu.Lock()
	if !a.wantsConverge(uid) || a.controls[uid] != c {
		a.mu.Unlock()
		return
	}
	st := a.sandboxes[uid]
	var pause, resume bool
	reason := ""
	switch {
	case st.State == api.StateRunning: // and paused by spec
		pause, reason = true, api.PauseReasonSpec
	case c.paused: // paused for another reason, or for one not known yet
		st.PauseReason = api.PauseReasonSpec
		a.sandboxes[uid] = st
	case st.PauseReason == "" && c.pausesWhenIdle():
		// Adopted paused, with an idle policy that pauses: paused as idle
		// before the agent restarted (the next exec resumes it).
		st.PauseReason = api.PauseReasonIdle
		a.sandboxes[uid] = st
	default:
		resume = true
	}
	a.mu.Unlock()
	if pause {
		if err := a.pause(uid, reason); err != nil {
			a.log.Error(err, "pausing sandbox; the next sync retries", "uid", uid)
		}
	}
	if resume {
		if err := a.resume(uid); err != nil {
			a.log.Error(err, "resuming sandbox; the next sync retries", "uid", uid)
			return
		}
		// A resume by spec starts the idle timeout anew.
		a.mu.Lock()
		c.last = a.clock.Now()
		a.mu.Unlock()
	}
}

// pause freezes a running sandbox and records it paused for reason. Called
// with the sandbox's op held.
func (a *Agent) pause(uid, reason string) error {
	rt, ok := a.rt.(runtime.Interactive)
	if !ok {
		return errNotInteractive
	}
	ctx, cancel := context.WithTimeout(a.stopCtx(), pauseTimeout)
	defer cancel()
	if err := rt.Pause(ctx, uid); err != nil {
		if errors.Is(err, runtime.ErrFinished) {
			return nil // its exit comes as any other
		}
		return err
	}
	a.mu.Lock()
	if st, ok := a.sandboxes[uid]; ok && st.State == api.StateRunning {
		st.State, st.PauseReason = api.StatePaused, reason
		a.sandboxes[uid] = st
	}
	a.mu.Unlock()
	a.log.Info("sandbox paused", "uid", uid, "reason", reason)
	return nil
}

// resume thaws a paused sandbox and records it running. Called with the
// sandbox's op held.
func (a *Agent) resume(uid string) error {
	rt, ok := a.rt.(runtime.Interactive)
	if !ok {
		return errNotInteractive
	}
	ctx, cancel := context.WithTimeout(a.stopCtx(), pauseTimeout)
	defer cancel()
	if err := rt.Resume(ctx, uid); err != nil {
		return err
	}
	a.mu.Lock()
	var reason string
	if st, ok := a.sandboxes[uid]; ok && st.State == api.StatePaused {
		reason = st.PauseReason
		st.State, st.PauseReason = api.StateRunning, ""
		a.sandboxes[uid] = st
	}
	a.mu.Unlock()
	a.log.Info("sandbox resumed", "uid", uid, "pausedAs", reason)
	return nil
}

// stopCtx is the context that ends when the agent stops.
func (a *Agent) stopCtx() context.Context {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.baseCtx
}

var errNotInteractive = refuse(http.StatusNotImplemented, "the agent's runtime cannot pause, exec in or reach the files of sandboxes")

// followIdle checks for idle sandboxes every IdleCheckPeriod until ctx ends.
func (a *Agent) followIdle(ctx context.Context) {
	t := a.clock.NewTicker(a.cfg.IdleCheckPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			a.checkIdle()
		}
	}
}

// checkIdle pauses the running sandboxes that have been idle for their
// timeout and whose policy is Pause. (Those whose policy is Delete are
// reported Idle by decorate.)
func (a *Agent) checkIdle() {
	now := a.clock.Now()
	var idle []string
	a.mu.RLock()
	for uid, c := range a.controls {
		if st, ok := a.sandboxes[uid]; ok && st.State == api.StateRunning && c.synced && !c.paused &&
			c.pausesWhenIdle() && c.idle(now) && !a.deleting[uid] && !a.stopping[uid] {
			idle = append(idle, uid)
		}
	}
	a.mu.RUnlock()
	for _, uid := range idle {
		a.pauseIdle(uid)
	}
}

// pauseIdle pauses uid as idle if it still is once its op is held: an
// interactive call that began meanwhile keeps it running.
func (a *Agent) pauseIdle(uid string) {
	a.mu.RLock()
	c := a.controls[uid]
	a.mu.RUnlock()
	if c == nil {
		return
	}
	c.op.Lock()
	defer c.op.Unlock()
	a.mu.RLock()
	st, ok := a.sandboxes[uid]
	still := ok && a.controls[uid] == c && st.State == api.StateRunning && !c.paused && c.pausesWhenIdle() &&
		c.idle(a.clock.Now()) && !a.deleting[uid] && !a.stopping[uid]
	a.mu.RUnlock()
	if !still {
		return
	}
	if err := a.pause(uid, api.PauseReasonIdle); err != nil {
		a.log.Error(err, "pausing an idle sandbox; the next check retries", "uid", uid)
	}
}

// decorate adds to a sandbox's status what the agent knows of its activity.
// Called with mu held (read).
func (a *Agent) decorate(st api.SandboxStatus, now time.Time) api.SandboxStatus {
	c := a.controls[st.UID]
	if c == nil || !alive(st) {
		return st
	}
	if c.idleTimeout > 0 || c.hadActivity {
		last := c.last
		st.LastActivity = &last
	}
	if c.deleteIdle && c.idle(now) && (st.State == api.StateRunning || st.PauseReason == api.PauseReasonIdle) {
		st.Idle = true
	}
	return st
}

// session is one interactive call on a sandbox; end ends it.
type session struct {
	end func()
}

// Kinds of interactive call.
const (
	// sessionThaw: exec, attach, files. Refused on a finished sandbox and
	// one paused by spec; one paused as idle is resumed first.
	sessionThaw = iota
	// sessionFollow: a log follow. It reads the log, whatever the state.
	sessionFollow
)

// beginSession checks that uid can take an interactive call of kind and
// counts it as activity until the returned session ends.
func (a *Agent) beginSession(uid string, kind int) (*session, error) {
	a.mu.Lock()
	st, ok := a.sandboxes[uid]
	switch {
	case !ok && a.creating[uid] != nil:
		if kind == sessionThaw {
			a.mu.Unlock()
			return nil, refuse(http.StatusConflict, "sandbox %q is being created", short(uid))
		}
	case !ok:
		a.mu.Unlock()
		return nil, refuse(http.StatusNotFound, "no sandbox %q on this agent", short(uid))
	case kind == sessionThaw && a.deleting[uid]:
		a.mu.Unlock()
		return nil, refuse(http.StatusConflict, "sandbox %q is being removed", short(uid))
	case kind == sessionThaw && (!alive(st) || a.stopping[uid]):
		a.mu.Unlock()
		return nil, refuse(http.StatusConflict, msgFinished)
	}
	c := a.controlOf(uid)
	c.active++
	c.last, c.hadActivity = a.clock.Now(), true
	a.mu.Unlock()
	s := &session{end: sync.OnceFunc(func() {
		a.mu.Lock()
		c.active--
		c.last = a.clock.Now()
		a.mu.Unlock()
	})}
	if kind != sessionThaw {
		return s, nil
	}
	if err := a.thaw(uid, c); err != nil {
		s.end()
		return nil, err
	}
	return s, nil
}

// thaw refuses a sandbox paused (or to be paused) by spec and resumes one
// paused as idle.
func (a *Agent) thaw(uid string, c *control) error {
	c.op.Lock()
	defer c.op.Unlock()
	a.mu.RLock()
	st, ok := a.sandboxes[uid]
	paused, synced := c.paused, c.synced
	a.mu.RUnlock()
	switch {
	case !ok || !alive(st):
		return refuse(http.StatusConflict, msgFinished)
	case paused || st.PauseReason == api.PauseReasonSpec:
		return refuse(http.StatusConflict, msgPausedBySpec)
	case st.State != api.StatePaused:
		return nil
	case st.PauseReason == "" && !synced:
		// Adopted paused, and no sync has said why yet.
		return refuse(http.StatusServiceUnavailable, "sandbox is paused and the agent, just restarted, does not know why yet; retry shortly")
	}
	if err := a.resume(uid); err != nil {
		return runtimeError(err)
	}
	return nil
}

// runtimeError maps the interactive runtime's errors to answers.
func runtimeError(err error) error {
	var re *RequestError
	switch {
	case errors.As(err, &re):
		return err
	case errors.Is(err, runtime.ErrFinished):
		return refuse(http.StatusConflict, msgFinished)
	case errors.Is(err, runtime.ErrPaused):
		return refuse(http.StatusConflict, "sandbox is paused")
	case errors.Is(err, runtime.ErrNotFound):
		return refuse(http.StatusNotFound, "sandbox not found in the runtime")
	}
	return err
}
