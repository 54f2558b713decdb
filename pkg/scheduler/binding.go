package scheduler

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/scheme"
	"github.com/fast-sandbox/fast-sandbox/plugins/sandboxbinder"
)

var _ sandboxbinder.Binder = &Scheduler{}

func schemeWithSandboxes() *runtime.Scheme { return scheme.Scheme }

// fieldManager names the scheduler's writes; it is also the reporting
// controller of its events.
const fieldManager = "fast-sandbox-scheduler"

// inflightSandbox is a sandbox reserved on an agent whose Bind has not
// finished: bound is the Sandbox as written once the placement is durable,
// nil before. Only durable placements are sent to the agent.
type inflightSandbox struct {
	bound *v1alpha1.Sandbox
}

// Assume takes the slot in the pool's cache, so the next cycle sees it
// taken, and registers the sandbox as in flight on the agent. It refuses an
// agent that is gone, lost or draining.
func (s *Scheduler) Assume(ctx context.Context, pod *v1.Pod, agent string) error {
	assumed := pod.DeepCopy()
	assumed.Spec.NodeName = agent
	key := s.agentKey(agent)
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.agents[key]
	if a == nil || !a.takes() {
		return fmt.Errorf("agent %s no longer takes sandboxes", agent)
	}
	ps := s.ensurePoolLocked(ctx, pod.Labels[v1alpha1.LabelPoolName])
	if err := ps.cache.AssumePod(klog.FromContext(ctx), assumed); err != nil {
		return err
	}
	if s.inflight[key] == nil {
		s.inflight[key] = map[string]*inflightSandbox{}
	}
	s.inflight[key][string(pod.UID)] = &inflightSandbox{}
	return nil
}

// Forget gives the slot back.
func (s *Scheduler) Forget(ctx context.Context, pod *v1.Pod, agent string) {
	assumed := pod.DeepCopy()
	assumed.Spec.NodeName = agent
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.inflight[s.agentKey(agent)]; m != nil {
		delete(m, string(pod.UID))
	}
	ps := s.ensurePoolLocked(ctx, pod.Labels[v1alpha1.LabelPoolName])
	if err := ps.cache.ForgetPod(klog.FromContext(ctx), assumed); err != nil {
		klog.FromContext(ctx).V(4).Info("forgetting an assumed sandbox", "err", err)
	}
}

// Bind makes the placement durable on the Sandbox (finalizer, then status:
// agent, node, Scheduled), and only then tells the agent; it records what
// the agent answered (Running with the agent's start time, or Failed with
// its reason). A crash anywhere leaves either an unbound Sandbox (placed
// again) or a bound one that the next sync converges: never an orphan
// container, never a second one. Whether the agent still takes sandboxes is
// checked again right before the placement is written.
func (s *Scheduler) Bind(ctx context.Context, pod *v1.Pod, agentName string) error {
	logger := klog.FromContext(ctx)
	key := s.agentKey(agentName)
	s.mu.Lock()
	agent := s.agents[key]
	var nodeName string
	if agent != nil {
		nodeName = agent.nodeName
	}
	s.mu.Unlock()
	if agent == nil {
		return fmt.Errorf("agent %s is gone", agentName)
	}
	sbx, err := s.sandboxes.Sandboxes(pod.Namespace).Get(pod.Name)
	if err != nil {
		return err
	}
	if sbx.UID != pod.UID {
		return fmt.Errorf("sandbox %s/%s was replaced", pod.Namespace, pod.Name)
	}
	sbx = sbx.DeepCopy()
	for attempt := 0; !hasFinalizer(sbx); attempt++ {
		sbx.Finalizers = append(sbx.Finalizers, v1alpha1.FinalizerAgentCleanup)
		updated, err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).Update(ctx, sbx, metav1.UpdateOptions{FieldManager: fieldManager})
		if err == nil {
			sbx = updated
			break
		}
		if !apierrors.IsConflict(err) || attempt == 2 {
			return fmt.Errorf("adding the finalizer: %w", err)
		}
		// The lister lagged behind a status write: take the object as it is.
		if sbx, err = s.client.SandboxV1alpha1().Sandboxes(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
			return err
		}
		if sbx.UID != pod.UID || sbx.Status.Agent != "" || sbx.DeletionTimestamp != nil || finished(sbx) {
			return fmt.Errorf("sandbox %s/%s changed while being bound", pod.Namespace, pod.Name)
		}
	}
	now := metav1.NowMicro()
	sbx.Status.Phase = v1alpha1.SandboxScheduled
	sbx.Status.Agent, sbx.Status.AgentUID, sbx.Status.Node = agentName, string(agent.uid), nodeName
	sbx.Status.ScheduleTime = &now
	sbx.Status.ObservedGeneration = sbx.Generation
	sbx.Status.Reason, sbx.Status.Message = "", ""
	meta.SetStatusCondition(&sbx.Status.Conditions, metav1.Condition{
		Type: v1alpha1.SandboxConditionScheduled, Status: metav1.ConditionTrue, Reason: "Bound",
		Message: fmt.Sprintf("bound to agent %s on node %s", agentName, nodeName), ObservedGeneration: sbx.Generation,
	})
	uid := string(sbx.UID)
	s.mu.Lock()
	if s.agents[key] != agent || !agent.takes() {
		s.mu.Unlock()
		return fmt.Errorf("agent %s stopped taking sandboxes before the placement was recorded", agentName)
	}
	s.binding[uid] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.binding, uid)
		s.mu.Unlock()
	}()
	bound, err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).UpdateStatus(ctx, sbx, metav1.UpdateOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("recording the placement: %w", err)
	}
	s.mu.Lock()
	if b := s.inflight[key][uid]; b != nil {
		b.bound = bound
	}
	s.mu.Unlock()

	told := metav1.NowMicro()
	var res syncResult
	select {
	case res = <-agent.syncer.request(uid):
	case <-agent.stop:
		res.err = errAgentRemoved
	case <-ctx.Done():
		res.err = ctx.Err()
	}
	if res.err != nil {
		// The placement is durable: the syncer retries with backoff, the
		// status poll re-syncs on any difference, and status follows from
		// the agent's reports (or the lost-agent sweep).
		logger.Error(res.err, "telling the agent; the sync is retried", "sandbox", klog.KObj(sbx), "agent", agentName)
		return nil
	}
	s.recordOutcome(ctx, bound, res.status, &told)
	return nil
}

