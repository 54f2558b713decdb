package agentfit

import (
	"context"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/defaultbinder"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/queuesort"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/metrics"
	st "k8s.io/kubernetes/pkg/scheduler/testing"
	tf "k8s.io/kubernetes/pkg/scheduler/testing/framework"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
)

const agentName = "agent"

// agent is a ready agent node with slots sandbox slots, cpu and mem
// allocatable (mem "" for an agent that reports no memory).
func agent(slots, cpu, mem string) *st.NodeWrapper {
	res := map[v1.ResourceName]string{v1.ResourcePods: slots, v1.ResourceCPU: cpu}
	if mem != "" {
		res[v1.ResourceMemory] = mem
	}
	return st.MakeNode().Name(agentName).Capacity(res).Condition(v1.NodeReady, v1.ConditionTrue, "", "")
}

// sandbox is a sandbox asking for cpu and mem ("" for none).
func sandbox(name, cpu, mem string) *st.PodWrapper {
	req := map[v1.ResourceName]string{}
	if cpu != "" {
		req[v1.ResourceCPU] = cpu
	}
	if mem != "" {
		req[v1.ResourceMemory] = mem
	}
	return st.MakePod().Name(name).UID(name).Req(req)
}

// running is a sandbox already placed on the agent.
func running(name, cpu, mem string) *v1.Pod {
	return sandbox(name, cpu, mem).Node(agentName).Obj()
}

