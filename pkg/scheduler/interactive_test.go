package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// updateSpec changes a Sandbox's spec as a user does (retrying on conflict).
func (e *env) updateSpec(name string, f func(*v1alpha1.SandboxSpec)) {
	e.t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sbx, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		f(&sbx.Spec)
		_, err = e.client.SandboxV1alpha1().Sandboxes(testNS).Update(ctx, sbx, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// waitEvent waits for an event about the sandbox name with the given reason.
func (e *env) waitEvent(name, reason string) *eventsv1.Event {
	e.t.Helper()
	var event *eventsv1.Event
	waitUntil(e.t, "a "+reason+" event about "+name, 5*time.Second, func() bool {
		list, err := e.kube.EventsV1().Events(testNS).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for i, ev := range list.Items {
			if ev.Regarding.Name == name && ev.Reason == reason {
				event = &list.Items[i]
				return true
			}
		}
		return false
	})
	return event
}

func pausedCondition(s *v1alpha1.Sandbox) *metav1.Condition {
	return meta.FindStatusCondition(s.Status.Conditions, v1alpha1.SandboxConditionPaused)
}

func pausedWith(reason string) func(*v1alpha1.Sandbox) bool {
	return func(s *v1alpha1.Sandbox) bool {
		c := pausedCondition(s)
		return s.Status.Phase == v1alpha1.SandboxPaused && c != nil && c.Status == metav1.ConditionTrue && c.Reason == reason
	}
}

func resumed(s *v1alpha1.Sandbox) bool {
	c := pausedCondition(s)
	return s.Status.Phase == v1alpha1.SandboxRunning && c != nil && c.Status == metav1.ConditionFalse && c.Reason == v1alpha1.ReasonResumed
}

// spec.paused, idleTimeoutSeconds and idlePolicy reach the agent, and a
// change of spec.paused reaches it at once: the status poll here is far
// too slow to be what carries it. The agent's Paused is phase Paused with
// condition Paused (PausedBySpec); resumed, the sandbox is Running again
// with condition Paused False.
func TestPausedBySpec(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	opts := testOptions()
	opts.StatusPeriod = time.Minute
	e.start(opts)
	sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) {
		s.Spec.IdleTimeoutSeconds = ptr.To[int32](30)
		s.Spec.IdlePolicy = v1alpha1.IdlePolicyDelete
	})
	uid := string(sbx.UID)
	e.wait("s1", "Running", 5*time.Second, running)
	spec, ok := a.lastSpec(uid)
	if !ok || spec.Paused || spec.IdleTimeoutSeconds != 30 || spec.IdlePolicy != api.IdlePolicyDelete {
		t.Fatalf("agent spec %+v (sent: %v)", spec, ok)
	}
	if c := pausedCondition(e.get("s1")); c != nil {
		t.Errorf("a sandbox never paused has condition %+v", c)
	}

	e.updateSpec("s1", func(s *v1alpha1.SandboxSpec) {
		s.Paused = true
		s.IdlePolicy = v1alpha1.IdlePolicyPause
	})
	got := e.wait("s1", "Paused by spec", 3*time.Second, pausedWith(v1alpha1.ReasonPausedBySpec))
	spec, _ = a.lastSpec(uid)
	if !spec.Paused || spec.IdlePolicy != api.IdlePolicyPause {
		t.Errorf("agent spec after pausing %+v", spec)
	}
	if st, _ := a.state(uid); st.State != api.StatePaused || st.PauseReason != api.PauseReasonSpec {
		t.Errorf("agent state %+v", st)
	}
	if ready := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.SandboxConditionReady); ready == nil || ready.Status != metav1.ConditionTrue {
		t.Errorf("a paused sandbox's Ready condition %+v", ready)
	}
	if ev := e.waitEvent("s1", "Paused"); ev.Type != v1.EventTypeNormal || ev.ReportingController != fieldManager {
		t.Errorf("Paused event %+v", ev)
	}

	e.updateSpec("s1", func(s *v1alpha1.SandboxSpec) { s.Paused = false })
	e.wait("s1", "resumed", 3*time.Second, resumed)
	if st, _ := a.state(uid); st.State != api.StateRunning {
		t.Errorf("agent state after resuming %+v", st)
	}
	if ev := e.waitEvent("s1", "Resumed"); ev.Type != v1.EventTypeNormal {
		t.Errorf("Resumed event %+v", ev)
	}
	if n := a.createsOf(uid); n != 1 {
		t.Errorf("created %d times, want once", n)
	}
}

// A sandbox created paused is paused on its agent from the start.
func TestCreatedPaused(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) { s.Spec.Paused = true })
	e.wait("s1", "Paused by spec", 5*time.Second, pausedWith(v1alpha1.ReasonPausedBySpec))
	if st, _ := a.state(string(sbx.UID)); st.State != api.StatePaused {
		t.Errorf("agent state %+v", st)
	}
}

