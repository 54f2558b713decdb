package poolcontroller

import (
	"cmp"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// This file holds the pure decisions of the controller: what it reads from
// the world goes in, what it should do comes out. Nothing here talks to the
// API server or reads a clock.

// Agent is what the sizing decisions know of one agent Pod that is neither
// finished nor being deleted.
type Agent struct {
	Name string
	// Ready is the Pod's Ready condition.
	Ready bool
	// Bound is the number of Sandboxes bound to the agent (status.agent is
	// the Pod and the phase is Scheduled or Running).
	Bound int32
	// IdleSince is when the agent became idle; it means nothing when Bound > 0.
	IdleSince time.Time
	// Draining says the Pod carries v1alpha1.AnnotationDraining, set at DrainingSince.
	Draining      bool
	DrainingSince time.Time
	// NodePressure says the agent's node reports MemoryPressure, DiskPressure
	// or PIDPressure.
	NodePressure bool
}

// PlanInput is the state of one pool as the controller sees it.
type PlanInput struct {
	MinAgents, MaxAgents int32
	SlotsPerAgent        int32
	BufferSlots          int32
	// Pending is the number of Sandboxes waiting for a slot.
	Pending int32
	// Agents are the pool's agent Pods that are neither finished nor being deleted.
	Agents []Agent
	// ScaleDownDelay is how long an agent must be idle before it may be removed.
	ScaleDownDelay time.Duration
	// DrainGrace is how long a draining mark stands before the agent is deleted.
	DrainGrace time.Duration
	Now        time.Time
}

// Plan is what the controller should do to one pool now.
type Plan struct {
	// Desired is the number of serving (not draining) agents the pool should have.
	Desired int32
	// Limited says the pool wants more agents than MaxAgents allows.
	Limited bool
	// Wanted is how many serving agents the pool would have without MaxAgents.
	Wanted int32
	// Create is the number of agent Pods to create.
	Create int32
	// Undrain are draining agents to put back into service: a Sandbox was
	// bound to them after all, or the pool needs them again.
	Undrain []string
	// Drain are idle agents to mark draining, the first step of removing them.
	Drain []string
	// Delete are draining agents whose mark has stood for DrainGrace with no
	// Sandbox bound: they can go.
	Delete []string
	// RequeueAfter, when positive, is when the plan may change by the passing
	// of time alone (an idle delay or a drain grace running out).
	RequeueAfter time.Duration
}

// MakePlan decides how a pool converges: grow for pending Sandboxes and the
// free-slot buffer (taking back draining agents before creating new ones),
// or shrink by idle agents, in two steps (drain, then delete).
func MakePlan(in PlanInput) Plan {
	slots := max(in.SlotsPerAgent, 1)
	var plan Plan
	var serving, idleDraining []Agent
	for _, a := range in.Agents {
		switch {
		case !a.Draining:
			serving = append(serving, a)
		case a.Bound > 0:
			// A bind raced with the draining mark: the agent stays.
			plan.Undrain = append(plan.Undrain, a.Name)
			a.Draining = false
			serving = append(serving, a)
		default:
			idleDraining = append(idleDraining, a)
		}
	}

	current := int32(len(serving))
	available := int32(0)
	for _, a := range serving {
		available += freeSlots(a, slots)
	}
	need := in.Pending + in.BufferSlots
	plan.Desired, plan.Wanted, plan.Limited = DesiredAgents(in.MinAgents, in.MaxAgents, slots, current, available, need)

	if grow := plan.Desired - current; grow > 0 {
		// Taking back an idle draining agent is cheaper than creating one;
		// the one marked last is the furthest from being deleted.
		slices.SortFunc(idleDraining, func(a, b Agent) int {
			return cmp.Or(b.DrainingSince.Compare(a.DrainingSince), cmp.Compare(a.Name, b.Name))
		})
		n := min(int(grow), len(idleDraining))
		for _, a := range idleDraining[:n] {
			plan.Undrain = append(plan.Undrain, a.Name)
		}
		idleDraining = idleDraining[n:]
		plan.Create = grow - int32(n)
	}

	for _, a := range idleDraining {
		if wait := a.DrainingSince.Add(in.DrainGrace).Sub(in.Now); wait > 0 {
			plan.RequeueAfter = earliest(plan.RequeueAfter, wait)
			continue
		}
		plan.Delete = append(plan.Delete, a.Name)
	}

	if plan.Desired <= current {
		victims, wait := ChooseVictims(serving, VictimInput{
			MinAgents: in.MinAgents, MaxAgents: in.MaxAgents, SlotsPerAgent: slots,
			Surplus: available - need, Delay: in.ScaleDownDelay, Now: in.Now,
		})
		plan.Drain = victims
		if len(victims) > 0 {
			wait = earliest(wait, in.DrainGrace)
		}
		plan.RequeueAfter = earliest(plan.RequeueAfter, wait)
	}
	return plan
}

// DesiredAgents is the number of serving agents a pool should have: enough
// that the free slots (those of agents not yet ready counted as coming) cover
// need, the pending Sandboxes plus the buffer, within [min, max]. wanted is
// the same number without max, limited says max cut it.
func DesiredAgents(minAgents, maxAgents, slotsPerAgent, current, available, need int32) (desired, wanted int32, limited bool) {
	slotsPerAgent = max(slotsPerAgent, 1)
	wanted = current
	if available < need {
		wanted += (need - available + slotsPerAgent - 1) / slotsPerAgent
	}
	wanted = max(wanted, minAgents)
	desired = min(wanted, maxAgents)
	limited = wanted > maxAgents && available < need
	return desired, wanted, limited
}

// VictimInput bounds the choice of agents to remove.
type VictimInput struct {
	MinAgents, MaxAgents, SlotsPerAgent int32
	// Surplus is the free slots (counting agents not yet ready) beyond the
	// pending Sandboxes and the buffer; removing an agent must not make it
	// negative, or the pool would grow right back.
	Surplus int32
	Delay   time.Duration
	Now     time.Time
}

// ChooseVictims picks the serving agents to drain: never one with a Sandbox
// bound, never below MinAgents, only after Delay of idleness and only while
// the remaining free slots cover the demand — except that a pool above
// MaxAgents loses idle agents right away. Agents on nodes under pressure go
// first, then the one idle the longest. wait, when positive, is when an agent
// that is idle but not yet long enough will be.
func ChooseVictims(agents []Agent, in VictimInput) (victims []string, wait time.Duration) {
	slots := max(in.SlotsPerAgent, 1)
	var idle []Agent
	for _, a := range agents {
		if a.Bound == 0 && !a.Draining {
			idle = append(idle, a)
		}
	}
	slices.SortFunc(idle, func(a, b Agent) int {
		return cmp.Or(-cmp.Compare(b2i(a.NodePressure), b2i(b.NodePressure)),
			a.IdleSince.Compare(b.IdleSince), cmp.Compare(a.Name, b.Name))
	})
	remaining := int32(len(agents))
	surplus := in.Surplus
	for _, a := range idle {
		if remaining <= in.MinAgents {
			break
		}
		if remaining <= in.MaxAgents {
			if surplus < freeSlots(a, slots) {
				continue
			}
			if left := a.IdleSince.Add(in.Delay).Sub(in.Now); left > 0 {
				wait = earliest(wait, left)
				continue
			}
		}
		victims = append(victims, a.Name)
		remaining--
		surplus -= freeSlots(a, slots)
	}
	return victims, wait
}

func freeSlots(a Agent, slots int32) int32 {
	if a.Draining {
		return 0
	}
	return max(slots-a.Bound, 0)
}

func earliest(a, b time.Duration) time.Duration {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	default:
		return min(a, b)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// SlotUse is how the pool's Sandboxes use its agents.
type SlotUse struct {
	// Bound counts, by agent Pod name, the Sandboxes bound to it and
	// Scheduled, Running or Paused (a paused sandbox keeps its slot).
	Bound map[string]int32
	// LastFinish is, by agent Pod name, when the last Sandbox that ran there finished.
	LastFinish map[string]time.Time
	// PendingImages holds the image of every Sandbox waiting for a slot:
	// no agent yet, phase "" or Pending (unschedulable ones included), not
	// being deleted.
	PendingImages []string
}

// CountSlotUse reads the Sandboxes of one pool. agentUIDs maps the pool's
// agent Pod names to their UIDs, so that a Sandbox of an earlier Pod that had
// the same name is not counted against the new one.
func CountSlotUse(sandboxes []*v1alpha1.Sandbox, agentUIDs map[string]string) SlotUse {
	use := SlotUse{Bound: map[string]int32{}, LastFinish: map[string]time.Time{}}
	for _, s := range sandboxes {
		st := &s.Status
		if st.Agent == "" {
			if s.DeletionTimestamp == nil && (st.Phase == "" || st.Phase == v1alpha1.SandboxPending) {
				use.PendingImages = append(use.PendingImages, s.Spec.Image)
			}
			continue
		}
		if uid, ok := agentUIDs[st.Agent]; !ok || (st.AgentUID != "" && st.AgentUID != uid) {
			continue
		}
		switch st.Phase {
		case v1alpha1.SandboxScheduled, v1alpha1.SandboxRunning, v1alpha1.SandboxPaused:
			use.Bound[st.Agent]++
		case v1alpha1.SandboxSucceeded, v1alpha1.SandboxFailed:
			if st.FinishTime != nil && st.FinishTime.After(use.LastFinish[st.Agent]) {
				use.LastFinish[st.Agent] = st.FinishTime.Time
			}
		}
	}
	return use
}

// podFinished says a Pod will not run again: Failed (evicted Pods included)
// or Succeeded. Such agents are deleted and replaced.
func podFinished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded
}

// podReady says the Pod's Ready condition is True.
func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// nodeUnderPressure says the node reports memory, disk or PID pressure.
func nodeUnderPressure(node *corev1.Node) bool {
	if node == nil {
		return false
	}
	for _, c := range node.Status.Conditions {
		switch c.Type {
		case corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure:
			if c.Status == corev1.ConditionTrue {
				return true
			}
		}
	}
	return false
}

// parseTime reads an annotation time; ok is false when absent, and a value
// that does not parse reads as the zero time (long ago).
func parseTime(annotations map[string]string, key string) (t time.Time, ok bool) {
	v, ok := annotations[key]
	if !ok {
		return time.Time{}, false
	}
	t, _ = time.Parse(time.RFC3339, v)
	return t, true
}

// AgentFromPod is the sizing view of an active agent Pod. now stands in for
// a missing idle-since annotation (the controller is about to write it).
func AgentFromPod(pod *corev1.Pod, use SlotUse, node *corev1.Node, now time.Time) Agent {
	a := Agent{
		Name:         pod.Name,
		Ready:        podReady(pod),
		Bound:        use.Bound[pod.Name],
		NodePressure: nodeUnderPressure(node),
	}
	a.DrainingSince, a.Draining = parseTime(pod.Annotations, v1alpha1.AnnotationDraining)
	if a.Bound == 0 {
		idle, ok := parseTime(pod.Annotations, AnnotationIdleSince)
		if !ok {
			idle = now
		}
		// A Sandbox may have come and gone between two looks: the agent is
		// idle only since its last Sandbox finished.
		if last := use.LastFinish[pod.Name]; last.After(idle) {
			idle = last
		}
		a.IdleSince = idle
	}
	return a
}
