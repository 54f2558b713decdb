package poolcontroller

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// Reasons of the pool's conditions.
const (
	ReasonMinAgentsReady   = "MinAgentsReady"
	ReasonWaitingForAgents = "WaitingForAgents"
	ReasonMaxAgentsReached = "MaxAgentsReached"
	ReasonWithinLimits     = "WithinLimits"
)

// computeStatus is the pool's status for the agents the controller sees
// (neither finished nor being deleted) and its plan. Draining agents count
// as agents but offer no free slot: the scheduler places nothing on them.
func computeStatus(pool *v1alpha1.SandboxPool, agents []Agent, plan Plan, now time.Time) v1alpha1.SandboxPoolStatus {
	st := pool.Status.DeepCopy()
	st.ObservedGeneration = pool.Generation
	st.Agents = int32(len(agents))
	st.ReadyAgents, st.FreeSlots, st.UsedSlots = 0, 0, 0
	slots := max(pool.Spec.SlotsPerAgent, 1)
	for _, a := range agents {
		st.UsedSlots += a.Bound
		if !a.Ready {
			continue
		}
		st.ReadyAgents++
		st.FreeSlots += freeSlots(a, slots)
	}

	ready := metav1.Condition{
		Type: v1alpha1.PoolConditionReady, Status: metav1.ConditionTrue, Reason: ReasonMinAgentsReady,
		Message: fmt.Sprintf("%d of at least %d agents ready", st.ReadyAgents, pool.Spec.MinAgents),
	}
	if st.ReadyAgents < pool.Spec.MinAgents {
		ready.Status, ready.Reason = metav1.ConditionFalse, ReasonWaitingForAgents
	}
	limited := metav1.Condition{
		Type: v1alpha1.PoolConditionScalingLimited, Status: metav1.ConditionFalse, Reason: ReasonWithinLimits,
		Message: fmt.Sprintf("the pool has the agents it wants within maxAgents %d", pool.Spec.MaxAgents),
	}
	if plan.Limited {
		limited.Status, limited.Reason = metav1.ConditionTrue, ReasonMaxAgentsReached
		limited.Message = fmt.Sprintf("the pool wants %d agents, maxAgents is %d", plan.Wanted, pool.Spec.MaxAgents)
	}
	for _, c := range []metav1.Condition{ready, limited} {
		c.ObservedGeneration = pool.Generation
		c.LastTransitionTime = metav1.NewTime(now)
		meta.SetStatusCondition(&st.Conditions, c)
	}
	return *st
}

// updateStatus writes the status when it changed.
func (c *Controller) updateStatus(ctx context.Context, pool *v1alpha1.SandboxPool, status v1alpha1.SandboxPoolStatus) error {
	if equality.Semantic.DeepEqual(pool.Status, status) {
		return nil
	}
	p := pool.DeepCopy()
	p.Status = status
	if _, err := c.sandboxClient.SandboxV1alpha1().SandboxPools().UpdateStatus(ctx, p, metav1.UpdateOptions{FieldManager: ControllerName}); err != nil {
		return fmt.Errorf("updating the status of SandboxPool %s: %w", p.Name, err)
	}
	return nil
}
