package integration

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/kubernetes/pkg/capabilities"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
	"github.com/fast-sandbox/fast-sandbox/pkg/poolcontroller"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
)

// TestPoolController runs the pool controller against a real kube-apiserver.
// There is no kubelet, kube-scheduler or garbage collector: the test plays
// the kubelet (Pod status) and the fast-sandbox scheduler (Sandbox status).
func TestPoolController(t *testing.T) {
	cp := framework.Start(t)
	allowPrivileged(t)

	t.Run("min agents, token secret and status", func(t *testing.T) { testPoolMinAgents(t, cp) })
	t.Run("grows for pending sandboxes up to max", func(t *testing.T) { testPoolGrowth(t, cp) })
	t.Run("targeted node choice", func(t *testing.T) { testPoolTargetedNode(t, cp) })
	t.Run("scale-down drains idle agents only", func(t *testing.T) { testPoolScaleDown(t, cp) })
	t.Run("replaces a failed agent", func(t *testing.T) { testPoolReplacesFailed(t, cp) })
	t.Run("no double creation under a slow informer", func(t *testing.T) { testPoolSlowInformer(t, cp) })
	t.Run("a stopped agent's node is cleaned before its Pod goes", func(t *testing.T) { testPoolCleansNode(t, cp) })
	t.Run("an agent without a node or Node loses its finalizer", func(t *testing.T) { testPoolCleanupNotNeeded(t, cp) })
	t.Run("the node is cleaned after a deleted pool's agent", func(t *testing.T) { testPoolCleanupAfterPool(t, cp) })
}

// allowPrivileged is the in-process kube-apiserver's --allow-privileged=true
// (what kubeadm and every real cluster set): agent Pods are privileged. The
// setting is global to the process, so it is restored when the test ends.
func allowPrivileged(t *testing.T) {
	t.Helper()
	capabilities.ResetForTest()
	capabilities.Initialize(capabilities.Capabilities{AllowPrivileged: true})
	if !capabilities.Get().AllowPrivileged {
		t.Fatal("could not allow privileged Pods in the test apiserver")
	}
	t.Cleanup(capabilities.ResetForTest)
}

// newNamespace makes a namespace with the "default" ServiceAccount, which
// the ServiceAccount admission plugin wants for every Pod (no
// kube-controller-manager runs here to make it in time).
func newNamespace(t *testing.T, cp *framework.ControlPlane, prefix string) string {
	t.Helper()
	ns := cp.CreateNamespace(t, prefix)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := cp.Kube.CoreV1().ServiceAccounts(ns).Create(context.Background(), sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating the default ServiceAccount: %v", err)
	}
	return ns
}

const (
	pollInterval = 20 * time.Millisecond
	pollTimeout  = 15 * time.Second
)

// startPoolController runs a controller that watches only namespace ns (and
// all Nodes). With podWatchDelay > 0 its Pod informer sees every change that
// much later.
func startPoolController(t *testing.T, cp *framework.ControlPlane, ns string, podWatchDelay time.Duration) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	selectPool := informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelPoolName })
	labelled := informers.NewSharedInformerFactoryWithOptions(cp.Kube, 0, informers.WithNamespace(ns), selectPool)
	nodes := informers.NewSharedInformerFactory(cp.Kube, 0)
	sbx := externalversions.NewSharedInformerFactoryWithOptions(cp.Sandbox, 0, externalversions.WithNamespace(ns))
	cleanup := informers.NewSharedInformerFactoryWithOptions(cp.Kube, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelCleanupAgentPodUID }))
	var pods coreinformers.PodInformer = labelled.Core().V1().Pods()
	if podWatchDelay > 0 {
		pods = newSlowPodInformer(cp.Kube, ns, podWatchDelay)
	}
	c, err := poolcontroller.NewController(ctx, cp.Kube, cp.Sandbox, pods, nodes.Core().V1().Nodes(),
		labelled.Core().V1().Secrets(), sbx.Sandbox().V1alpha1().SandboxPools(), sbx.Sandbox().V1alpha1().Sandboxes(),
		poolcontroller.Options{CleanupPods: cleanup.Core().V1().Pods()})
	if err != nil {
		t.Fatalf("NewController: %v", err)
	}
	labelled.Start(ctx.Done())
	nodes.Start(ctx.Done())
	sbx.Start(ctx.Done())
	cleanup.Start(ctx.Done())
	var wg sync.WaitGroup
	if podWatchDelay > 0 {
		wg.Go(func() { pods.Informer().RunWithContext(ctx) })
	}
	wg.Go(func() {
		if err := c.Run(ctx, 2); err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		labelled.Shutdown()
		nodes.Shutdown()
		sbx.Shutdown()
		cleanup.Shutdown()
	})
}