func hasFinalizer(s *v1alpha1.Sandbox) bool {
	for _, f := range s.Finalizers {
		if f == v1alpha1.FinalizerAgentCleanup {
			return true
		}
	}
	return false
}

// recordOutcome writes what an agent reported of a sandbox on the Sandbox,
// if it changes anything; it reports whether it wrote. told is when the
// agent was sent it, if known. A write that fails is not retried here: the
// status poll, the sweeps and the deadline loop compare again and write again.
func (s *Scheduler) recordOutcome(ctx context.Context, sbx *v1alpha1.Sandbox, st api.SandboxStatus, told *metav1.MicroTime) bool {
	updated, before := sbx.DeepCopy(), sbx.Status.Phase
	if told != nil && updated.Status.AgentToldTime == nil {
		updated.Status.AgentToldTime = told
	}
	if !applyAgentStatus(updated, st) && told == nil {
		return false
	}
	for attempt := 0; attempt < 3; attempt++ {
		_, err := s.client.SandboxV1alpha1().Sandboxes(updated.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager})
		if err == nil {
			if updated.Status.Phase != before {
				s.eventForPhase(updated, before)
			}
			return true
		}
		if !apierrors.IsConflict(err) {
			klog.FromContext(ctx).Error(err, "recording sandbox status; it is compared and written again later", "sandbox", klog.KObj(sbx))
			return false
		}
		fresh, gerr := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).Get(ctx, sbx.Name, metav1.GetOptions{})
		if gerr != nil || fresh.UID != sbx.UID || !sameBinding(fresh, sbx) {
			return false
		}
		updated, before = fresh.DeepCopy(), fresh.Status.Phase
		if told != nil && updated.Status.AgentToldTime == nil {
			updated.Status.AgentToldTime = told
		}
		if !applyAgentStatus(updated, st) && told == nil {
			return false
		}
	}
	return false
}

// sameBinding says whether two versions of a Sandbox are bound to the same
// agent Pod: an agent's report of one placement never lands on another.
func sameBinding(a, b *v1alpha1.Sandbox) bool {
	return a.Status.Agent == b.Status.Agent && a.Status.AgentUID == b.Status.AgentUID && a.Status.Restarts == b.Status.Restarts
}

// lastActivityResolution is how far an agent's lastActivity must move before
// status.lastActivityTime is written for it alone: activity (every exec,
// attach, files call) does not turn into a status write each time.
const lastActivityResolution = 5 * time.Second

