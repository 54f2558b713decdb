package poolcontroller

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// ready agent with bound Sandboxes.
func busy(name string, bound int32) Agent { return Agent{Name: name, Ready: true, Bound: bound} }

// ready agent idle for d.
func idleFor(name string, d time.Duration) Agent {
	return Agent{Name: name, Ready: true, IdleSince: t0.Add(-d)}
}

func TestDesiredAgents(t *testing.T) {
	cases := []struct {
		name                                      string
		min, max, slots, current, available, need int32
		want, wanted                              int32
		limited                                   bool
	}{
		{"min honoured from nothing", 2, 5, 4, 0, 0, 0, 2, 2, false},
		{"enough free slots", 1, 5, 4, 2, 8, 3, 2, 2, false},
		{"exactly enough", 1, 5, 4, 2, 3, 3, 2, 2, false},
		{"one short needs one more", 1, 5, 4, 2, 3, 4, 3, 3, false},
		{"pending growth rounds up", 0, 10, 4, 1, 0, 9, 4, 4, false},
		{"buffer alone grows", 1, 5, 4, 1, 0, 2, 2, 2, false},
		{"max caps and limits", 1, 3, 4, 2, 0, 20, 3, 7, true},
		{"at max and short is limited", 1, 3, 4, 3, 0, 1, 3, 4, true},
		{"above max comes down, not limited", 1, 2, 4, 4, 16, 0, 2, 4, false},
		{"zero slots treated as one", 0, 10, 0, 0, 0, 3, 3, 3, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, wanted, limited := DesiredAgents(tc.min, tc.max, tc.slots, tc.current, tc.available, tc.need)
			if got != tc.want || wanted != tc.wanted || limited != tc.limited {
				t.Errorf("DesiredAgents = (%d, %d, %v), want (%d, %d, %v)", got, wanted, limited, tc.want, tc.wanted, tc.limited)
			}
		})
	}
}