func testPool(name string, minAgents, maxAgents, slots int32) *v1alpha1.SandboxPool {
	p := validPool(name)
	p.Spec.MinAgents, p.Spec.MaxAgents, p.Spec.SlotsPerAgent = minAgents, maxAgents, slots
	p.Spec.ScaleDownDelaySeconds = 300
	p.Spec.Agent.Resources.CPU = ptr.To(resource.MustParse("1"))
	p.Spec.Agent.Resources.Memory = ptr.To(resource.MustParse("1Gi"))
	return p
}

func createPool(t *testing.T, cp *framework.ControlPlane, ns string, p *v1alpha1.SandboxPool) *v1alpha1.SandboxPool {
	t.Helper()
	got, err := cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pool %s: %v", p.Name, err)
	}
	return got
}

func createPendingSandbox(t *testing.T, cp *framework.ControlPlane, ns, pool, name, image string) *v1alpha1.Sandbox {
	t.Helper()
	s := &v1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.SandboxSpec{PoolName: pool, Image: image, Command: []string{"true"}},
	}
	got, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating sandbox %s: %v", name, err)
	}
	return got
}

// bindSandbox plays the scheduler: the Sandbox runs on agent.
func bindSandbox(t *testing.T, cp *framework.ControlPlane, s *v1alpha1.Sandbox, agent *corev1.Pod, phase v1alpha1.SandboxPhase) *v1alpha1.Sandbox {
	t.Helper()
	s = s.DeepCopy()
	s.Status.Agent, s.Status.AgentUID, s.Status.Phase = agent.Name, string(agent.UID), phase
	if phase == v1alpha1.SandboxSucceeded {
		s.Status.FinishTime = ptr.To(metav1.NowMicro())
		s.Status.ExitCode = ptr.To[int32](0)
	}
	got, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(s.Namespace).UpdateStatus(context.Background(), s, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("updating the status of sandbox %s: %v", s.Name, err)
	}
	return got
}

func listAgents(t *testing.T, cp *framework.ControlPlane, ns, pool string) []corev1.Pod {
	t.Helper()
	l, err := cp.Kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + pool})
	if err != nil {
		t.Fatalf("listing agent Pods: %v", err)
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
	return l.Items
}

// waitForAgents waits until the pool has exactly n agent Pods.
func waitForAgents(t *testing.T, cp *framework.ControlPlane, ns, pool string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		pods = listAgents(t, cp, ns, pool)
		return len(pods) == n, nil
	})
	if err != nil {
		t.Fatalf("pool %s has %d agent Pods, want %d", pool, len(pods), n)
	}
	return pods
}

// consistentlyAgents checks the pool keeps n agent Pods for d.
func consistentlyAgents(t *testing.T, cp *framework.ControlPlane, ns, pool string, n int, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if pods := listAgents(t, cp, ns, pool); len(pods) != n {
			t.Fatalf("pool %s has %d agent Pods, want %d to stay", pool, len(pods), n)
		}
	}
}

// markReady plays the kubelet: the Pod runs and is Ready.
func markReady(t *testing.T, cp *framework.ControlPlane, pod *corev1.Pod) {
	t.Helper()
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := cp.Kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("marking Pod %s ready: %v", p.Name, err)
	}
}

func waitForPool(t *testing.T, cp *framework.ControlPlane, ns, name, what string, cond func(*v1alpha1.SandboxPool) bool) *v1alpha1.SandboxPool {
	t.Helper()
	var pool *v1alpha1.SandboxPool
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, pollTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		pool, err = cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return cond(pool), nil
	})
	if err != nil {
		t.Fatalf("pool %s never got %s: status %+v", name, what, pool.Status)
	}
	return pool
}

func waitForEvent(t *testing.T, cp *framework.ControlPlane, ns, pool, reason string) {
	t.Helper()
	var reasons []string
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, pollTimeout, true, func(ctx context.Context) (bool, error) {
		l, err := cp.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		reasons = reasons[:0]
		for _, e := range l.Items {
			if e.InvolvedObject.Kind == "SandboxPool" && e.InvolvedObject.Name == pool {
				reasons = append(reasons, e.Reason)
			}
		}
		return slices.Contains(reasons, reason), nil
	})
	if err != nil {
		t.Fatalf("no %s event for pool %s; events: %v", reason, pool, reasons)
	}
}

