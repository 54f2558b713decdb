package imageaffinity

import (
	"context"
	"fmt"
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
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// Images as agents report them (normalized references) and their sizes.
const (
	python  = "docker.io/library/python:3.9"
	busybox = "docker.io/library/busybox:latest"
)

// agent is an agent node with slots sandbox slots.
func agent(name, slots string) *st.NodeWrapper {
	return st.MakeNode().Name(name).Capacity(map[v1.ResourceName]string{v1.ResourcePods: slots})
}

// busy is n sandboxes running on the agent node.
func busy(node string, n int) []*v1.Pod {
	var pods []*v1.Pod
	for i := range n {
		name := fmt.Sprintf("%s-%d", node, i)
		pods = append(pods, st.MakePod().Name(name).UID(name).Node(node).Obj())
	}
	return pods
}

// sandbox is a sandbox of image (as the user wrote it).
func sandbox(image string) *v1.Pod {
	return st.MakePod().Name("s").UID("s").Container(image).Obj()
}

func newPlugin(t *testing.T, args *config.ImageAffinityArgs) *ImageAffinity {
	t.Helper()
	var obj runtime.Object
	if args != nil {
		obj = args
	}
	p, err := New(context.Background(), obj, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p.(*ImageAffinity)
}

// nodeInfos are the nodes as the scheduler's snapshot sees them, image
// states included, in the order given.
func nodeInfos(t *testing.T, snapshot *cache.Snapshot, nodes []*v1.Node) []fwk.NodeInfo {
	t.Helper()
	var out []fwk.NodeInfo
	for _, n := range nodes {
		ni, err := snapshot.NodeInfos().Get(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ni)
	}
	return out
}

// Scores, as Score computes them: an agent with the image gets
// 50 + 50 × (size − 23MB)/(1000MB − 23MB), the size clamped to
// [23MB, 1000MB] and a free warm container counting as 1000MB; that is
// then multiplied by 1 − spreadFactor × used/slots and truncated.
func TestScore(t *testing.T) {
	cases := []struct {
		name    string
		args    *config.ImageAffinityArgs // nil: the defaults (spreadFactor 0.5)
		image   string
		nodes   []*v1.Node
		running []*v1.Pod
		want    fwk.NodeScoreList
	}{
		{
			// Node a: python 500MB, 0/8 used → 50 + 50 × 477/977 = 74.4 → 74
			// Node b: no image → 0
			name:  "image present beats absent",
			image: "python:3.9",
			nodes: []*v1.Node{agent("a", "8").Images(map[string]int64{python: 500 * mb}).Obj(), agent("b", "8").Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 74}, {Name: "b", Score: 0}},
		},
		{
			// Node a: busybox 1MB, clamped to 23MB → 50 + 0 = 50
			name:  "small images still count as present",
			image: "busybox",
			nodes: []*v1.Node{agent("a", "8").Images(map[string]int64{busybox: 1 * mb}).Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 50}},
		},
		{
			// Node a: python 2000MB, clamped to 1000MB → 50 + 50 = 100
			name:  "big images are clamped",
			image: "python:3.9",
			nodes: []*v1.Node{agent("a", "8").Images(map[string]int64{python: 2000 * mb}).Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 100}},
		},
		{
			// Node a: python 500MB, 0/4 used → 74.4 × (1 − 0.5 × 0) = 74
			// Node b: python 500MB, 2/4 used → 74.4 × (1 − 0.5 × 2/4) = 55.8 → 55
			name:    "a busier agent scores lower",
			image:   "python:3.9",
			nodes:   []*v1.Node{agent("a", "4").Images(map[string]int64{python: 500 * mb}).Obj(), agent("b", "4").Images(map[string]int64{python: 500 * mb}).Obj()},
			running: busy("b", 2),
			want:    fwk.NodeScoreList{{Name: "a", Score: 74}, {Name: "b", Score: 55}},
		},
		{
			// spreadFactor 0: 74.4 × (1 − 0 × used/slots) = 74 on both.
			name:    "spreadFactor 0 packs",
			args:    &config.ImageAffinityArgs{SpreadFactor: 0},
			image:   "python:3.9",
			nodes:   []*v1.Node{agent("a", "4").Images(map[string]int64{python: 500 * mb}).Obj(), agent("b", "4").Images(map[string]int64{python: 500 * mb}).Obj()},
			running: busy("b", 2),
			want:    fwk.NodeScoreList{{Name: "a", Score: 74}, {Name: "b", Score: 74}},
		},
		{
			// spreadFactor 1: Node b 2/4 used → 74.4 × (1 − 1 × 2/4) = 37.2 → 37;
			// Node c 4/4 used → 74.4 × 0 = 0.
			name:    "spreadFactor 1 spreads as much as it can",
			args:    &config.ImageAffinityArgs{SpreadFactor: 1},
			image:   "python:3.9",
			nodes:   []*v1.Node{agent("a", "4").Images(map[string]int64{python: 500 * mb}).Obj(), agent("b", "4").Images(map[string]int64{python: 500 * mb}).Obj(), agent("c", "4").Images(map[string]int64{python: 500 * mb}).Obj()},
			running: append(busy("b", 2), busy("c", 4)...),
			want:    fwk.NodeScoreList{{Name: "a", Score: 74}, {Name: "b", Score: 37}, {Name: "c", Score: 0}},
		},
		{
			// Node a: busybox warm → counts as 1000MB → 100
			// Node b: busybox 1MB only → 50
			name:  "a free warm container beats the image alone",
			image: "busybox",
			nodes: []*v1.Node{
				agent("a", "8").Images(map[string]int64{busybox: 1 * mb}).Annotation(v1alpha1.AnnotationWarmImages, busybox).Obj(),
				agent("b", "8").Images(map[string]int64{busybox: 1 * mb}).Obj(),
			},
			want: fwk.NodeScoreList{{Name: "a", Score: 100}, {Name: "b", Score: 50}},
		},
		{
			// Node a: busybox 1MB, the warm container is python's → 50
			name:  "a warm container of another image does not count",
			image: "busybox",
			nodes: []*v1.Node{agent("a", "8").Images(map[string]int64{busybox: 1 * mb}).Annotation(v1alpha1.AnnotationWarmImages, python).Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 50}},
		},
		{
			// Node a: busybox warm (100), 2/4 used → 100 × (1 − 0.5 × 2/4) = 75
			name:    "warm agents still spread",
			image:   "busybox",
			nodes:   []*v1.Node{agent("a", "4").Images(map[string]int64{busybox: 1 * mb}).Annotation(v1alpha1.AnnotationWarmImages, busybox).Obj()},
			running: busy("a", 2),
			want:    fwk.NodeScoreList{{Name: "a", Score: 75}},
		},
		{
			// Node a: warm python among others in the list, no image status → 100
			name:  "a warm container counts without the image in the node status",
			image: "python:3.9",
			nodes: []*v1.Node{agent("a", "8").Annotation(v1alpha1.AnnotationWarmImages, busybox+","+python).Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 100}},
		},
		{
			// Sandbox: python (docker.io/library/python:latest); Node a holds only :3.9 → 0
			name:  "another tag of the image does not count",
			image: "python",
			nodes: []*v1.Node{agent("a", "8").Images(map[string]int64{python: 500 * mb}).Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 0}},
		},
		{
			// Node a: python 500MB, reports 0 slots → no spreading term → 74
			name:  "an agent reporting no slots is not spread",
			image: "python:3.9",
			nodes: []*v1.Node{agent("a", "0").Images(map[string]int64{python: 500 * mb}).Obj()},
			want:  fwk.NodeScoreList{{Name: "a", Score: 74}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			p := newPlugin(t, tc.args)
			snapshot := cache.NewSnapshot(tc.running, tc.nodes)
			infos := nodeInfos(t, snapshot, tc.nodes)
			state := framework.NewCycleState()
			pod := sandbox(tc.image)
			if _, s := p.PreFilter(ctx, state, pod, infos); !s.IsSuccess() {
				t.Fatal(s.AsError())
			}
			if s := p.PreScore(ctx, state, pod, infos); !s.IsSuccess() {
				t.Fatal(s.AsError())
			}
			var got fwk.NodeScoreList
			for _, ni := range infos {
				score, s := p.Score(ctx, state, pod, ni)
				if !s.IsSuccess() {
					t.Errorf("agent %s: %v", ni.Node().Name, s.AsError())
				}
				got = append(got, fwk.NodeScore{Name: ni.Node().Name, Score: score})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("scores %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFilter(t *testing.T) {
	cases := []struct {
		name       string
		args       *config.ImageAffinityArgs // nil: the defaults (requireImage false)
		node       *v1.Node
		wantCode   fwk.Code
		wantReason string
	}{
		// Sandbox: python:3.9 throughout.
		{name: "off by default", node: agent("a", "8").Obj(), wantCode: fwk.Success},
		{name: "required and present", args: &config.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0.5},
			node: agent("a", "8").Images(map[string]int64{python: 100 * mb}).Obj(), wantCode: fwk.Success},
		{name: "required and absent", args: &config.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0.5},
			node: agent("a", "8").Obj(), wantCode: fwk.UnschedulableAndUnresolvable, wantReason: ErrReasonImageNotPresent},
		{name: "required, another tag present", args: &config.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0.5},
			node: agent("a", "8").Images(map[string]int64{"docker.io/library/python:3.12": 100 * mb}).Obj(), wantCode: fwk.UnschedulableAndUnresolvable, wantReason: ErrReasonImageNotPresent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlugin(t, tc.args)
			state := framework.NewCycleState()
			pod := sandbox("python:3.9")
			snapshot := cache.NewSnapshot(nil, []*v1.Node{tc.node})
			if _, s := p.PreFilter(context.Background(), state, pod, nil); !s.IsSuccess() {
				t.Fatal(s.AsError())
			}
			s := p.Filter(context.Background(), state, pod, nodeInfos(t, snapshot, []*v1.Node{tc.node})[0])
			if s.Code() != tc.wantCode {
				t.Errorf("code %v (%v), want %v", s.Code(), s.AsError(), tc.wantCode)
			}
			if tc.wantReason != "" && (len(s.Reasons()) != 1 || s.Reasons()[0] != tc.wantReason) {
				t.Errorf("reasons %q, want %q", s.Reasons(), tc.wantReason)
			}
		})
	}
}

