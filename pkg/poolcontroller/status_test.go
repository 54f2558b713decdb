package poolcontroller

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

func TestComputeStatus(t *testing.T) {
	pool := testPool()
	pool.Generation = 7
	pool.Spec.MinAgents = 2
	agents := []Agent{
		busy("a", 1),                             // 3 free
		{Name: "b", Bound: 0},                    // not ready: no free slots counted
		{Name: "c", Ready: true, Draining: true}, // draining: none offered
		busy("d", 4),
	}
	st := computeStatus(pool, agents, Plan{Limited: true, Wanted: 5}, t0)
	if st.Agents != 4 || st.ReadyAgents != 3 || st.FreeSlots != 3 || st.UsedSlots != 5 || st.ObservedGeneration != 7 {
		t.Errorf("status %+v", st)
	}
	ready := meta.FindStatusCondition(st.Conditions, v1alpha1.PoolConditionReady)
	if ready == nil || ready.Status != metav1.ConditionTrue || ready.Reason != ReasonMinAgentsReady || ready.ObservedGeneration != 7 {
		t.Errorf("Ready %+v", ready)
	}
	limited := meta.FindStatusCondition(st.Conditions, v1alpha1.PoolConditionScalingLimited)
	if limited == nil || limited.Status != metav1.ConditionTrue || limited.Reason != ReasonMaxAgentsReached {
		t.Errorf("ScalingLimited %+v", limited)
	}

	// The same world later changes nothing, so nothing is written.
	pool.Status = st
	again := computeStatus(pool, agents, Plan{Limited: true, Wanted: 5}, t0.Add(1e9))
	if !meta.IsStatusConditionTrue(again.Conditions, v1alpha1.PoolConditionReady) ||
		!again.Conditions[0].LastTransitionTime.Equal(&st.Conditions[0].LastTransitionTime) {
		t.Errorf("an unchanged condition moved: %+v", again.Conditions)
	}

	st = computeStatus(pool, agents[1:2], Plan{}, t0)
	ready = meta.FindStatusCondition(st.Conditions, v1alpha1.PoolConditionReady)
	if ready.Status != metav1.ConditionFalse || ready.Reason != ReasonWaitingForAgents {
		t.Errorf("Ready %+v, want False/WaitingForAgents", ready)
	}
	if meta.IsStatusConditionTrue(st.Conditions, v1alpha1.PoolConditionScalingLimited) {
		t.Error("ScalingLimited True without a limit")
	}
}