func testPoolMinAgents(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := newNamespace(t, cp, "pc-min")
	startPoolController(t, cp, ns, 0)
	pool := createPool(t, cp, ns, testPool("py", 2, 4, 3))
	// A Sandbox of a pool that does not exist is left alone.
	ghost := createPendingSandbox(t, cp, ns, "ghost", "ghost-orphan", "busybox")

	pods := waitForAgents(t, cp, ns, "py", 2)
	secret, err := cp.Kube.CoreV1().Secrets(ns).Get(ctx, "py-agent-token", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the token Secret: %v", err)
	}
	if tok := secret.Data["token"]; len(tok) != 64 {
		t.Errorf("token %q: want 32 random bytes in hex", tok)
	} else if _, err := hex.DecodeString(string(tok)); err != nil {
		t.Errorf("token is not hex: %v", err)
	}
	if !metav1.IsControlledBy(secret, pool) {
		t.Errorf("the Secret is not owned by the pool: %+v", secret.OwnerReferences)
	}
	for _, pod := range pods {
		if pod.GenerateName != "py-agent-" || pod.Labels[v1alpha1.LabelPoolName] != "py" {
			t.Errorf("Pod %s: generateName %q labels %v", pod.Name, pod.GenerateName, pod.Labels)
		}
		// Without a garbage collector here, the owner reference is what deleting the pool relies on.
		ref := metav1.GetControllerOf(&pod)
		if ref == nil || ref.UID != pool.UID || !ptr.Deref(ref.BlockOwnerDeletion, false) {
			t.Errorf("Pod %s: controller reference %+v, want the pool %s", pod.Name, ref, pool.UID)
		}
		if _, ok := pod.Annotations[poolcontroller.AnnotationIdleSince]; !ok {
			t.Errorf("Pod %s has no %s annotation", pod.Name, poolcontroller.AnnotationIdleSince)
		}
		found := false
		for _, v := range pod.Spec.Volumes {
			found = found || v.Secret != nil && v.Secret.SecretName == secret.Name
		}
		if !found {
			t.Errorf("Pod %s does not mount the token Secret", pod.Name)
		}
	}

	got := waitForPool(t, cp, ns, "py", "agents=2, Ready=False", func(p *v1alpha1.SandboxPool) bool {
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.PoolConditionReady)
		return p.Status.Agents == 2 && c != nil && c.Status == metav1.ConditionFalse
	})
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.PoolConditionReady); c.Reason != poolcontroller.ReasonWaitingForAgents {
		t.Errorf("Ready reason %q", c.Reason)
	}
	for i := range pods {
		markReady(t, cp, &pods[i])
	}
	got = waitForPool(t, cp, ns, "py", "two ready agents", func(p *v1alpha1.SandboxPool) bool {
		return p.Status.ReadyAgents == 2 && meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.PoolConditionReady)
	})
	st := got.Status
	if st.Agents != 2 || st.FreeSlots != 6 || st.UsedSlots != 0 || st.ObservedGeneration != got.Generation {
		t.Errorf("status %+v, want 2 agents, 6 free slots, observedGeneration %d", st, got.Generation)
	}
	ready := meta.FindStatusCondition(st.Conditions, v1alpha1.PoolConditionReady)
	if ready.Reason != poolcontroller.ReasonMinAgentsReady || ready.ObservedGeneration != got.Generation {
		t.Errorf("Ready condition %+v", ready)
	}
	if meta.IsStatusConditionTrue(st.Conditions, v1alpha1.PoolConditionScalingLimited) {
		t.Errorf("ScalingLimited is True: %+v", st.Conditions)
	}
	waitForEvent(t, cp, ns, "py", poolcontroller.EventCreatedAgent)

	// Raising min is a spec change: observedGeneration follows.
	got.Spec.MinAgents = 3
	if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForAgents(t, cp, ns, "py", 3)
	waitForPool(t, cp, ns, "py", "the new generation observed", func(p *v1alpha1.SandboxPool) bool {
		return p.Status.ObservedGeneration == p.Generation && p.Generation > 1 && p.Status.Agents == 3
	})

	g, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Get(ctx, "ghost-orphan", metav1.GetOptions{})
	if err != nil || g.ResourceVersion != ghost.ResourceVersion {
		t.Errorf("the Sandbox of a missing pool was touched: %v, resourceVersion %s -> %s", err, ghost.ResourceVersion, g.ResourceVersion)
	}
	if pods := listAgents(t, cp, ns, "ghost"); len(pods) != 0 {
		t.Errorf("%d agent Pods for a missing pool", len(pods))
	}
}