// TestPreFilter: a sandbox without a container or with an image reference
// that does not parse can never be placed.
func TestPreFilter(t *testing.T) {
	cases := []struct {
		name string
		pod  *v1.Pod
		want string // "" = success
	}{
		{"short name", sandbox("python:3.9"), ""},
		{"full reference", sandbox(python), ""},
		{"no container", st.MakePod().Name("s").Obj(), "sandbox has no container"},
		{"invalid reference", sandbox("Python:3.9"), `invalid image "Python:3.9"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, s := newPlugin(t, nil).PreFilter(context.Background(), framework.NewCycleState(), tc.pod, nil)
			if tc.want == "" {
				if !s.IsSuccess() {
					t.Errorf("PreFilter: %v", s.AsError())
				}
				return
			}
			if s.Code() != fwk.UnschedulableAndUnresolvable || !strings.Contains(s.Message(), tc.want) {
				t.Errorf("status %v %q, want UnschedulableAndUnresolvable containing %q", s.Code(), s.Message(), tc.want)
			}
		})
	}
}

// TestNew: the plugin takes the typed internal args a configuration
// decoded through pkg/apis/config/scheme carries, or nil for the defaults,
// and validates them. Decoding itself (the misspelt spredFactor, wrong
// types, another plugin's kind, apiVersion and kind given, YAML) is tested
// in pkg/apis/config/scheme.
func TestNew(t *testing.T) {
	cases := []struct {
		name    string
		obj     runtime.Object
		want    config.ImageAffinityArgs
		wantErr string // "" = accepted
	}{
		{name: "no args take the defaults", obj: nil, want: config.ImageAffinityArgs{SpreadFactor: 0.5}},
		{name: "spreadFactor 0 is kept, not defaulted", obj: &config.ImageAffinityArgs{SpreadFactor: 0}, want: config.ImageAffinityArgs{SpreadFactor: 0}},
		{name: "spreadFactor 1", obj: &config.ImageAffinityArgs{SpreadFactor: 1, RequireImage: true}, want: config.ImageAffinityArgs{SpreadFactor: 1, RequireImage: true}},
		{name: "spreadFactor 0.25", obj: &config.ImageAffinityArgs{SpreadFactor: 0.25}, want: config.ImageAffinityArgs{SpreadFactor: 0.25}},
		{name: "spreadFactor above 1", obj: &config.ImageAffinityArgs{SpreadFactor: 1.5}, wantErr: "args.spreadFactor: Invalid value: 1.5: must be between 0 and 1"},
		{name: "negative spreadFactor", obj: &config.ImageAffinityArgs{SpreadFactor: -1}, wantErr: "args.spreadFactor: Invalid value: -1"},
		{name: "another plugin's args", obj: &config.AgentFitArgs{}, wantErr: "ImageAffinity: want args of type *config.ImageAffinityArgs, got *config.AgentFitArgs"},
		{name: "args not decoded by the scheme", obj: &runtime.Unknown{Raw: []byte(`{"spreadFactor":0.2}`), ContentType: runtime.ContentTypeJSON}, wantErr: "got *runtime.Unknown"},
		{name: "nil typed args", obj: (*config.ImageAffinityArgs)(nil), wantErr: "got *config.ImageAffinityArgs"},
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
			if got := p.(*ImageAffinity).args; got != tc.want {
				t.Errorf("args %+v, want %+v", got, tc.want)
			}
		})
	}
}

// withArgs sets the args of the plugin's pluginConfig entry in a test
// framework's profile (tf's Register* helpers add one with the scheme's
// typed defaults).
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

// TestFramework builds the plugin through kube-scheduler's framework
// runtime from a profile carrying typed args, as the scheduler does, and
// scores there.
func TestFramework(t *testing.T) {
	metrics.Register() // the framework records plugin metrics
	nodes := []*v1.Node{
		agent("a", "4").Images(map[string]int64{python: 500 * mb}).Obj(),
		agent("b", "4").Images(map[string]int64{python: 500 * mb}).Obj(),
	}
	snapshot := cache.NewSnapshot(busy("b", 2), nodes)
	pod := sandbox("python:3.9")
	for _, tc := range []struct {
		name    string
		setArgs tf.RegisterPluginFunc
		want    map[string]int64
	}{
		// Node a: 0/4 used → 74; Node b: 2/4 used → 74.4 × (1 − 0.5 × 2/4) = 55
		{"the scheme's defaults", func(*frameworkruntime.Registry, *schedconfig.KubeSchedulerProfile) {}, map[string]int64{"a": 74, "b": 55}},
		{"nil args: the defaults", withArgs(nil), map[string]int64{"a": 74, "b": 55}},
		// spreadFactor 0 → 74 on both
		{"spreadFactor 0", withArgs(&config.ImageAffinityArgs{SpreadFactor: 0}), map[string]int64{"a": 74, "b": 74}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			fh, err := tf.NewFramework(ctx, []tf.RegisterPluginFunc{
				tf.RegisterQueueSortPlugin(queuesort.Name, queuesort.New),
				tf.RegisterBindPlugin(defaultbinder.Name, defaultbinder.New),
				tf.RegisterPluginAsExtensions(Name, New, "PreFilter", "Filter", "PreScore", "Score"),
				tc.setArgs,
			}, "fast-sandbox", frameworkruntime.WithSnapshotSharedLister(snapshot))
			if err != nil {
				t.Fatalf("building the framework: %v", err)
			}
			infos := nodeInfos(t, snapshot, nodes)
			state := framework.NewCycleState()
			if _, s, _ := fh.RunPreFilterPlugins(ctx, state, pod); !s.IsSuccess() {
				t.Fatalf("PreFilter: %v", s.AsError())
			}
			if s := fh.RunPreScorePlugins(ctx, state, pod, infos); !s.IsSuccess() {
				t.Fatalf("PreScore: %v", s.AsError())
			}
			scores, s := fh.RunScorePlugins(ctx, state, pod, infos)
			if !s.IsSuccess() {
				t.Fatalf("Score: %v", s.AsError())
			}
			got := map[string]int64{}
			for _, ns := range scores {
				got[ns.Name] = ns.TotalScore
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("scores %v, want %v", got, tc.want)
			}
		})
	}
}

type foreignState struct{}

func (foreignState) Clone() fwk.StateData { return foreignState{} }

// TestMissingPreFilterState: Filter, PreScore and Score read the image that
// PreFilter normalized through a checked getter; without it (or with
// another type under the key) they fail with an error instead of
// recomputing or panicking.
func TestMissingPreFilterState(t *testing.T) {
	p := newPlugin(t, &config.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0.5})
	pod := sandbox("python:3.9")
	node := agent("a", "8").Images(map[string]int64{python: 100 * mb}).Obj()
	ni := nodeInfos(t, cache.NewSnapshot(nil, []*v1.Node{node}), []*v1.Node{node})[0]
	cases := []struct {
		name  string
		state func() fwk.CycleState
		want  string
	}{
		{"no state", func() fwk.CycleState { return framework.NewCycleState() }, "reading \"ImageAffinity\" from cycle state"},
		{"foreign state", func() fwk.CycleState {
			cs := framework.NewCycleState()
			cs.Write(stateKey, foreignState{})
			return cs
		}, "cannot be converted to ImageAffinity.state"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			check := func(point string, s *fwk.Status) {
				t.Helper()
				if s.Code() != fwk.Error || !strings.Contains(s.Message(), tc.want) {
					t.Errorf("%s: status %v %q, want Error containing %q", point, s.Code(), s.Message(), tc.want)
				}
			}
			check("Filter", p.Filter(ctx, tc.state(), pod, ni))
			check("PreScore", p.PreScore(ctx, tc.state(), pod, []fwk.NodeInfo{ni}))
			score, s := p.Score(ctx, tc.state(), pod, ni)
			check("Score", s)
			if score != 0 {
				t.Errorf("Score %d on error, want 0", score)
			}
		})
	}
}
