package agentfit

import (
	"context"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
)

func pod(name, cpu, mem string) *v1.Pod {
	req := v1.ResourceList{}
	if cpu != "" {
		req[v1.ResourceCPU] = resource.MustParse(cpu)
	}
	if mem != "" {
		req[v1.ResourceMemory] = resource.MustParse(mem)
	}
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(name)},
		Spec: v1.PodSpec{Containers: []v1.Container{{Resources: v1.ResourceRequirements{Requests: req}}}}}
}

func agent(ready, draining bool, slots int64, cpu, mem string, pods ...*v1.Pod) fwk.NodeInfo {
	status := v1.ConditionFalse
	if ready {
		status = v1.ConditionTrue
	}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Spec: v1.NodeSpec{Unschedulable: draining},
		Status: v1.NodeStatus{
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: status}},
			Allocatable: v1.ResourceList{v1.ResourcePods: *resource.NewQuantity(slots, resource.DecimalSI),
				v1.ResourceCPU: resource.MustParse(cpu), v1.ResourceMemory: resource.MustParse(mem)},
		}}
	ni := framework.NewNodeInfo(pods...)
	ni.SetNode(node)
	return ni
}

func TestFilter(t *testing.T) {
	cases := []struct {
		name   string
		pod    *v1.Pod
		agent  fwk.NodeInfo
		reason string // "" = fits
	}{
		{"fits", pod("s", "500m", "256Mi"), agent(true, false, 2, "2", "1Gi"), ""},
		{"not ready", pod("s", "", ""), agent(false, false, 2, "2", "1Gi"), ReasonNotReady},
		{"draining", pod("s", "", ""), agent(true, true, 2, "2", "1Gi"), ReasonDraining},
		{"no free slot", pod("s", "", ""), agent(true, false, 1, "2", "1Gi", pod("x", "", "")), ReasonNoFreeSlot},
		{"insufficient cpu", pod("s", "1500m", ""), agent(true, false, 4, "2", "1Gi", pod("x", "1", "")), ReasonInsufficientCPU},
		{"insufficient memory", pod("s", "", "800Mi"), agent(true, false, 4, "2", "1Gi", pod("x", "", "300Mi")), ReasonInsufficientMemory},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(context.Background(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			pl := p.(*AgentFit)
			state := framework.NewCycleState()
			pl.PreFilter(context.Background(), state, tc.pod, nil)
			st := pl.Filter(context.Background(), state, tc.pod, tc.agent)
			if tc.reason == "" {
				if !st.IsSuccess() {
					t.Errorf("want fit, got %v", st.Reasons())
				}
				return
			}
			if st.IsSuccess() || len(st.Reasons()) != 1 || st.Reasons()[0] != tc.reason {
				t.Errorf("reasons %v, want %q", st.Reasons(), tc.reason)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	cases := []struct {
		name, raw  string
		wantErr    string // "" = accepted
		wantIgnore bool
	}{
		{name: "no args take the defaults"},
		{name: "empty object takes the defaults", raw: `{}`},
		{name: "ignoreResources", raw: `{"ignoreResources":true}`, wantIgnore: true},
		{name: "kind and apiVersion may be given", raw: `{"apiVersion":"kubescheduler.config.k8s.io/v1","kind":"AgentFitArgs"}`},
		{name: "misspelt field", raw: `{"ignoreResource":true}`, wantErr: `unknown field "ignoreResource"`},
		{name: "another plugin's kind", raw: `{"kind":"ImageAffinityArgs"}`, wantErr: "args.kind: Invalid value"},
		{name: "wrong type", raw: `{"ignoreResources":"yes"}`, wantErr: "decoding args"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var obj runtime.Object
			if tc.raw != "" {
				obj = &runtime.Unknown{Raw: []byte(tc.raw), ContentType: runtime.ContentTypeJSON}
			}
			p, err := New(context.Background(), obj, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.(*AgentFit).args.IgnoreResources; got != tc.wantIgnore {
				t.Errorf("ignoreResources %v, want %v", got, tc.wantIgnore)
			}
		})
	}
}

type foreignState struct{}

func (foreignState) Clone() fwk.StateData { return foreignState{} }

// TestMissingPreFilterState: Filter reads the requests PreFilter summed
// through a checked getter; without them (or with another type under the
// key) it fails with an error instead of recomputing or panicking.
func TestMissingPreFilterState(t *testing.T) {
	cases := []struct {
		name  string
		state func() fwk.CycleState
		want  string
	}{
		{"no state", func() fwk.CycleState { return framework.NewCycleState() }, `reading "AgentFit" from cycle state`},
		{"foreign state", func() fwk.CycleState {
			cs := framework.NewCycleState()
			cs.Write(stateKey, foreignState{})
			return cs
		}, "cannot be converted to AgentFit.request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(context.Background(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			s := pod("s", "500m", "256Mi")
			st := p.(*AgentFit).Filter(context.Background(), tc.state(), s, agent(true, false, 2, "2", "1Gi"))
			if st.Code() != fwk.Error || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("status %v %q, want Error containing %q", st.Code(), st.Message(), tc.want)
			}
		})
	}
}