func testPoolGrowth(t *testing.T, cp *framework.ControlPlane) {
	ns := newNamespace(t, cp, "pc-grow")
	startPoolController(t, cp, ns, 0)
	createPool(t, cp, ns, testPool("grow", 1, 3, 2))
	pods := waitForAgents(t, cp, ns, "grow", 1)
	markReady(t, cp, &pods[0])

	// 3 pending sandboxes need 2 agents of 2 slots.
	for i := range 3 {
		createPendingSandbox(t, cp, ns, "grow", fmt.Sprintf("s%d", i), "docker.io/example/grow-only:v1")
	}
	waitForAgents(t, cp, ns, "grow", 2)
	consistentlyAgents(t, cp, ns, "grow", 2, 500*time.Millisecond)

	// 10 pending want 5 agents; max is 3.
	for i := 3; i < 10; i++ {
		createPendingSandbox(t, cp, ns, "grow", fmt.Sprintf("s%d", i), "docker.io/example/grow-only:v1")
	}
	waitForAgents(t, cp, ns, "grow", 3)
	got := waitForPool(t, cp, ns, "grow", "ScalingLimited=True", func(p *v1alpha1.SandboxPool) bool {
		return meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.PoolConditionScalingLimited)
	})
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.PoolConditionScalingLimited); c.Reason != poolcontroller.ReasonMaxAgentsReached {
		t.Errorf("ScalingLimited reason %q", c.Reason)
	}
	waitForEvent(t, cp, ns, "grow", poolcontroller.EventScalingLimited)
	consistentlyAgents(t, cp, ns, "grow", 3, time.Second)
}

// createNode creates a Ready, schedulable Node with the given images.
func createNode(t *testing.T, cp *framework.ControlPlane, name string, images ...string) {
	t.Helper()
	ctx := context.Background()
	node, err := cp.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = cp.Kube.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if len(node.Spec.Taints) > 0 { // the not-ready taint added at admission; no node lifecycle controller here
		node.Spec.Taints = nil
		if node, err = cp.Kube.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("untainting node %s: %v", name, err)
		}
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods: resource.MustParse("110")}
	node.Status.Capacity, node.Status.Allocatable = res, res
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "KubeletReady"}}
	for _, img := range images {
		node.Status.Images = append(node.Status.Images, corev1.ContainerImage{Names: []string{img}, SizeBytes: 1 << 20})
	}
	if _, err := cp.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the status of node %s: %v", name, err)
	}
}

func pinnedHostname(pod *corev1.Pod) string {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == corev1.LabelHostname && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

func testPoolTargetedNode(t *testing.T, cp *framework.ControlPlane) {
	ns := newNamespace(t, cp, "pc-target")
	createNode(t, cp, "pc-node-cached", "docker.io/example/targeted:v1", "docker.io/library/python:3.12")
	createNode(t, cp, "pc-node-empty", "docker.io/library/python:3.12")
	startPoolController(t, cp, ns, 0)

	createPool(t, cp, ns, testPool("target", 0, 2, 4))
	createPool(t, cp, ns, testPool("anywhere", 0, 2, 4))
	consistentlyAgents(t, cp, ns, "target", 0, 300*time.Millisecond)

	// Only pc-node-cached has the image; the reference is written short.
	createPendingSandbox(t, cp, ns, "target", "t1", "example/targeted:v1")
	pods := waitForAgents(t, cp, ns, "target", 1)
	if got := pinnedHostname(&pods[0]); got != "pc-node-cached" {
		t.Errorf("the new agent is pinned to %q, want pc-node-cached; affinity %+v", got, pods[0].Spec.Affinity)
	}
	if pods[0].Spec.NodeName != "" {
		t.Errorf("nodeName %q set; kube-scheduler must place the Pod", pods[0].Spec.NodeName)
	}

	// No node has this image: kube-scheduler picks.
	createPendingSandbox(t, cp, ns, "anywhere", "a1", "docker.io/example/nowhere:v1")
	pods = waitForAgents(t, cp, ns, "anywhere", 1)
	if pods[0].Spec.Affinity != nil {
		t.Errorf("an agent for an image no node has got an affinity: %+v", pods[0].Spec.Affinity)
	}
}

func getPod(t *testing.T, cp *framework.ControlPlane, ns, name string) (*corev1.Pod, bool) {
	t.Helper()
	pod, err := cp.Kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("getting Pod %s: %v", name, err)
	}
	return pod, true
}