func TestMakePlan(t *testing.T) {
	base := PlanInput{MinAgents: 1, MaxAgents: 4, SlotsPerAgent: 4, ScaleDownDelay: 10 * time.Second,
		DrainGrace: 2 * time.Second, Now: t0}
	with := func(f func(*PlanInput)) PlanInput {
		in := base
		f(&in)
		return in
	}
	cases := []struct {
		name    string
		in      PlanInput
		want    Plan
		requeue time.Duration
	}{
		{
			name: "empty pool gets min",
			in:   base,
			want: Plan{Desired: 1, Wanted: 1, Create: 1},
		},
		{
			name: "pending sandboxes grow the pool",
			in:   with(func(in *PlanInput) { in.Agents = []Agent{busy("a", 4)}; in.Pending = 5 }),
			want: Plan{Desired: 3, Wanted: 3, Create: 2},
		},
		{
			name: "agents not yet ready count as coming",
			in: with(func(in *PlanInput) {
				in.Agents = []Agent{busy("a", 4), {Name: "b", IdleSince: t0}}
				in.Pending = 3
			}),
			want: Plan{Desired: 2, Wanted: 2},
		},
		{
			name: "buffer keeps free slots",
			in:   with(func(in *PlanInput) { in.Agents = []Agent{busy("a", 2)}; in.BufferSlots = 4 }),
			want: Plan{Desired: 2, Wanted: 2, Create: 1},
		},
		{
			name: "limited by max",
			in:   with(func(in *PlanInput) { in.Agents = []Agent{busy("a", 4), busy("b", 4)}; in.Pending = 20 }),
			want: Plan{Desired: 4, Wanted: 7, Limited: true, Create: 2},
		},
		{
			name: "a failed agent is not an agent: it is replaced",
			// The controller leaves finished Pods out of Agents.
			in:   with(func(in *PlanInput) { in.MinAgents = 2; in.Agents = []Agent{busy("a", 1)} }),
			want: Plan{Desired: 2, Wanted: 2, Create: 1},
		},
		{
			name: "growth takes back draining agents first",
			in: with(func(in *PlanInput) {
				in.Agents = []Agent{busy("a", 4),
					{Name: "d1", Ready: true, Draining: true, DrainingSince: t0.Add(-time.Second)},
					{Name: "d2", Ready: true, Draining: true, DrainingSince: t0.Add(-3 * time.Second)}}
				in.Pending = 8
			}),
			want: Plan{Desired: 3, Wanted: 3, Undrain: []string{"d1", "d2"}},
		},
		{
			name: "a bind on a draining agent cancels the drain",
			in: with(func(in *PlanInput) {
				in.Agents = []Agent{busy("a", 1), {Name: "d", Ready: true, Bound: 1, Draining: true, DrainingSince: t0.Add(-time.Hour)}}
			}),
			want: Plan{Desired: 2, Wanted: 2, Undrain: []string{"d"}},
		},
		{
			name: "drained agent deleted after the grace",
			in: with(func(in *PlanInput) {
				in.Agents = []Agent{busy("a", 1), {Name: "d", Ready: true, Draining: true, DrainingSince: t0.Add(-2 * time.Second)}}
			}),
			want: Plan{Desired: 1, Wanted: 1, Delete: []string{"d"}},
		},
		{
			name: "draining agent waits for the grace",
			in: with(func(in *PlanInput) {
				in.Agents = []Agent{busy("a", 1), {Name: "d", Ready: true, Draining: true, DrainingSince: t0.Add(-500 * time.Millisecond)}}
			}),
			want:    Plan{Desired: 1, Wanted: 1},
			requeue: 1500 * time.Millisecond,
		},
		{
			name: "idle agent past the delay is drained",
			in:   with(func(in *PlanInput) { in.Agents = []Agent{busy("a", 1), idleFor("b", time.Minute)} }),
			want: Plan{Desired: 2, Wanted: 2, Drain: []string{"b"}}, requeue: 2 * time.Second,
		},
		{
			name:    "idle agent within the delay waits",
			in:      with(func(in *PlanInput) { in.Agents = []Agent{busy("a", 1), idleFor("b", 4*time.Second)} }),
			want:    Plan{Desired: 2, Wanted: 2},
			requeue: 6 * time.Second,
		},
		{
			name: "no scale-down while growing",
			in: with(func(in *PlanInput) {
				in.Agents = []Agent{busy("a", 4), idleFor("b", time.Hour)}
				in.Pending = 5
			}),
			want: Plan{Desired: 3, Wanted: 3, Create: 1},
		},
		{
			name: "over max loses idle agents at once",
			in: with(func(in *PlanInput) {
				in.MaxAgents = 1
				in.Agents = []Agent{busy("a", 1), idleFor("b", time.Second)}
			}),
			want: Plan{Desired: 1, Wanted: 2, Drain: []string{"b"}}, requeue: 2 * time.Second,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := MakePlan(tc.in)
			tc.want.RequeueAfter = tc.requeue
			if !planEqual(got, tc.want) {
				t.Errorf("MakePlan =\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
}

func planEqual(a, b Plan) bool {
	return a.Desired == b.Desired && a.Wanted == b.Wanted && a.Limited == b.Limited && a.Create == b.Create &&
		slices.Equal(a.Undrain, b.Undrain) && slices.Equal(a.Drain, b.Drain) && slices.Equal(a.Delete, b.Delete) &&
		a.RequeueAfter == b.RequeueAfter
}

func TestChooseVictims(t *testing.T) {
	base := VictimInput{MinAgents: 1, MaxAgents: 10, SlotsPerAgent: 4, Surplus: 100, Delay: 10 * time.Second, Now: t0}
	pressured := func(a Agent) Agent { a.NodePressure = true; return a }
	cases := []struct {
		name   string
		agents []Agent
		in     func(*VictimInput)
		want   []string
		wait   time.Duration
	}{
		{
			name:   "never one with a bound sandbox",
			agents: []Agent{busy("a", 1), busy("b", 2), busy("c", 1)},
			want:   nil,
		},
		{
			name:   "idle longest first",
			agents: []Agent{busy("a", 1), idleFor("b", time.Minute), idleFor("c", time.Hour)},
			in:     func(in *VictimInput) { in.Surplus = 4 },
			want:   []string{"c"},
		},
		{
			name:   "pressure preferred over idle longest",
			agents: []Agent{busy("a", 1), idleFor("b", time.Hour), pressured(idleFor("c", time.Minute))},
			in:     func(in *VictimInput) { in.Surplus = 4 },
			want:   []string{"c"},
		},
		{
			name:   "never below min",
			agents: []Agent{idleFor("a", time.Hour), idleFor("b", 2*time.Hour), idleFor("c", 3*time.Hour)},
			in:     func(in *VictimInput) { in.MinAgents = 2 },
			want:   []string{"c"},
		},
		{
			name:   "min zero empties the pool",
			agents: []Agent{idleFor("a", time.Hour), idleFor("b", 2*time.Hour)},
			in:     func(in *VictimInput) { in.MinAgents = 0 },
			want:   []string{"b", "a"},
		},
		{
			name:   "delay honoured",
			agents: []Agent{busy("a", 1), idleFor("b", 9*time.Second), idleFor("c", 3*time.Second)},
			want:   nil,
			wait:   time.Second,
		},
		{
			name:   "free slots still cover the demand",
			agents: []Agent{busy("a", 1), idleFor("b", time.Hour), idleFor("c", time.Hour)},
			in:     func(in *VictimInput) { in.Surplus = 5 },
			want:   []string{"b"},
		},
		{
			name:   "no surplus, no scale-down",
			agents: []Agent{busy("a", 1), idleFor("b", time.Hour)},
			in:     func(in *VictimInput) { in.Surplus = 3 },
			want:   nil,
		},
		{
			name:   "draining agents are not chosen again",
			agents: []Agent{busy("a", 1), {Name: "b", Draining: true, IdleSince: t0.Add(-time.Hour)}, idleFor("c", time.Hour)},
			want:   []string{"c"},
		},
		{
			name:   "above max ignores the delay but never takes busy ones",
			agents: []Agent{busy("a", 1), busy("b", 1), idleFor("c", time.Second), busy("d", 1)},
			in:     func(in *VictimInput) { in.MaxAgents = 2; in.Surplus = 0 },
			want:   []string{"c"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			if tc.in != nil {
				tc.in(&in)
			}
			got, wait := ChooseVictims(tc.agents, in)
			if !slices.Equal(got, tc.want) || wait != tc.wait {
				t.Errorf("ChooseVictims = %v, wait %v; want %v, wait %v", got, wait, tc.want, tc.wait)
			}
		})
	}
}

func sandbox(name, image, agent string, phase v1alpha1.SandboxPhase) *v1alpha1.Sandbox {
	return &v1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.SandboxSpec{PoolName: "py", Image: image},
		Status:     v1alpha1.SandboxStatus{Agent: agent, Phase: phase},
	}
}

func TestCountSlotUse(t *testing.T) {
	finished := sandbox("done", "x", "a", v1alpha1.SandboxSucceeded)
	finished.Status.FinishTime = &metav1.MicroTime{Time: t0}
	deleting := sandbox("del", "y", "", v1alpha1.SandboxPending)
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	staleUID := sandbox("old", "x", "b", v1alpha1.SandboxRunning)
	staleUID.Status.AgentUID = "old-uid"
	use := CountSlotUse([]*v1alpha1.Sandbox{
		sandbox("s1", "x", "a", v1alpha1.SandboxRunning),
		sandbox("s2", "x", "a", v1alpha1.SandboxScheduled),
		sandbox("s2p", "x", "a", v1alpha1.SandboxPaused), // paused: still holds its slot
		sandbox("s3", "x", "b", v1alpha1.SandboxFailed),
		sandbox("s4", "busybox", "", ""),
		sandbox("s5", "python:3.12", "", v1alpha1.SandboxPending),
		sandbox("s6", "x", "gone", v1alpha1.SandboxRunning),
		finished, deleting, staleUID,
	}, map[string]string{"a": "uid-a", "b": "uid-b"})
	if use.Bound["a"] != 3 || use.Bound["b"] != 0 || len(use.Bound) != 1 {
		t.Errorf("bound %v, want a=3", use.Bound)
	}
	if !slices.Equal(use.PendingImages, []string{"busybox", "python:3.12"}) {
		t.Errorf("pending %v", use.PendingImages)
	}
	if !use.LastFinish["a"].Equal(t0) {
		t.Errorf("last finish %v", use.LastFinish)
	}
}

func TestAgentFromPod(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Annotations: map[string]string{
			AnnotationIdleSince:         t0.Add(-time.Hour).Format(time.RFC3339),
			v1alpha1.AnnotationDraining: t0.Format(time.RFC3339Nano),
		}},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	node := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue}, {Type: corev1.NodeDiskPressure, Status: corev1.ConditionTrue},
	}}}
	a := AgentFromPod(pod, SlotUse{LastFinish: map[string]time.Time{"a": t0.Add(-time.Minute)}}, node, t0)
	want := Agent{Name: "a", Ready: true, IdleSince: t0.Add(-time.Minute), Draining: true, DrainingSince: t0, NodePressure: true}
	if a != want {
		t.Errorf("AgentFromPod = %+v, want %+v", a, want)
	}

	pod.Annotations = map[string]string{v1alpha1.AnnotationDraining: "true"}
	a = AgentFromPod(pod, SlotUse{Bound: map[string]int32{"a": 2}}, nil, t0)
	if !a.Draining || !a.DrainingSince.IsZero() || a.Bound != 2 || a.NodePressure || !a.IdleSince.IsZero() {
		t.Errorf("AgentFromPod = %+v", a)
	}
	pod.Annotations = nil
	if a = AgentFromPod(pod, SlotUse{}, nil, t0); !a.IdleSince.Equal(t0) {
		t.Errorf("no idle-since annotation: IdleSince %v, want now", a.IdleSince)
	}
}