// A sandbox the agent paused as idle (idlePolicy Pause) is Paused with
// reason Idle, with its last activity; it is not deleted, even if the agent
// also calls it idle; resumed by activity, it is Running.
func TestIdlePause(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) {
		s.Spec.IdleTimeoutSeconds = ptr.To[int32](1)
		s.Spec.IdlePolicy = v1alpha1.IdlePolicyPause
	})
	uid := string(sbx.UID)
	e.wait("s1", "Running", 5*time.Second, running)
	if spec, _ := a.lastSpec(uid); spec.IdleTimeoutSeconds != 1 || spec.IdlePolicy != api.IdlePolicyPause {
		t.Errorf("agent spec %+v", spec)
	}
	activity := time.Now().Add(-2 * time.Second).Truncate(time.Microsecond)
	a.update(uid, func(st *api.SandboxStatus) {
		st.State, st.PauseReason, st.LastActivity, st.Idle = api.StatePaused, api.PauseReasonIdle, &activity, true
	})
	got := e.wait("s1", "Paused as idle", 5*time.Second, pausedWith(v1alpha1.ReasonIdle))
	if got.Status.LastActivityTime == nil || !got.Status.LastActivityTime.Time.Equal(activity) {
		t.Errorf("lastActivityTime %v, want %v", got.Status.LastActivityTime, activity)
	}
	// Several status polls later it is still there, and still paused: not
	// resumed by a sync (spec.paused is false, but it was paused as idle).
	time.Sleep(500 * time.Millisecond)
	got = e.get("s1")
	if got.DeletionTimestamp != nil || !pausedWith(v1alpha1.ReasonIdle)(got) {
		t.Errorf("an idle sandbox under idlePolicy Pause: %s, deleted at %v", describe(got), got.DeletionTimestamp)
	}

	later := time.Now().Truncate(time.Microsecond)
	a.update(uid, func(st *api.SandboxStatus) {
		st.State, st.PauseReason, st.LastActivity, st.Idle = api.StateRunning, "", &later, false
	})
	got = e.wait("s1", "resumed", 5*time.Second, resumed)
	if got.Status.LastActivityTime == nil || !got.Status.LastActivityTime.Time.Equal(later) {
		t.Errorf("lastActivityTime %v, want %v", got.Status.LastActivityTime, later)
	}
}

// An agent report of an idle sandbox under idlePolicy Delete deletes the
// Sandbox, with a Normal IdleTimeout event; its container is then removed
// as for any deleted sandbox (the finalizer's path).
func TestIdleDelete(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) {
		s.Spec.IdleTimeoutSeconds = ptr.To[int32](5)
		s.Spec.IdlePolicy = v1alpha1.IdlePolicyDelete
	})
	uid := string(sbx.UID)
	e.wait("s1", "Running", 5*time.Second, running)
	if !hasFinalizer(e.get("s1")) {
		t.Fatal("no finalizer on a bound sandbox")
	}
	a.update(uid, func(st *api.SandboxStatus) { st.Idle = true })
	waitUntil(t, "s1 deleted and gone", 5*time.Second, func() bool {
		_, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Get(context.Background(), "s1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if _, ok := a.state(uid); ok {
		t.Error("the agent still has the deleted sandbox")
	}
	ev := e.waitEvent("s1", "IdleTimeout")
	if ev.Type != v1.EventTypeNormal || ev.Action != "Delete" || ev.ReportingController != fieldManager || !strings.Contains(ev.Note, "5s") {
		t.Errorf("IdleTimeout event %+v", ev)
	}
	deletes := 0
	for _, act := range e.client.Actions() {
		if act.GetVerb() == "delete" && act.GetResource().Resource == "sandboxes" {
			deletes++
		}
	}
	if deletes != 1 {
		t.Errorf("%d deletes of the Sandbox, want 1", deletes)
	}
}

// A paused sandbox keeps its slot: with one slot, a second sandbox waits.
func TestPausedSandboxHoldsItsSlot(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	a.slots = 1
	e.start(testOptions())
	e.createSandbox("s1", func(s *v1alpha1.Sandbox) { s.Spec.Paused = true })
	e.wait("s1", "Paused", 5*time.Second, pausedWith(v1alpha1.ReasonPausedBySpec))
	e.createSandbox("s2")
	e.wait("s2", "Unschedulable", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
		return s.Status.Phase == v1alpha1.SandboxPending && s.Status.Reason == v1alpha1.ReasonUnschedulable
	})
	time.Sleep(300 * time.Millisecond)
	if got := e.get("s1"); !pausedWith(v1alpha1.ReasonPausedBySpec)(got) {
		t.Errorf("s1 is no longer paused: %s", describe(got))
	}
	if got := e.get("s2"); got.Status.Agent != "" {
		t.Errorf("s2 placed on %s beside a paused sandbox in the only slot", got.Status.Agent)
	}
}

// activeDeadlineSeconds counts paused time: a paused sandbox is failed
// with DeadlineExceeded and its agent stops it.
func TestDeadlineKillsPausedSandbox(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) {
		s.Spec.Paused = true
		s.Spec.ActiveDeadlineSeconds = ptr.To[int64](1)
	})
	e.wait("s1", "Paused", 5*time.Second, pausedWith(v1alpha1.ReasonPausedBySpec))
	got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonDeadlineExceeded {
		t.Errorf("status %s", describe(got))
	}
	if c := pausedCondition(got); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Paused condition of a finished sandbox %+v", c)
	}
	waitUntil(t, "the agent stopped the paused sandbox", 5*time.Second, func() bool {
		st, ok := a.state(string(sbx.UID))
		return ok && st.State == api.StateExited
	})
}
