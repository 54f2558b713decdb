package poolcontroller

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// cleanupAgent is an agent Pod of testPool on node-a, built by AgentPod.
func cleanupAgent(f func(*corev1.Pod)) *corev1.Pod {
	pod := AgentPod(testPool(), "fast-sandbox-system", "py-agent-token", "node-a")
	pod.Name, pod.UID, pod.Spec.NodeName = "py-agent-x1", "agent-uid", "node-a"
	pod.Status.Phase = corev1.PodRunning
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: ContainerName,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
	if f != nil {
		f(pod)
	}
	return pod
}

func deleting(pod *corev1.Pod) { pod.DeletionTimestamp = ptr.To(metav1.NewTime(t0)) }

func terminated(pod *corev1.Pod) {
	pod.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137}}
}

func cleanupPodOf(agent *corev1.Pod, phase corev1.PodPhase) *corev1.Pod {
	cp := CleanupPod(agent, "py", nil)
	cp.UID, cp.Status.Phase = "cleanup-uid", phase
	return cp
}

func TestDecideCleanup(t *testing.T) {
	stopped := cleanupAgent(func(p *corev1.Pod) { deleting(p); terminated(p) })
	cases := []struct {
		name       string
		agent      *corev1.Pod
		noNode     bool // the Node does not exist
		cleanupPod *corev1.Pod
		want       CleanupStep
	}{
		{"running agent", cleanupAgent(nil), false, nil, CleanupNotNeeded},
		{"no finalizer, deleted", cleanupAgent(func(p *corev1.Pod) { p.Finalizers = nil; deleting(p); terminated(p) }), false, nil, CleanupNotNeeded},
		{"other finalizers only", cleanupAgent(func(p *corev1.Pod) { p.Finalizers = []string{"x/y"}; deleting(p) }), false, nil, CleanupNotNeeded},
		{"deleted, container still runs", cleanupAgent(deleting), false, nil, CleanupWaitForAgent},
		{"deleted, no container status yet", cleanupAgent(func(p *corev1.Pod) { deleting(p); p.Status.ContainerStatuses = nil }),
			false, nil, CleanupWaitForAgent},
		{"deleted, container waiting", cleanupAgent(func(p *corev1.Pod) {
			deleting(p)
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
		}), false, nil, CleanupWaitForAgent},
		{"terminated but not deleted (kubelet restarts it)", cleanupAgent(terminated), false, nil, CleanupNotNeeded},
		{"deleted, terminated", stopped, false, nil, CleanupCreatePod},
		{"failed, not deleted yet", cleanupAgent(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), false, nil, CleanupCreatePod},
		{"succeeded and deleted, statuses running (stale)", cleanupAgent(func(p *corev1.Pod) { deleting(p); p.Status.Phase = corev1.PodSucceeded }),
			false, nil, CleanupCreatePod},
		{"never got a node", cleanupAgent(func(p *corev1.Pod) { deleting(p); p.Spec.NodeName = "" }), false, nil, CleanupRelease},
		{"never got a node, failed", cleanupAgent(func(p *corev1.Pod) { p.Spec.NodeName = ""; p.Status.Phase = corev1.PodFailed }),
			false, nil, CleanupRelease},
		{"node gone, container said to run", cleanupAgent(deleting), true, nil, CleanupRelease},
		{"node gone, cleanup Pod pending", stopped, true, cleanupPodOf(stopped, corev1.PodPending), CleanupRelease},
		{"cleanup Pod pending", stopped, false, cleanupPodOf(stopped, corev1.PodPending), CleanupWaitForPod},
		{"cleanup Pod running", stopped, false, cleanupPodOf(stopped, corev1.PodRunning), CleanupWaitForPod},
		{"cleanup Pod succeeded", stopped, false, cleanupPodOf(stopped, corev1.PodSucceeded), CleanupDone},
		{"cleanup Pod failed", stopped, false, cleanupPodOf(stopped, corev1.PodFailed), CleanupReplacePod},
		{"cleanup Pod going", stopped, false, func() *corev1.Pod {
			cp := cleanupPodOf(stopped, corev1.PodFailed)
			deleting(cp)
			return cp
		}(), CleanupWaitForPod},
		{"cleanup Pod of an earlier agent Pod of that name", stopped, false, func() *corev1.Pod {
			cp := cleanupPodOf(stopped, corev1.PodSucceeded)
			cp.Labels[v1alpha1.LabelCleanupAgentPodUID] = "older-uid"
			return cp
		}(), CleanupReplacePod},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why := DecideCleanup(CleanupInput{Agent: tc.agent, NodeExists: !tc.noNode, CleanupPod: tc.cleanupPod})
			if got != tc.want {
				t.Errorf("DecideCleanup = %q (%s), want %q", got, why, tc.want)
			}
			if why == "" {
				t.Error("no reason given")
			}
		})
	}
}

func TestAgentPodHasCleanupFinalizer(t *testing.T) {
	pod := AgentPod(testPool(), "fast-sandbox-system", "py-agent-token", "")
	if !slices.Equal(pod.Finalizers, []string{v1alpha1.FinalizerAgentPodCleanup}) {
		t.Errorf("finalizers %v", pod.Finalizers)
	}
}

