package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// Tenancy: who counts as an agent, who may use a pool, and what a pool lets
// its sandboxes be. Every test runs the scheduler over mutual TLS with test
// agents that check the scheduler's certificate, as the real agent does.

// addPod creates a Ready Pod labelled as an agent of the test pool, pointing
// at a's port; mutate shapes it.
func (e *env) addPod(name string, a *testAgent, mutate func(*v1.Pod)) {
	e.t.Helper()
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testSysNS, UID: k8stypes.UID("uid-" + name),
			Labels:          map[string]string{v1alpha1.LabelPoolName: testPool},
			OwnerReferences: []metav1.OwnerReference{testPoolRef()}},
		Spec: v1.PodSpec{NodeName: "node-1", Containers: []v1.Container{{Name: "agent",
			Ports: []v1.ContainerPort{{Name: v1alpha1.AgentAPIPortName, ContainerPort: a.port()}}}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: "127.0.0.1",
			Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue}}},
	}
	mutate(pod)
	if _, err := e.kube.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// A Pod that merely carries the pool label is no agent: not in the system
// namespace, or not controlled by the pool, it is never called, never sent
// a sandbox; the credentials never leave the scheduler for it.
func TestOnlyPoolControlledPodsAreAgents(t *testing.T) {
	cases := map[string]func(*v1.Pod){
		"in a tenant namespace": func(p *v1.Pod) { p.Namespace = testNS },
		"not controlled by the pool": func(p *v1.Pod) {
			p.OwnerReferences = nil
		},
		"controlled by another pool": func(p *v1.Pod) {
			p.OwnerReferences[0].Name = "other"
		},
		"owned but not as controller": func(p *v1.Pod) {
			p.OwnerReferences[0].Controller = nil
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			fake := newTestAgent(t, "impostor")
			e.addPod("impostor", fake, mutate)
			e.start(testOptions())
			e.createSandbox("s1")
			e.wait("s1", "unschedulable for want of agents", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
				return s.Status.Phase != v1alpha1.SandboxScheduled && strings.Contains(s.Status.Message, "0/0 agents")
			})
			time.Sleep(300 * time.Millisecond) // several status periods
			if n := fake.requestCount(); n != 0 {
				t.Errorf("the impostor got %d requests", n)
			}
			if s := e.get("s1"); s.Status.Agent != "" {
				t.Errorf("bound to %s", s.Status.Agent)
			}
		})
	}
}

// A server at an agent Pod's address whose certificate names another Pod
// (e.g. a process squatting the agent's port with a certificate it stole
// from elsewhere) gets no request: the handshake fails before any is sent.
func TestAgentMustPresentItsOwnCertificate(t *testing.T) {
	e := newEnv(t)
	squatter := newTestAgent(t, "agent-b") // its certificate names agent-b
	e.addPod("agent-a", squatter, func(*v1.Pod) {})
	e.start(testOptions())
	e.createSandbox("s1")
	time.Sleep(500 * time.Millisecond)
	if n := squatter.requestCount(); n != 0 {
		t.Errorf("a server with another agent's certificate got %d requests", n)
	}
	if s := e.get("s1"); s.Status.Phase == v1alpha1.SandboxRunning {
		t.Errorf("sandbox Running on an agent that never answered: %+v", s.Status)
	}

	// The right agent, once there, is used.
	real := e.addAgent("agent-c")
	e.wait("s1", "Running", 5*time.Second, running)
	if real.createsOf("sbx-s1") != 1 {
		t.Errorf("created %d times on the real agent", real.createsOf("sbx-s1"))
	}
}

// A Sandbox in a namespace the pool's namespaceSelector does not select
// stays Pending with NamespaceNotAllowed, and is placed once the namespace
// is labelled.
func TestNamespaceSelector(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ns, err := e.kube.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.updatePool(func(p *v1alpha1.SandboxPool) {
		p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"sandboxes": "allowed"}}
	})
	a := e.addAgent("agent-a")
	e.start(testOptions())
	e.createSandbox("s1")
	s := e.wait("s1", "refused", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
		return s.Status.Reason == v1alpha1.ReasonNamespaceNotAllowed
	})
	if s.Status.Phase != v1alpha1.SandboxPending || !strings.Contains(s.Status.Message, "namespaceSelector") {
		t.Errorf("status %+v", s.Status)
	}
	if n := a.createsOf("sbx-s1"); n != 0 {
		t.Errorf("created %d times", n)
	}

	ns.Labels = map[string]string{"sandboxes": "allowed"}
	if _, err := e.kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.wait("s1", "Running once the namespace is selected", 5*time.Second, running)
}