// nodeInfo is the agent as the scheduler's snapshot sees it, with the
// sandboxes running there; a nil node gives a NodeInfo without a node.
func nodeInfo(t *testing.T, node *v1.Node, pods ...*v1.Pod) fwk.NodeInfo {
	t.Helper()
	if node == nil {
		return framework.NewNodeInfo(pods...)
	}
	ni, err := cache.NewSnapshot(pods, []*v1.Node{node}).NodeInfos().Get(node.Name)
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func newPlugin(t *testing.T, args *config.AgentFitArgs) *AgentFit {
	t.Helper()
	var obj runtime.Object
	if args != nil {
		obj = args
	}
	p, err := New(context.Background(), obj, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p.(*AgentFit)
}

func TestFilter(t *testing.T) {
	cases := []struct {
		name        string
		args        *config.AgentFitArgs // nil: the defaults
		pod         *v1.Pod
		node        *v1.Node
		running     []*v1.Pod
		wantCode    fwk.Code
		wantReasons []string
	}{
		{
			// Agent: 2 slots, 2 CPU, 1Gi, nothing running.
			// Sandbox: 500m + 256Mi → 1 of 2 slots, 500m of 2, 256Mi of 1Gi: fits.
			name: "fits",
			pod:  sandbox("s", "500m", "256Mi").Obj(),
			node: agent("2", "2", "1Gi").Obj(),
		},
		{
			// Agent: Ready=False → refused whatever it has free, for good.
			name:        "not ready",
			pod:         sandbox("s", "", "").Obj(),
			node:        agent("2", "2", "1Gi").Condition(v1.NodeReady, v1.ConditionFalse, "", "").Obj(),
			wantCode:    fwk.UnschedulableAndUnresolvable,
			wantReasons: []string{ReasonNotReady},
		},
		{
			// Agent: no Ready condition at all → not ready.
			name:        "no Ready condition",
			pod:         sandbox("s", "", "").Obj(),
			node:        st.MakeNode().Name(agentName).Capacity(map[v1.ResourceName]string{v1.ResourcePods: "2"}).Obj(),
			wantCode:    fwk.UnschedulableAndUnresolvable,
			wantReasons: []string{ReasonNotReady},
		},
		{
			// NodeInfo without its node (deleted under the cycle) → not ready.
			name:        "no node",
			pod:         sandbox("s", "", "").Obj(),
			wantCode:    fwk.UnschedulableAndUnresolvable,
			wantReasons: []string{ReasonNotReady},
		},
		{
			// Agent: ready but cordoned (spec.unschedulable) → draining.
			name:        "draining",
			pod:         sandbox("s", "", "").Obj(),
			node:        agent("2", "2", "1Gi").Unschedulable(true).Obj(),
			wantCode:    fwk.UnschedulableAndUnresolvable,
			wantReasons: []string{ReasonDraining},
		},
		{
			// Agent: not ready and draining → health is checked first.
			name:        "not ready beats draining",
			pod:         sandbox("s", "", "").Obj(),
			node:        agent("2", "2", "1Gi").Condition(v1.NodeReady, v1.ConditionFalse, "", "").Unschedulable(true).Obj(),
			wantCode:    fwk.UnschedulableAndUnresolvable,
			wantReasons: []string{ReasonNotReady},
		},
		{
			// Agent: 1 slot, 1 sandbox running → 1+1 > 1: no free slot.
			name:        "no free slot",
			pod:         sandbox("s", "", "").Obj(),
			node:        agent("1", "2", "1Gi").Obj(),
			running:     []*v1.Pod{running("x", "", "")},
			wantCode:    fwk.Unschedulable,
			wantReasons: []string{ReasonNoFreeSlot},
		},
		{
			// Agent: 4 slots, 2 CPU, 1 CPU used. Sandbox: 1500m → 1000m+1500m > 2000m.
			name:        "insufficient cpu",
			pod:         sandbox("s", "1500m", "").Obj(),
			node:        agent("4", "2", "1Gi").Obj(),
			running:     []*v1.Pod{running("x", "1", "")},
			wantCode:    fwk.Unschedulable,
			wantReasons: []string{ReasonInsufficientCPU},
		},
		{
			// Agent: 4 slots, 1Gi, 300Mi used. Sandbox: 800Mi → 300Mi+800Mi > 1024Mi.
			name:        "insufficient memory",
			pod:         sandbox("s", "", "800Mi").Obj(),
			node:        agent("4", "2", "1Gi").Obj(),
			running:     []*v1.Pod{running("x", "", "300Mi")},
			wantCode:    fwk.Unschedulable,
			wantReasons: []string{ReasonInsufficientMemory},
		},
		{
			// Agent: 2 CPU, 1Gi, 1 CPU + 300Mi used. Sandbox: 1500m + 800Mi → both short, both named.
			name:        "insufficient cpu and memory",
			pod:         sandbox("s", "1500m", "800Mi").Obj(),
			node:        agent("4", "2", "1Gi").Obj(),
			running:     []*v1.Pod{running("x", "1", "300Mi")},
			wantCode:    fwk.Unschedulable,
			wantReasons: []string{ReasonInsufficientCPU, ReasonInsufficientMemory},
		},
		{
			// Agent: 2 CPU, 1 CPU used. Sandbox: 1 CPU → 1000m+1000m = 2000m, not more: fits.
			name:    "exactly the rest fits",
			pod:     sandbox("s", "1", "724Mi").Obj(),
			node:    agent("2", "2", "1Gi").Obj(),
			running: []*v1.Pod{running("x", "1", "300Mi")},
		},
		{
			// Agent reports no memory (allocatable 0) → memory is not counted: 8Gi fits.
			name: "memory not reported is not limited",
			pod:  sandbox("s", "", "8Gi").Obj(),
			node: agent("2", "2", "").Obj(),
		},
		{
			// ignoreResources: CPU 1000m+1500m > 2000m would refuse; only the slot counts: fits.
			name:    "ignoreResources counts slots only",
			args:    &config.AgentFitArgs{IgnoreResources: true},
			pod:     sandbox("s", "1500m", "800Mi").Obj(),
			node:    agent("4", "2", "1Gi").Obj(),
			running: []*v1.Pod{running("x", "1", "300Mi")},
		},
		{
			// ignoreResources: 1 slot, 1 running → still no free slot.
			name:        "ignoreResources still needs a slot",
			args:        &config.AgentFitArgs{IgnoreResources: true},
			pod:         sandbox("s", "", "").Obj(),
			node:        agent("1", "2", "1Gi").Obj(),
			running:     []*v1.Pod{running("x", "", "")},
			wantCode:    fwk.Unschedulable,
			wantReasons: []string{ReasonNoFreeSlot},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pl := newPlugin(t, tc.args)
			state := framework.NewCycleState()
			if _, s := pl.PreFilter(context.Background(), state, tc.pod, nil); !s.IsSuccess() {
				t.Fatalf("PreFilter: %v", s)
			}
			s := pl.Filter(context.Background(), state, tc.pod, nodeInfo(t, tc.node, tc.running...))
			var reasons []string
			if s != nil { // a nil Status is Success, without reasons
				reasons = s.Reasons()
			}
			if s.Code() != tc.wantCode || !reflect.DeepEqual(reasons, tc.wantReasons) {
				t.Errorf("status %v %q, want %v %q", s.Code(), reasons, tc.wantCode, tc.wantReasons)
			}
		})
	}
}

// TestNew: the plugin takes the typed internal args a configuration
// decoded through pkg/apis/config/scheme carries, or nil for the defaults.
// Decoding itself (unknown fields such as ignoreResource, wrong types,
// another plugin's kind) is tested in pkg/apis/config/scheme.
func TestNew(t *testing.T) {
	cases := []struct {
		name    string
		obj     runtime.Object
		want    config.AgentFitArgs
		wantErr string // "" = accepted
	}{
		{name: "no args take the defaults", obj: nil, want: config.AgentFitArgs{IgnoreResources: false}},
		{name: "ignoreResources", obj: &config.AgentFitArgs{IgnoreResources: true}, want: config.AgentFitArgs{IgnoreResources: true}},
		{name: "explicit defaults", obj: &config.AgentFitArgs{}, want: config.AgentFitArgs{}},
		{name: "another plugin's args", obj: &config.ImageAffinityArgs{}, wantErr: "AgentFit: want args of type *config.AgentFitArgs, got *config.ImageAffinityArgs"},
		{name: "args not decoded by the scheme", obj: &runtime.Unknown{Raw: []byte(`{"ignoreResources":true}`)}, wantErr: "got *runtime.Unknown"},
		{name: "nil typed args", obj: (*config.AgentFitArgs)(nil), wantErr: "got *config.AgentFitArgs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(context.Background(), tc.obj, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.(*AgentFit).args; got != tc.want {
				t.Errorf("args %+v, want %+v", got, tc.want)
			}
		})
	}
}

