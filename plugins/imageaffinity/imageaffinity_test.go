package imageaffinity

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

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

func agent(name string, slots int64, used int, images ...v1.ContainerImage) fwk.NodeInfo {
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1.NodeStatus{
		Allocatable: v1.ResourceList{v1.ResourcePods: *resource.NewQuantity(slots, resource.DecimalSI)},
		Images:      images,
	}}
	var pods []*v1.Pod
	for i := 0; i < used; i++ {
		pods = append(pods, &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name + string(rune('a'+i)), UID: types.UID("u" + name + string(rune('a'+i)))}})
	}
	ni := framework.NewNodeInfo(pods...)
	ni.SetNode(node)
	// Image states are filled by the scheduler cache; set them as it would.
	states := map[string]*fwk.ImageStateSummary{}
	for _, img := range images {
		for _, n := range img.Names {
			states[n] = &fwk.ImageStateSummary{Size: img.SizeBytes, NumNodes: 1}
		}
	}
	ni.ImageStates = states
	return ni
}

// warmAgent marks an agent as holding free warm containers for images.
func warmAgent(ni fwk.NodeInfo, images ...string) fwk.NodeInfo {
	node := ni.Node().DeepCopy()
	node.Annotations = map[string]string{v1alpha1.AnnotationWarmImages: strings.Join(images, ",")}
	ni.(*framework.NodeInfo).SetNode(node)
	return ni
}

func sandbox(image string) *v1.Pod {
	return &v1.Pod{Spec: v1.PodSpec{Containers: []v1.Container{{Image: image}}}}
}

func newPlugin(t *testing.T, raw string) *ImageAffinity {
	t.Helper()
	var obj runtime.Object
	if raw != "" {
		obj = &runtime.Unknown{Raw: []byte(raw), ContentType: runtime.ContentTypeJSON}
	}
	p, err := New(context.Background(), obj, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p.(*ImageAffinity)
}

func TestScore(t *testing.T) {
	py := v1.ContainerImage{Names: []string{"docker.io/library/python:3.9"}, SizeBytes: 500 * mb}
	small := v1.ContainerImage{Names: []string{"docker.io/library/busybox:latest"}, SizeBytes: 1 * mb}
	cases := []struct {
		name   string
		args   string
		image  string
		agents []fwk.NodeInfo
		want   []int64
	}{
		{"image present beats absent", "", "python:3.9", []fwk.NodeInfo{agent("a", 8, 0, py), agent("b", 8, 0)}, []int64{74, 0}},
		{"small images still count as present", "", "busybox", []fwk.NodeInfo{agent("a", 8, 0, small)}, []int64{50}},
		{"a busier agent scores lower", "", "python:3.9", []fwk.NodeInfo{agent("a", 4, 0, py), agent("b", 4, 2, py)}, []int64{74, 55}},
		{"spreadFactor 0 packs", `{"spreadFactor":0}`, "python:3.9", []fwk.NodeInfo{agent("a", 4, 0, py), agent("b", 4, 2, py)}, []int64{74, 74}},
		{"a free warm container beats the image alone", "", "busybox", []fwk.NodeInfo{warmAgent(agent("a", 8, 0, small), "docker.io/library/busybox:latest"), agent("b", 8, 0, small)}, []int64{100, 50}},
		{"a warm container of another image does not count", "", "busybox", []fwk.NodeInfo{warmAgent(agent("a", 8, 0, small), "docker.io/library/python:3.9")}, []int64{50}},
		{"warm agents still spread", "", "busybox", []fwk.NodeInfo{warmAgent(agent("a", 4, 2, small), "docker.io/library/busybox:latest")}, []int64{75}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlugin(t, tc.args)
			state := framework.NewCycleState()
			pod := sandbox(tc.image)
			if _, st := p.PreFilter(context.Background(), state, pod, tc.agents); !st.IsSuccess() {
				t.Fatal(st.AsError())
			}
			for i, a := range tc.agents {
				got, st := p.Score(context.Background(), state, pod, a)
				if !st.IsSuccess() || got != tc.want[i] {
					t.Errorf("agent %s: score %d (%v), want %d", a.Node().Name, got, st, tc.want[i])
				}
			}
		})
	}
}