func TestCleanupPod(t *testing.T) {
	pool := testPool()
	agent := cleanupAgent(func(p *corev1.Pod) { deleting(p); terminated(p) })
	agent.Spec.PriorityClassName = "high"
	cp := CleanupPod(agent, "py", pool)

	if cp.Name != "py-agent-x1-cleanup" || cp.Namespace != "fast-sandbox-system" {
		t.Errorf("name %s/%s", cp.Namespace, cp.Name)
	}
	if _, ok := cp.Labels[v1alpha1.LabelPoolName]; ok {
		t.Errorf("a cleanup Pod carries the agent label %s: %v", v1alpha1.LabelPoolName, cp.Labels)
	}
	if cp.Labels[v1alpha1.LabelCleanupAgentPodUID] != "agent-uid" || cp.Labels[v1alpha1.LabelCleanupPoolName] != "py" ||
		cp.Annotations[v1alpha1.AnnotationCleanupAgentPodName] != "py-agent-x1" {
		t.Errorf("labels %v annotations %v", cp.Labels, cp.Annotations)
	}
	if len(cp.Finalizers) != 0 {
		t.Errorf("finalizers %v", cp.Finalizers)
	}
	if ref := metav1.GetControllerOf(cp); ref == nil || ref.UID != "pool-uid" || ref.Kind != "SandboxPool" {
		t.Errorf("controller reference %+v", ref)
	}
	if CleanupPod(agent, "py", nil).OwnerReferences != nil {
		t.Error("a cleanup Pod made without its pool has an owner")
	}
	s := cp.Spec
	if s.NodeName != "node-a" || s.Affinity != nil || len(s.NodeSelector) != 0 {
		t.Errorf("nodeName %q affinity %+v nodeSelector %v: want pinned to node-a", s.NodeName, s.Affinity, s.NodeSelector)
	}
	if s.RestartPolicy != corev1.RestartPolicyOnFailure || !s.HostNetwork || ptr.Deref(s.AutomountServiceAccountToken, true) ||
		s.PriorityClassName != "high" {
		t.Errorf("restartPolicy %q hostNetwork %v automount %v priority %q", s.RestartPolicy, s.HostNetwork,
			s.AutomountServiceAccountToken, s.PriorityClassName)
	}
	if len(s.Tolerations) != 1 || s.Tolerations[0].Operator != corev1.TolerationOpExists || s.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v: want all", s.Tolerations)
	}
	if len(s.Containers) != 1 {
		t.Fatalf("%d containers", len(s.Containers))
	}
	c := &s.Containers[0]
	if c.Image != "fast-sandbox/agent:v1" || c.ImagePullPolicy != corev1.PullAlways || len(c.Command) != 0 {
		t.Errorf("image %q pull %q command %v: want the agent's image and entrypoint", c.Image, c.ImagePullPolicy, c.Command)
	}
	wantArgs := []string{"--cleanup-agent-pod-uid=agent-uid", "--containerd-socket=/run/k3s/containerd/containerd.sock",
		"--containerd-namespace=k8s.io", "--state-dir=/var/lib/fast-sandbox/agent"}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args %q, want %q", c.Args, wantArgs)
	}
	if c.SecurityContext == nil || !ptr.Deref(c.SecurityContext.Privileged, false) {
		t.Errorf("not privileged: %+v", c.SecurityContext)
	}
	if len(c.Env) != 0 || len(c.Ports) != 0 || c.Resources.Limits != nil || c.Resources.Requests != nil {
		t.Errorf("env %v ports %v resources %+v", c.Env, c.Ports, c.Resources)
	}
	// The agent's node paths, the same volumes and mounts, and no token.
	agentC := &agent.Spec.Containers[0]
	for _, name := range []string{volumeContainerdSocket, volumeState, volumeCgroup} {
		if v, av := volumeOf(cp, name), volumeOf(agent, name); v == nil || av == nil || !equality.Semantic.DeepEqual(v, av) {
			t.Errorf("volume %s: %+v, agent's %+v", name, v, av)
		}
		if m, am := mountOf(c, name), mountOf(agentC, name); m == nil || am == nil || m.MountPath != am.MountPath || m.ReadOnly != am.ReadOnly {
			t.Errorf("mount %s: %+v, agent's %+v", name, m, am)
		}
	}
	if len(s.Volumes) != 3 || len(c.VolumeMounts) != 3 {
		t.Errorf("volumes %+v mounts %+v: want exactly the node's three", s.Volumes, c.VolumeMounts)
	}
}

func TestCleanupPodName(t *testing.T) {
	agent := cleanupAgent(nil)
	agent.Name = strings.Repeat("a", 250)
	name := CleanupPodName(agent)
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 || !strings.HasSuffix(name, "-cleanup") {
		t.Errorf("name %q: %v", name, errs)
	}
	other := agent.DeepCopy()
	other.UID = types.UID("another")
	if CleanupPodName(other) == name {
		t.Error("two long agent Pods of the same name prefix share a cleanup Pod name")
	}
	agent.Name = "py-agent-abcde"
	if got := CleanupPodName(agent); got != "py-agent-abcde-cleanup" {
		t.Errorf("CleanupPodName = %q", got)
	}
}

func TestExpectationsRelease(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(t0)
	e := newExpectations(clk, time.Minute)
	e.expectRelease("ns/p", "u1")
	if e.satisfied("ns/p") {
		t.Error("satisfied with a release outstanding")
	}
	e.releaseObserved("ns/p", "u1")
	if !e.satisfied("ns/p") {
		t.Error("not satisfied once the release was observed")
	}
	e.expectRelease("ns/p", "u2")
	clk.SetTime(t0.Add(2 * time.Minute))
	if !e.satisfied("ns/p") {
		t.Error("a release outstanding past the timeout still holds the pool")
	}
}