// withArgs sets the args of the plugin's pluginConfig entry in a test
// framework's profile. tf's Register* helpers already add an entry with
// the args kube-scheduler's scheme decodes for the plugin's kind: ours
// too, typed and defaulted, since pkg/apis/config/scheme registered them.
func withArgs(args runtime.Object) tf.RegisterPluginFunc {
	return func(_ *frameworkruntime.Registry, profile *schedconfig.KubeSchedulerProfile) {
		for i := range profile.PluginConfig {
			if profile.PluginConfig[i].Name == Name {
				profile.PluginConfig[i].Args = args
				return
			}
		}
		profile.PluginConfig = append(profile.PluginConfig, schedconfig.PluginConfig{Name: Name, Args: args})
	}
}

// newFramework builds a framework running the plugin at PreFilter and
// Filter over snapshot, its args set by setArgs (if not nil).
func newFramework(ctx context.Context, snapshot *cache.Snapshot, setArgs tf.RegisterPluginFunc) (framework.Framework, error) {
	fns := []tf.RegisterPluginFunc{
		tf.RegisterQueueSortPlugin(queuesort.Name, queuesort.New),
		tf.RegisterBindPlugin(defaultbinder.Name, defaultbinder.New),
		tf.RegisterPluginAsExtensions(Name, New, "PreFilter", "Filter"),
	}
	if setArgs != nil {
		fns = append(fns, setArgs)
	}
	return tf.NewFramework(ctx, fns, "fast-sandbox", frameworkruntime.WithSnapshotSharedLister(snapshot))
}

// TestFramework builds the plugin through kube-scheduler's framework
// runtime from a profile carrying typed args, as the scheduler does, and
// runs its extension points there.
func TestFramework(t *testing.T) {
	metrics.Register() // the framework records plugin metrics
	// Agent: 2 CPU, 1 CPU used. Sandbox: 1500m → refused by the
	// resources, unless the args say ignoreResources.
	pod := sandbox("s", "1500m", "").Obj()
	snapshot := cache.NewSnapshot([]*v1.Pod{running("x", "1", "")}, []*v1.Node{agent("4", "2", "1Gi").Obj()})
	// schemeDefaults leaves the entry tf added, checking that it holds
	// the typed defaults.
	schemeDefaults := func(_ *frameworkruntime.Registry, profile *schedconfig.KubeSchedulerProfile) {
		for _, pc := range profile.PluginConfig {
			if pc.Name == Name && reflect.DeepEqual(pc.Args, &config.AgentFitArgs{}) {
				return
			}
		}
		t.Errorf("tf's profile lacks typed default args: %+v", profile.PluginConfig)
	}
	for _, tc := range []struct {
		name     string
		setArgs  tf.RegisterPluginFunc
		wantCode fwk.Code
	}{
		{"the scheme's defaults count resources", schemeDefaults, fwk.Unschedulable},
		{"nil args: the defaults", withArgs(nil), fwk.Unschedulable},
		{"ignoreResources", withArgs(&config.AgentFitArgs{IgnoreResources: true}), fwk.Success},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			fh, err := newFramework(ctx, snapshot, tc.setArgs)
			if err != nil {
				t.Fatalf("building the framework: %v", err)
			}
			state := framework.NewCycleState()
			if _, s, _ := fh.RunPreFilterPlugins(ctx, state, pod); !s.IsSuccess() {
				t.Fatalf("PreFilter: %v", s)
			}
			ni, err := snapshot.NodeInfos().Get(agentName)
			if err != nil {
				t.Fatal(err)
			}
			if s := fh.RunFilterPlugins(ctx, state, pod, ni); s.Code() != tc.wantCode {
				t.Errorf("Filter %v (%v), want %v", s.Code(), s.AsError(), tc.wantCode)
			}
		})
	}
	_, err := newFramework(context.Background(), snapshot, withArgs(&runtime.Unknown{Raw: []byte(`{}`)}))
	if err == nil || !strings.Contains(err.Error(), "want args of type *config.AgentFitArgs, got *runtime.Unknown") {
		t.Errorf("a framework given undecoded args: %v, want the plugin's type error", err)
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
			pl := newPlugin(t, nil)
			s := pl.Filter(context.Background(), tc.state(), sandbox("s", "500m", "256Mi").Obj(), nodeInfo(t, agent("2", "2", "1Gi").Obj()))
			if s.Code() != fwk.Error || !strings.Contains(s.Message(), tc.want) {
				t.Errorf("status %v %q, want Error containing %q", s.Code(), s.Message(), tc.want)
			}
		})
	}
}