func testPoolScaleDown(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := newNamespace(t, cp, "pc-down")
	startPoolController(t, cp, ns, 0)
	p := testPool("down", 1, 3, 1)
	p.Spec.ScaleDownDelaySeconds = 1
	createPool(t, cp, ns, p)

	var sandboxes []*v1alpha1.Sandbox
	for i := range 3 {
		sandboxes = append(sandboxes, createPendingSandbox(t, cp, ns, "down", fmt.Sprintf("s%d", i), "docker.io/example/down:v1"))
	}
	pods := waitForAgents(t, cp, ns, "down", 3)
	for i := range pods {
		markReady(t, cp, &pods[i])
	}
	// s0 runs on pods[0], s1 on pods[1]; s2 is gone, so pods[2] is idle.
	busy0 := bindSandbox(t, cp, sandboxes[0], &pods[0], v1alpha1.SandboxRunning)
	busy1 := bindSandbox(t, cp, sandboxes[1], &pods[1], v1alpha1.SandboxRunning)
	if err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Delete(ctx, "s2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The idle agent is marked draining, then deleted.
	idle := pods[2].Name
	err := wait.PollUntilContextTimeout(ctx, pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		pod, ok := getPod(t, cp, ns, idle)
		if !ok {
			return false, fmt.Errorf("agent %s deleted before it was seen draining", idle)
		}
		_, draining := pod.Annotations[poolcontroller.AnnotationDraining]
		return draining, nil
	})
	if err != nil {
		t.Fatalf("idle agent %s was never marked draining: %v", idle, err)
	}
	err = wait.PollUntilContextTimeout(ctx, pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		_, ok := getPod(t, cp, ns, idle)
		return !ok, nil
	})
	if err != nil {
		t.Fatalf("drained agent %s was never deleted", idle)
	}
	waitForEvent(t, cp, ns, "down", poolcontroller.EventDrainingAgent)
	waitForEvent(t, cp, ns, "down", poolcontroller.EventDeletedAgent)
	for _, pod := range pods[:2] {
		got, ok := getPod(t, cp, ns, pod.Name)
		if !ok {
			t.Fatalf("agent %s with a running Sandbox was deleted", pod.Name)
		}
		if _, draining := got.Annotations[poolcontroller.AnnotationDraining]; draining {
			t.Errorf("agent %s with a running Sandbox is draining", pod.Name)
		}
	}

	// s1 finishes: pods[1] turns idle and is marked draining; a Sandbox bound
	// to it within the grace (a bind racing the mark) cancels the drain.
	bindSandbox(t, cp, busy1, &pods[1], v1alpha1.SandboxSucceeded)
	err = wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, pollTimeout, true, func(context.Context) (bool, error) {
		pod, ok := getPod(t, cp, ns, pods[1].Name)
		if !ok {
			return false, fmt.Errorf("agent %s deleted before it was seen draining", pods[1].Name)
		}
		_, draining := pod.Annotations[poolcontroller.AnnotationDraining]
		return draining, nil
	})
	if err != nil {
		t.Fatalf("agent %s was never marked draining: %v", pods[1].Name, err)
	}
	late := createPendingSandbox(t, cp, ns, "down", "late", "docker.io/example/down:v1")
	bindSandbox(t, cp, late, &pods[1], v1alpha1.SandboxScheduled)
	err = wait.PollUntilContextTimeout(ctx, pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		pod, ok := getPod(t, cp, ns, pods[1].Name)
		if !ok {
			return false, fmt.Errorf("agent %s was deleted with a Sandbox bound", pods[1].Name)
		}
		_, draining := pod.Annotations[poolcontroller.AnnotationDraining]
		return !draining, nil
	})
	if err != nil {
		t.Fatalf("the draining mark of %s was not removed: %v", pods[1].Name, err)
	}
	waitForEvent(t, cp, ns, "down", poolcontroller.EventDrainCancelled)
	consistentlyAgents(t, cp, ns, "down", 2, 3*time.Second)
	if pod, _ := getPod(t, cp, ns, pods[0].Name); pod == nil || pod.Annotations[poolcontroller.AnnotationDraining] != "" {
		t.Errorf("agent %s with a running Sandbox (%s) was drained", pods[0].Name, busy0.Name)
	}
	waitForPool(t, cp, ns, "down", "usedSlots=2", func(p *v1alpha1.SandboxPool) bool {
		return p.Status.Agents == 2 && p.Status.UsedSlots == 2 && p.Status.FreeSlots == 0
	})
}