func TestFilter(t *testing.T) {
	py := v1.ContainerImage{Names: []string{"docker.io/library/python:3.9"}, SizeBytes: 100 * mb}
	cases := []struct {
		name, args string
		agent      fwk.NodeInfo
		wantCode   fwk.Code
	}{
		{"off by default", "", agent("a", 8, 0), fwk.Success},
		{"required and present", `{"requireImage":true}`, agent("a", 8, 0, py), fwk.Success},
		{"required and absent", `{"requireImage":true}`, agent("a", 8, 0), fwk.UnschedulableAndUnresolvable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlugin(t, tc.args)
			state := framework.NewCycleState()
			pod := sandbox("python:3.9")
			p.PreFilter(context.Background(), state, pod, nil)
			st := p.Filter(context.Background(), state, pod, tc.agent)
			if st.Code() != tc.wantCode {
				t.Errorf("code %v (%v), want %v", st.Code(), st.Reasons(), tc.wantCode)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	cases := []struct {
		name, raw   string
		contentType string
		wantErr     string // "" = accepted
		wantSpread  float64
		wantRequire bool
	}{
		{name: "no args take the defaults", wantSpread: DefaultSpreadFactor},
		{name: "empty object takes the defaults", raw: `{}`, wantSpread: DefaultSpreadFactor},
		{name: "spreadFactor 0 is kept, not defaulted", raw: `{"spreadFactor":0}`, wantSpread: 0},
		{name: "spreadFactor 1", raw: `{"spreadFactor":1,"requireImage":true}`, wantSpread: 1, wantRequire: true},
		{name: "YAML", raw: "spreadFactor: 0.25\n", contentType: runtime.ContentTypeYAML, wantSpread: 0.25},
		{name: "kind and apiVersion may be given", raw: `{"apiVersion":"kubescheduler.config.k8s.io/v1","kind":"ImageAffinityArgs"}`, wantSpread: DefaultSpreadFactor},
		{name: "spreadFactor above 1", raw: `{"spreadFactor":1.5}`, wantErr: "args.spreadFactor: Invalid value: 1.5: must be between 0 and 1"},
		{name: "negative spreadFactor", raw: `{"spreadFactor":-1}`, wantErr: "args.spreadFactor: Invalid value: -1"},
		{name: "misspelt field", raw: `{"spredFactor":0.2}`, wantErr: `unknown field "spredFactor"`},
		{name: "another plugin's kind", raw: `{"kind":"AgentFitArgs"}`, wantErr: "args.kind: Invalid value"},
		{name: "wrong type", raw: `{"spreadFactor":"half"}`, wantErr: "decoding args"},
		{name: "unsupported content type", raw: `x`, contentType: "application/vnd.kubernetes.protobuf", wantErr: "unsupported content type"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var obj runtime.Object
			if tc.raw != "" {
				ct := tc.contentType
				if ct == "" {
					ct = runtime.ContentTypeJSON
				}
				obj = &runtime.Unknown{Raw: []byte(tc.raw), ContentType: ct}
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
			args := p.(*ImageAffinity).args
			if *args.SpreadFactor != tc.wantSpread || args.RequireImage != tc.wantRequire {
				t.Errorf("args spreadFactor=%v requireImage=%v, want %v %v", *args.SpreadFactor, args.RequireImage, tc.wantSpread, tc.wantRequire)
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
	py := v1.ContainerImage{Names: []string{"docker.io/library/python:3.9"}, SizeBytes: 100 * mb}
	p := newPlugin(t, `{"requireImage":true}`)
	pod := sandbox("python:3.9")
	ni := agent("a", 8, 0, py)
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
			check := func(point string, st *fwk.Status) {
				t.Helper()
				if st.Code() != fwk.Error || !strings.Contains(st.Message(), tc.want) {
					t.Errorf("%s: status %v %q, want Error containing %q", point, st.Code(), st.Message(), tc.want)
				}
			}
			check("Filter", p.Filter(ctx, tc.state(), pod, ni))
			check("PreScore", p.PreScore(ctx, tc.state(), pod, []fwk.NodeInfo{ni}))
			score, st := p.Score(ctx, tc.state(), pod, ni)
			check("Score", st)
			if score != 0 {
				t.Errorf("Score %d on error, want 0", score)
			}
		})
	}
}