// applyAgentStatus maps an agent's report onto a Sandbox status; it reports
// whether anything changed. Final phases never change again. A paused
// sandbox (StatePaused) is in phase Paused with condition Paused True
// (reason PausedBySpec or Idle); it stays Ready, as its container lives.
// Reported running again, it is Running with condition Paused False.
func applyAgentStatus(sbx *v1alpha1.Sandbox, st api.SandboxStatus) bool {
	if finished(sbx) {
		return false
	}
	before := sbx.Status.DeepCopy()
	if sbx.Status.ContainerID == "" && st.ContainerID != "" {
		sbx.Status.ContainerID = st.ContainerID
	}
	if st.StartedAt != nil && sbx.Status.StartTime == nil {
		t := metav1.NewMicroTime(*st.StartedAt)
		sbx.Status.StartTime = &t
	}
	switch st.State {
	case api.StateRunning:
		sbx.Status.Phase = v1alpha1.SandboxRunning
		msg := "the sandbox's command runs"
		switch st.Start {
		case api.StartWarm:
			msg += " in a warm container (created ahead of time)"
		case api.StartCold:
			msg += " in a container created for it"
		}
		setReady(sbx, metav1.ConditionTrue, "Started", msg)
		unpause(sbx, v1alpha1.ReasonResumed, "the sandbox's processes were thawed")
	case api.StatePaused:
		sbx.Status.Phase = v1alpha1.SandboxPaused
		reason, msg := v1alpha1.ReasonPausedBySpec, "spec.paused is true: the sandbox's processes are frozen"
		if st.PauseReason == api.PauseReasonIdle {
			reason, msg = v1alpha1.ReasonIdle, "the sandbox was idle (no exec, attach, log follow or files call for idleTimeoutSeconds): its processes are frozen until the next exec, attach or files call"
		}
		meta.SetStatusCondition(&sbx.Status.Conditions, metav1.Condition{
			Type: v1alpha1.SandboxConditionPaused, Status: metav1.ConditionTrue, Reason: reason, Message: msg,
			ObservedGeneration: sbx.Generation,
		})
		if c := meta.FindStatusCondition(sbx.Status.Conditions, v1alpha1.SandboxConditionReady); c == nil || c.Status != metav1.ConditionTrue {
			setReady(sbx, metav1.ConditionTrue, "Started", "the sandbox's container started (it is paused)")
		}
	case api.StateExited:
		sbx.Status.ExitCode = st.ExitCode
		sbx.Status.Phase = v1alpha1.SandboxFailed
		if st.ExitCode != nil && *st.ExitCode == 0 {
			sbx.Status.Phase = v1alpha1.SandboxSucceeded
		}
		sbx.Status.Reason, sbx.Status.Message = st.Reason, st.Message
		finishAt(sbx, st.FinishedAt)
		setReady(sbx, metav1.ConditionFalse, st.Reason, "the sandbox's command exited")
		unpause(sbx, st.Reason, "the sandbox finished")
	case api.StateCreating:
		// Still being created (e.g. its image is pulled): it stays Scheduled.
	case api.StateFailed:
		sbx.Status.Phase = v1alpha1.SandboxFailed
		sbx.Status.Reason, sbx.Status.Message = st.Reason, st.Message
		finishAt(sbx, st.FinishedAt)
		setReady(sbx, metav1.ConditionFalse, st.Reason, st.Message)
		unpause(sbx, st.Reason, "the sandbox finished")
	}
	changed := !equalStatus(before, &sbx.Status)
	if st.LastActivity != nil {
		// As stored: a MicroTime keeps microseconds.
		t := metav1.NewMicroTime(st.LastActivity.Truncate(time.Microsecond))
		cur := sbx.Status.LastActivityTime
		if cur == nil || (changed && !cur.Equal(&t)) || absDuration(t.Sub(cur.Time)) >= lastActivityResolution {
			sbx.Status.LastActivityTime = &t
			changed = changed || cur == nil || !cur.Equal(&t)
		}
	}
	return changed
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// unpause sets condition Paused False on a sandbox that has it True.
func unpause(sbx *v1alpha1.Sandbox, reason, message string) {
	if c := meta.FindStatusCondition(sbx.Status.Conditions, v1alpha1.SandboxConditionPaused); c == nil || c.Status != metav1.ConditionTrue {
		return
	}
	if reason == "" {
		reason = "Unknown"
	}
	meta.SetStatusCondition(&sbx.Status.Conditions, metav1.Condition{
		Type: v1alpha1.SandboxConditionPaused, Status: metav1.ConditionFalse, Reason: reason, Message: message,
		ObservedGeneration: sbx.Generation,
	})
}

func finishAt(sbx *v1alpha1.Sandbox, at *time.Time) {
	if sbx.Status.FinishTime != nil {
		return
	}
	t := metav1.NowMicro()
	if at != nil {
		t = metav1.NewMicroTime(*at)
	}
	sbx.Status.FinishTime = &t
}

func setReady(sbx *v1alpha1.Sandbox, status metav1.ConditionStatus, reason, message string) {
	if reason == "" {
		reason = "Unknown"
	}
	meta.SetStatusCondition(&sbx.Status.Conditions, metav1.Condition{
		Type: v1alpha1.SandboxConditionReady, Status: status, Reason: reason, Message: message,
		ObservedGeneration: sbx.Generation,
	})
}

func equalStatus(a, b *v1alpha1.SandboxStatus) bool {
	if a.Phase != b.Phase || a.Reason != b.Reason || a.Message != b.Message || a.ContainerID != b.ContainerID {
		return false
	}
	if (a.ExitCode == nil) != (b.ExitCode == nil) || (a.ExitCode != nil && *a.ExitCode != *b.ExitCode) {
		return false
	}
	if (a.StartTime == nil) != (b.StartTime == nil) || (a.FinishTime == nil) != (b.FinishTime == nil) {
		return false
	}
	if (a.LastActivityTime == nil) != (b.LastActivityTime == nil) || (a.LastActivityTime != nil && !a.LastActivityTime.Equal(b.LastActivityTime)) {
		return false
	}
	if len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for _, c := range a.Conditions {
		d := meta.FindStatusCondition(b.Conditions, c.Type)
		if d == nil || d.Status != c.Status || d.Reason != c.Reason || d.Message != c.Message {
			return false
		}
	}
	return true
}

// eventForPhase tells of a sandbox's move to its current phase from before.
func (s *Scheduler) eventForPhase(sbx *v1alpha1.Sandbox, before v1alpha1.SandboxPhase) {
	switch sbx.Status.Phase {
	case v1alpha1.SandboxRunning:
		if before == v1alpha1.SandboxPaused {
			s.recorder.Eventf(sbx, nil, v1.EventTypeNormal, "Resumed", "Resume", "the sandbox's processes were thawed")
			return
		}
		s.recorder.Eventf(sbx, nil, v1.EventTypeNormal, "Started", "Start", "container %s started on agent %s", sbx.Status.ContainerID, sbx.Status.Agent)
	case v1alpha1.SandboxPaused:
		reason, note := v1alpha1.ReasonPausedBySpec, "spec.paused is true: the sandbox's processes are frozen"
		if c := meta.FindStatusCondition(sbx.Status.Conditions, v1alpha1.SandboxConditionPaused); c != nil {
			reason, note = c.Reason, c.Message
		}
		s.recorder.Eventf(sbx, nil, v1.EventTypeNormal, "Paused", "Pause", "%s", truncateNote(fmt.Sprintf("%s (%s)", note, reason)))
	case v1alpha1.SandboxSucceeded:
		s.recorder.Eventf(sbx, nil, v1.EventTypeNormal, "Succeeded", "Finish", "the command exited with 0")
	case v1alpha1.SandboxFailed:
		s.recorder.Eventf(sbx, nil, v1.EventTypeWarning, sbx.Status.Reason, "Finish", "%s", truncateNote(sbx.Status.Message))
	}
}

// markUnschedulable records why a sandbox cannot be placed (once per
// distinct message), emits an event, and parks it until an agent gains room.
func (s *Scheduler) markUnschedulable(ctx context.Context, sbx *v1alpha1.Sandbox, reason, message string) {
	key := sbx.Namespace + "/" + sbx.Name
	s.mu.Lock()
	s.unschedulable[key] = true
	s.mu.Unlock()
	cond := meta.FindStatusCondition(sbx.Status.Conditions, v1alpha1.SandboxConditionScheduled)
	if cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == reason && cond.Message == message {
		return
	}
	updated := sbx.DeepCopy()
	updated.Status.Phase = v1alpha1.SandboxPending
	updated.Status.Reason, updated.Status.Message = reason, message
	updated.Status.ObservedGeneration = sbx.Generation
	meta.SetStatusCondition(&updated.Status.Conditions, metav1.Condition{
		Type: v1alpha1.SandboxConditionScheduled, Status: metav1.ConditionFalse, Reason: reason, Message: message,
		ObservedGeneration: sbx.Generation,
	})
	if _, err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		klog.FromContext(ctx).Error(err, "recording that a sandbox is unschedulable", "sandbox", klog.KObj(sbx))
	}
	s.recorder.Eventf(sbx, nil, v1.EventTypeWarning, "FailedScheduling", "Schedule", "%s", truncateNote(message))
}

// noteLimit is the most an events.k8s.io/v1 note may hold; the API server
// refuses a longer one.
const noteLimit = 1024

// truncateNote cuts an event's note to noteLimit bytes, on a character
// boundary; the full text is in the Sandbox's status.
func truncateNote(note string) string {
	if len(note) <= noteLimit {
		return note
	}
	const ellipsis = "..."
	cut := noteLimit - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(note[cut]) {
		cut--
	}
	return note[:cut] + ellipsis
}