func testPoolReplacesFailed(t *testing.T, cp *framework.ControlPlane) {
	ns := newNamespace(t, cp, "pc-fail")
	startPoolController(t, cp, ns, 0)
	createPool(t, cp, ns, testPool("fail", 1, 2, 2))
	pods := waitForAgents(t, cp, ns, "fail", 1)

	failed := pods[0].DeepCopy()
	failed.Status.Phase, failed.Status.Reason = corev1.PodFailed, "Evicted"
	if _, err := cp.Kube.CoreV1().Pods(ns).UpdateStatus(context.Background(), failed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		pods := listAgents(t, cp, ns, "fail")
		return len(pods) == 1 && pods[0].UID != failed.UID, nil
	})
	if err != nil {
		t.Fatalf("the failed agent was not replaced: %v", listAgents(t, cp, ns, "fail"))
	}
	waitForEvent(t, cp, ns, "fail", poolcontroller.EventDeletedAgent)
	consistentlyAgents(t, cp, ns, "fail", 1, 500*time.Millisecond)
}

func testPoolSlowInformer(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := newNamespace(t, cp, "pc-slow")
	startPoolController(t, cp, ns, 2*time.Second)
	createPool(t, cp, ns, testPool("slow", 3, 10, 2))
	waitForAgents(t, cp, ns, "slow", 3)
	// Force reconciles while the informer has not shown the new Pods yet.
	for i := range 5 {
		err := wait.PollUntilContextTimeout(ctx, pollInterval, pollTimeout, true, func(ctx context.Context) (bool, error) {
			p, err := cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Get(ctx, "slow", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			metav1.SetMetaDataAnnotation(&p.ObjectMeta, "test/poke", fmt.Sprint(i))
			_, err = cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Update(ctx, p, metav1.UpdateOptions{})
			return err == nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	consistentlyAgents(t, cp, ns, "slow", 3, 3*time.Second)
	waitForPool(t, cp, ns, "slow", "three agents", func(p *v1alpha1.SandboxPool) bool { return p.Status.Agents == 3 })
}

// slowPodInformer is a Pod informer whose watch delivers every event late,
// like an informer lagging behind the API server.
type slowPodInformer struct{ informer cache.SharedIndexInformer }

func newSlowPodInformer(client kubernetes.Interface, ns string, delay time.Duration) *slowPodInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = v1alpha1.LabelPoolName
			return client.CoreV1().Pods(ns).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = v1alpha1.LabelPoolName
			w, err := client.CoreV1().Pods(ns).Watch(ctx, o)
			if err != nil {
				return nil, err
			}
			return newDelayedWatch(w, delay), nil
		},
	}
	return &slowPodInformer{informer: cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
}

func (s *slowPodInformer) Informer() cache.SharedIndexInformer { return s.informer }
func (s *slowPodInformer) Lister() corelisters.PodLister {
	return corelisters.NewPodLister(s.informer.GetIndexer())
}

type delayedWatch struct {
	inner watch.Interface
	out   chan watch.Event
	stop  chan struct{}
	once  sync.Once
}

func newDelayedWatch(inner watch.Interface, delay time.Duration) *delayedWatch {
	d := &delayedWatch{inner: inner, out: make(chan watch.Event), stop: make(chan struct{})}
	type timed struct {
		ev watch.Event
		at time.Time
	}
	buf := make(chan timed, 1024)
	go func() {
		defer close(buf)
		for ev := range inner.ResultChan() {
			select {
			case buf <- timed{ev, time.Now().Add(delay)}:
			case <-d.stop:
				return
			}
		}
	}()
	go func() {
		defer close(d.out)
		for e := range buf {
			select {
			case <-time.After(time.Until(e.at)):
			case <-d.stop:
				return
			}
			select {
			case d.out <- e.ev:
			case <-d.stop:
				return
			}
		}
	}()
	return d
}

func (d *delayedWatch) Stop() {
	d.once.Do(func() {
		close(d.stop)
		d.inner.Stop()
	})
}

func (d *delayedWatch) ResultChan() <-chan watch.Event { return d.out }

// bindToNode plays kube-scheduler and kubelet: the agent Pod is bound to
// node and its agent container runs.
func bindToNode(t *testing.T, cp *framework.ControlPlane, pod *corev1.Pod, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	err := cp.Kube.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("binding Pod %s to %s: %v", pod.Name, node, err)
	}
	got, _ := getPod(t, cp, pod.Namespace, pod.Name)
	got.Status.Phase = corev1.PodRunning
	got.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: poolcontroller.ContainerName, Image: got.Spec.Containers[0].Image,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
	got, err = cp.Kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("setting the status of Pod %s: %v", pod.Name, err)
	}
	return got
}