// A pool's allowedImages and allowedRuntimeHandlers fail what they do not
// admit, with the reason, before any agent hears of it.
func TestPoolAdmitsImagesAndHandlers(t *testing.T) {
	e := newEnv(t)
	e.updatePool(func(p *v1alpha1.SandboxPool) {
		p.Spec.AllowedImages = []string{"docker.io/library/busybox:latest", "registry.example.com/sandboxes/*"}
		p.Spec.AllowedRuntimeHandlers = []string{"runsc"}
		p.Spec.RuntimeHandler = "runsc"
	})
	a := e.addAgent("agent-a")
	e.start(testOptions())

	e.createSandbox("ok-exact") // busybox, normalized
	e.createSandbox("ok-prefix", func(s *v1alpha1.Sandbox) { s.Spec.Image = "registry.example.com/sandboxes/python:3.12" })
	e.createSandbox("bad-image", func(s *v1alpha1.Sandbox) { s.Spec.Image = "registry.k8s.io/kube-apiserver:v1.37.2" })
	e.createSandbox("bad-prefix", func(s *v1alpha1.Sandbox) { s.Spec.Image = "registry.example.com/sandboxes-evil/x" })
	e.createSandbox("bad-handler", func(s *v1alpha1.Sandbox) { s.Spec.RuntimeHandler = "runc" })

	e.wait("ok-exact", "Running", 5*time.Second, running)
	e.wait("ok-prefix", "Running", 5*time.Second, running)
	for name, reason := range map[string]string{
		"bad-image": v1alpha1.ReasonImageNotAllowed, "bad-prefix": v1alpha1.ReasonImageNotAllowed,
		"bad-handler": v1alpha1.ReasonRuntimeHandlerNotAllowed,
	} {
		s := e.wait(name, "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
		if s.Status.Reason != reason || s.Status.Agent != "" {
			t.Errorf("%s: reason %q agent %q (%s), want %s and no agent", name, s.Status.Reason, s.Status.Agent, s.Status.Message, reason)
		}
		if n := a.createsOf("sbx-" + name); n != 0 {
			t.Errorf("%s created %d times", name, n)
		}
	}
}

// A sandbox that names no limits gets the pool's defaults (and a pids limit
// in any case); they are what it takes from its agent's capacity.
func TestPoolDefaultLimits(t *testing.T) {
	e := newEnv(t)
	e.updatePool(func(p *v1alpha1.SandboxPool) {
		p.Spec.SandboxDefaults.Resources = v1alpha1.SandboxResources{
			CPU: ptr.To(resource.MustParse("500m")), Memory: ptr.To(resource.MustParse("256Mi")),
			EphemeralStorage: ptr.To(resource.MustParse("1Gi")),
		}
	})
	a := e.addAgent("agent-a")
	a.mu.Lock()
	a.cpuMillis = 1000 // room for two sandboxes of 500m
	a.mu.Unlock()
	e.start(testOptions())
	e.createSandbox("d1")
	e.createSandbox("own", func(s *v1alpha1.Sandbox) {
		s.Spec.Resources = v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("250m")), Pids: ptr.To[int64](64)}
	})
	e.wait("d1", "Running", 5*time.Second, running)
	e.wait("own", "Running", 5*time.Second, running)
	a.mu.Lock()
	specs := map[string][4]int64{}
	for _, sp := range a.lastSync.Sandboxes {
		specs[sp.Name] = [4]int64{sp.CPUMillis, sp.MemoryBytes, sp.PidsLimit, sp.EphemeralStorageBytes}
	}
	a.mu.Unlock()
	if got, want := specs["d1"], [4]int64{500, 256 << 20, v1alpha1.DefaultSandboxPidsLimit, 1 << 30}; got != want {
		t.Errorf("d1 sent with cpu, memory, pids, storage %v, want the pool's defaults %v", got, want)
	}
	if got, want := specs["own"], [4]int64{250, 256 << 20, 64, 1 << 30}; got != want {
		t.Errorf("own sent with %v, want its own cpu and pids, the pool's memory and storage %v", got, want)
	}
	// 500m + 250m taken of 1000m: one more default sandbox does not fit.
	e.createSandbox("d2")
	s := e.wait("d2", "unschedulable", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
		return s.Status.Reason == v1alpha1.ReasonUnschedulable
	})
	if !strings.Contains(s.Status.Message, "cpu") {
		t.Errorf("message %q does not name cpu", s.Status.Message)
	}
}

func (e *env) updatePool(mutate func(*v1alpha1.SandboxPool)) {
	e.t.Helper()
	ctx := context.Background()
	pool, err := e.client.SandboxV1alpha1().SandboxPools().Get(ctx, testPool, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	mutate(pool)
	if _, err := e.client.SandboxV1alpha1().SandboxPools().Update(ctx, pool, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}
