package poolcontroller

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type nodeOpt func(*corev1.Node)

func testNode(name string, opts ...nodeOpt) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{HostnameLabel: name}},
		Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("32Gi")},
			Conditions:  []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

func images(names ...string) nodeOpt {
	return func(n *corev1.Node) {
		for _, name := range names {
			n.Status.Images = append(n.Status.Images, corev1.ContainerImage{Names: []string{name, name + "@sha256:0123"}})
		}
	}
}

func agentOn(node string, cpu string) *corev1.Pod {
	return &corev1.Pod{Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse("1Gi")}},
	}}}}
}

func TestChooseNodes(t *testing.T) {
	shape := AgentShape{CPUMillis: 4000, MemoryBytes: 8 << 30, SlotsPerAgent: 2}
	notReady := func(n *corev1.Node) { n.Status.Conditions[0].Status = corev1.ConditionFalse }
	cordoned := func(n *corev1.Node) { n.Spec.Unschedulable = true }
	tainted := func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: "gpu", Effect: corev1.TaintEffectNoSchedule}}
	}
	labelled := func(n *corev1.Node) { n.Labels["pool"] = "sandbox" }
	cases := []struct {
		name    string
		n       int
		pending []string
		nodes   []*corev1.Node
		pods    []*corev1.Pod
		shape   func(*AgentShape)
		want    []string
	}{
		{
			name: "the node with the image, names normalised", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{testNode("a", images("docker.io/library/python:3.12")), testNode("b", images("docker.io/library/busybox:latest"))},
			want:  []string{"b"},
		},
		{
			name: "no node has it: no affinity", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{testNode("a", images("docker.io/library/python:3.12"))},
			want:  []string{""},
		},
		{
			name: "no pending sandboxes: no affinity", n: 2,
			nodes: []*corev1.Node{testNode("a", images("docker.io/library/busybox:latest"))},
			want:  []string{"", ""},
		},
		{
			name: "the node covering the most sandboxes", n: 1, pending: []string{"busybox", "python:3.12", "python:3.12"},
			nodes: []*corev1.Node{testNode("a", images("docker.io/library/busybox:latest")), testNode("b", images("docker.io/library/python:3.12"))},
			want:  []string{"b"},
		},
		{
			name: "later picks serve what is left", n: 3, pending: []string{"python:3.12", "python:3.12", "busybox"},
			nodes: []*corev1.Node{testNode("a", images("docker.io/library/busybox:latest")), testNode("b", images("docker.io/library/python:3.12"))},
			want:  []string{"b", "a", ""},
		},
		{
			name: "not ready, cordoned or untolerated tainted nodes are skipped", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{
				testNode("a", images("busybox"), notReady), testNode("b", images("busybox"), cordoned),
				testNode("c", images("busybox"), tainted),
			},
			want: []string{""},
		},
		{
			name: "a tolerated taint is fine", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{testNode("c", images("busybox"), tainted)},
			shape: func(s *AgentShape) {
				s.Tolerations = []corev1.Toleration{{Key: "gpu", Operator: corev1.TolerationOpExists}}
			},
			want: []string{"c"},
		},
		{
			name: "node selector honoured", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{testNode("a", images("busybox")), testNode("b", images("busybox"), labelled)},
			shape: func(s *AgentShape) { s.NodeSelector = map[string]string{"pool": "sandbox"} },
			want:  []string{"b"},
		},
		{
			name: "a full node is skipped", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{testNode("a", images("busybox")), testNode("b")},
			pods:  []*corev1.Pod{agentOn("a", "13")},
			want:  []string{""},
		},
		{
			name: "room runs out within one round", n: 3, pending: []string{"busybox", "busybox", "busybox", "busybox", "busybox", "busybox"},
			nodes: []*corev1.Node{testNode("a", images("busybox"))},
			pods:  []*corev1.Pod{agentOn("a", "8")},
			want:  []string{"a", "a", ""},
		},
		{
			name: "more room wins a tie", n: 1, pending: []string{"busybox"},
			nodes: []*corev1.Node{testNode("a", images("busybox")), testNode("b", images("busybox"))},
			pods:  []*corev1.Pod{agentOn("a", "4")},
			want:  []string{"b"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := shape
			if tc.shape != nil {
				tc.shape(&s)
			}
			got := ChooseNodes(tc.n, tc.pending, tc.nodes, tc.pods, s)
			if !slices.Equal(got, tc.want) {
				t.Errorf("ChooseNodes = %q, want %q", got, tc.want)
			}
		})
	}
}