// stopAgent plays kubelet after a Pod's deletion: its container is
// terminated, then the Pod is deleted for good (grace period 0).
func stopAgent(t *testing.T, cp *framework.ControlPlane, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	got, ok := getPod(t, cp, pod.Namespace, pod.Name)
	if !ok {
		t.Fatalf("Pod %s is gone", pod.Name)
	}
	got.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: poolcontroller.ContainerName, Image: got.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 143, Reason: "Error", FinishedAt: metav1.Now()}}}}
	if _, err := cp.Kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the status of Pod %s: %v", pod.Name, err)
	}
	if err := cp.Kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil &&
		!apierrors.IsNotFound(err) {
		t.Fatalf("deleting Pod %s: %v", pod.Name, err)
	}
}

func waitForPodGone(t *testing.T, cp *framework.ControlPlane, ns, name string) {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		var ok bool
		last, ok = getPod(t, cp, ns, name)
		return !ok, nil
	})
	if err != nil {
		t.Fatalf("Pod %s is still there: finalizers %v, deletionTimestamp %v", name, last.Finalizers, last.DeletionTimestamp)
	}
}

func listCleanupPods(t *testing.T, cp *framework.ControlPlane, ns string) []corev1.Pod {
	t.Helper()
	l, err := cp.Kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: v1alpha1.LabelCleanupAgentPodUID})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func testPoolCleansNode(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := newNamespace(t, cp, "pc-clean")
	createNode(t, cp, "pc-node-clean")
	startPoolController(t, cp, ns, 0)
	pool := createPool(t, cp, ns, testPool("clean", 1, 2, 2))
	agent := waitForAgents(t, cp, ns, "clean", 1)[0]
	if !slices.Contains(agent.Finalizers, v1alpha1.FinalizerAgentPodCleanup) {
		t.Fatalf("agent Pod %s has finalizers %v, want %s", agent.Name, agent.Finalizers, v1alpha1.FinalizerAgentPodCleanup)
	}
	running := bindToNode(t, cp, &agent, "pc-node-clean")

	// Deleted, its agent still running: nothing happens yet.
	if err := cp.Kube.CoreV1().Pods(ns).Delete(ctx, agent.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if l := listCleanupPods(t, cp, ns); len(l) != 0 {
		t.Fatalf("cleanup Pods while the agent container runs: %v", l)
	}
	if _, ok := getPod(t, cp, ns, agent.Name); !ok {
		t.Fatal("the agent Pod went while its container ran")
	}

	// kubelet stops it: a cleanup Pod runs on its node.
	stopAgent(t, cp, running)
	name := agent.Name + "-cleanup"
	var cleanup *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		var ok bool
		cleanup, ok = getPod(t, cp, ns, name)
		return ok, nil
	})
	if err != nil {
		t.Fatalf("no cleanup Pod %s; cleanup Pods: %v", name, listCleanupPods(t, cp, ns))
	}
	waitForEvent(t, cp, ns, "clean", poolcontroller.EventCleaningUp)
	if cleanup.Spec.NodeName != "pc-node-clean" {
		t.Errorf("cleanup Pod on node %q, want pc-node-clean", cleanup.Spec.NodeName)
	}
	if _, ok := cleanup.Labels[v1alpha1.LabelPoolName]; ok || cleanup.Labels[v1alpha1.LabelCleanupAgentPodUID] != string(agent.UID) {
		t.Errorf("cleanup Pod labels %v", cleanup.Labels)
	}
	if ref := metav1.GetControllerOf(cleanup); ref == nil || ref.UID != pool.UID {
		t.Errorf("cleanup Pod controller %+v, want the pool", ref)
	}
	c := cleanup.Spec.Containers[0]
	if c.Image != agent.Spec.Containers[0].Image || !slices.Contains(c.Args, "--cleanup-agent-pod-uid="+string(agent.UID)) ||
		cleanup.Spec.RestartPolicy != corev1.RestartPolicyOnFailure || c.SecurityContext == nil || !ptr.Deref(c.SecurityContext.Privileged, false) {
		t.Errorf("cleanup container %+v, restartPolicy %s", c, cleanup.Spec.RestartPolicy)
	}
	// The pool is still kept: a new agent replaces the deleted one; the
	// cleanup Pod is no agent.
	waitForPool(t, cp, ns, "clean", "one agent", func(p *v1alpha1.SandboxPool) bool { return p.Status.Agents == 1 })

	// The cleanup runs, then fails: kubelet would restart it (OnFailure);
	// the agent Pod stays until it succeeds.
	cleanup.Status.Phase = corev1.PodRunning
	if cleanup, err = cp.Kube.CoreV1().Pods(ns).UpdateStatus(ctx, cleanup, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got, ok := getPod(t, cp, ns, agent.Name); !ok || !slices.Contains(got.Finalizers, v1alpha1.FinalizerAgentPodCleanup) {
		t.Fatalf("the agent Pod lost its finalizer before the cleanup succeeded: %v", got)
	}

	cleanup.Status.Phase = corev1.PodSucceeded
	if _, err := cp.Kube.CoreV1().Pods(ns).UpdateStatus(ctx, cleanup, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForPodGone(t, cp, ns, agent.Name)
	waitForPodGone(t, cp, ns, name)
	waitForEvent(t, cp, ns, "clean", poolcontroller.EventCleanedUp)
	time.Sleep(300 * time.Millisecond)
	if l := listCleanupPods(t, cp, ns); len(l) != 0 {
		t.Errorf("cleanup Pods left: %v", l)
	}
}

func testPoolCleanupNotNeeded(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := newNamespace(t, cp, "pc-noclean")
	createNode(t, cp, "pc-node-gone")
	startPoolController(t, cp, ns, 0)
	createPool(t, cp, ns, testPool("noclean", 2, 2, 2))
	agents := waitForAgents(t, cp, ns, "noclean", 2)

	// Never got a node: the deletion goes through.
	if err := cp.Kube.CoreV1().Pods(ns).Delete(ctx, agents[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForPodGone(t, cp, ns, agents[0].Name)

	// Its Node is gone, its container said to run (no kubelet will say
	// otherwise): the deletion goes through too.
	bindToNode(t, cp, &agents[1], "pc-node-gone")
	if err := cp.Kube.CoreV1().Nodes().Delete(ctx, "pc-node-gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Kube.CoreV1().Pods(ns).Delete(ctx, agents[1].Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	waitForPodGone(t, cp, ns, agents[1].Name)
	waitForEvent(t, cp, ns, "noclean", poolcontroller.EventCleanupSkipped)
	if l := listCleanupPods(t, cp, ns); len(l) != 0 {
		t.Errorf("cleanup Pods made: %v", l)
	}
}

func testPoolCleanupAfterPool(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := newNamespace(t, cp, "pc-gone")
	createNode(t, cp, "pc-node-gone-pool")
	startPoolController(t, cp, ns, 0)
	createPool(t, cp, ns, testPool("gone", 1, 1, 2))
	agent := waitForAgents(t, cp, ns, "gone", 1)[0]
	running := bindToNode(t, cp, &agent, "pc-node-gone-pool")

	// The pool goes; the garbage collector (played here) deletes its agent.
	if err := cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Kube.CoreV1().Pods(ns).Delete(ctx, agent.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stopAgent(t, cp, running)
	name := agent.Name + "-cleanup"
	var cleanup *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, pollInterval, pollTimeout, true, func(context.Context) (bool, error) {
		var ok bool
		cleanup, ok = getPod(t, cp, ns, name)
		return ok, nil
	})
	if err != nil {
		t.Fatalf("no cleanup Pod %s after the pool went", name)
	}
	if len(cleanup.OwnerReferences) != 0 || cleanup.Spec.NodeName != "pc-node-gone-pool" {
		t.Errorf("cleanup Pod owners %+v node %q: want none (the pool is gone), pc-node-gone-pool", cleanup.OwnerReferences, cleanup.Spec.NodeName)
	}
	cleanup.Status.Phase = corev1.PodSucceeded
	if _, err := cp.Kube.CoreV1().Pods(ns).UpdateStatus(ctx, cleanup, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForPodGone(t, cp, ns, agent.Name)
	waitForPodGone(t, cp, ns, name)
}
