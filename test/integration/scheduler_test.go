package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/scheduler"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// schedEnv is a real kube-apiserver, a real containerd, real agents serving
// their API on loopback, and the scheduler.
type schedEnv struct {
	t      *testing.T
	cp     *framework.ControlPlane
	d      *containerdtest.Daemon
	ns     string // the tenant namespace of the Sandboxes
	sysNS  string // the system namespace of the agent Pods
	creds  *framework.AgentCredentials
	cancel context.CancelFunc // stops the scheduler
}

func newSchedEnv(t *testing.T) *schedEnv {
	containerdtest.Skip(t)
	e := &schedEnv{t: t, cp: framework.Start(t), d: containerdtest.Start(t)}
	e.ns = kubetest.CreateNamespace(t, e.cp.Kube, "sched")
	e.sysNS = e.cp.SystemNamespace(t)
	e.creds = e.cp.AgentCredentials(t)
	return e
}

func (e *schedEnv) createPool(name string, slots int32) {
	e.t.Helper()
	p := validPool(name)
	p.Spec.SlotsPerAgent = slots
	kubetest.CreatePool(e.t, e.cp.Sandbox, p)
}

// startAgent runs an agent in the test process over the shared containerd,
// in its own containerd namespace (which decides the images it has), and
// creates the agent Pod object a kubelet would have made Ready.
func (e *schedEnv) startAgent(name, pool, ctrNamespace string, slots int) {
	t := e.t
	t.Helper()
	parent := containerdtest.CgroupParent(t, name)
	rt := containerd.New(containerd.Config{Address: e.d.Address, Namespace: ctrNamespace, CgroupParent: parent,
		Agent: name, StateDir: t.TempDir(), InitBinary: containerdtest.SandboxInit(t), WarmPerImage: 1}, testr.New(t).WithName(name))
	a := agent.New(agent.Config{Info: api.AgentInfo{PodName: name, Pool: pool},
		Capacity: api.Resources{Slots: slots, CPUMillis: 4000, MemoryBytes: 4 << 30}}, rt, testr.New(t).WithName(name))
	ctx, cancel := context.WithCancel(context.Background())
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The agent API as cmd/agent serves it: mutual TLS only.
	tlsConfig := e.creds.ServerTLS(t, name)
	srv := &http.Server{Handler: a.Handler(), TLSConfig: tlsConfig}
	go srv.Serve(tls.NewListener(ln, tlsConfig))
	t.Cleanup(func() { srv.Close(); cancel(); rt.Close() })

	port := ln.Addr().(*net.TCPAddr).Port
	p, err := e.cp.Sandbox.SandboxV1alpha1().SandboxPools().Get(context.Background(), pool, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1alpha1.LabelPoolName: pool},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(p, v1alpha1.SchemeGroupVersion.WithKind("SandboxPool"))}},
		Spec: v1.PodSpec{Containers: []v1.Container{{Name: "agent", Image: "fast-sandbox/agent:test",
			Ports: []v1.ContainerPort{{Name: v1alpha1.AgentAPIPortName, ContainerPort: int32(port)}}}}},
	}
	pod, err = e.cp.Kube.CoreV1().Pods(e.sysNS).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = v1.PodStatus{Phase: v1.PodRunning, PodIP: "127.0.0.1",
		Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue}}}
	if _, err := e.cp.Kube.CoreV1().Pods(e.sysNS).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *schedEnv) startScheduler() {
	e.t.Helper()
	e.runScheduler(e.cp.Kube, e.cp.Sandbox)
}

// runScheduler runs the scheduler over the given clients until the test
// ends or e.cancel is called.
func (e *schedEnv) runScheduler(kube kubernetes.Interface, client versioned.Interface) {
	e.t.Helper()
	cfg, err := scheduler.LoadConfig("")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), testr.New(e.t).WithName("scheduler")))
	s, err := scheduler.New(ctx, kube, client, cfg, scheduler.Options{
		StatusPeriod: 200 * time.Millisecond, AgentLostTimeout: 2 * time.Second,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	e.cancel = func() { cancel(); <-done }
	e.t.Cleanup(e.cancel)
}

// sandbox creates a Sandbox of the test image in the test's namespace.
func (e *schedEnv) sandbox(t *testing.T, name, pool string, cmd ...string) *v1alpha1.Sandbox {
	t.Helper()
	s := kubetest.Sandbox(name, pool, containerdtest.TestImage, cmd...)
	s.Spec.Resources = kubetest.Resources("100m", "32Mi")
	return kubetest.CreateSandbox(t, e.cp.Sandbox, e.ns, s)
}

// waitFor waits until want holds of the Sandbox name of the test's namespace.
func (e *schedEnv) waitFor(t *testing.T, name string, want kubetest.Want[*v1alpha1.Sandbox]) *v1alpha1.Sandbox {
	t.Helper()
	return kubetest.WaitSandbox(t, e.cp.Sandbox, e.ns, name, schedPoll, want)
}

// schedPoll is how the scheduler tests wait for a Sandbox.
var schedPoll = kubetest.Poll{Interval: 20 * time.Millisecond, Timeout: 30 * time.Second}

// containersOf counts the containers of a sandbox UID in a containerd namespace.
func (e *schedEnv) containersOf(ctrNamespace, uid string) int {
	e.t.Helper()
	ctx := containerdtest.WithNamespace(ctrNamespace)
	cs, err := e.d.Client.Containers(ctx, fmt.Sprintf(`labels.%q==%q`, containerd.LabelUID, uid))
	if err != nil {
		e.t.Fatal(err)
	}
	return len(cs)
}

func TestSchedulerRunsSandboxes(t *testing.T) {
	e := newSchedEnv(t)
	e.createPool("pool", 2)
	e.startAgent("agent-a", "pool", containerdtest.Namespace, 2)
	e.startAgent("agent-b", "pool", containerdtest.Namespace, 2)
	e.startScheduler()
	ctx := context.Background()

	t.Run("a sandbox runs, succeeds and records every stage", func(t *testing.T) {
		e.sandbox(t, "hello", "pool", "sh", "-c", "echo hello; sleep 1")
		running := e.waitFor(t, "hello", kubetest.Phase(v1alpha1.SandboxRunning))
		st := running.Status
		if st.Agent == "" || st.ContainerID == "" || st.ScheduleTime == nil || st.AgentToldTime == nil || st.StartTime == nil {
			t.Errorf("running status lacks a stage: %+v", st)
		}
		if c := meta.FindStatusCondition(st.Conditions, v1alpha1.SandboxConditionScheduled); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("Scheduled condition: %+v", c)
		}
		if !hasString(running.Finalizers, v1alpha1.FinalizerAgentCleanup) {
			t.Errorf("finalizers %v lack %s", running.Finalizers, v1alpha1.FinalizerAgentCleanup)
		}
		done := e.waitFor(t, "hello", kubetest.Phase(v1alpha1.SandboxSucceeded))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 0 || done.Status.FinishTime == nil {
			t.Errorf("final status %+v", done.Status)
		}
	})

	t.Run("a failing command fails with its exit code", func(t *testing.T) {
		e.sandbox(t, "fails", "pool", "sh", "-c", "exit 3")
		done := e.waitFor(t, "fails", kubetest.Phase(v1alpha1.SandboxFailed))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 3 || done.Status.Reason != v1alpha1.ReasonError {
			t.Errorf("final status %+v", done.Status)
		}
	})

	t.Run("a missing image fails with ImageNotPresent", func(t *testing.T) {
		kubetest.CreateSandbox(t, e.cp.Sandbox, e.ns, kubetest.Sandbox("noimage", "pool", "docker.io/library/not-here:1"))
		done := e.waitFor(t, "noimage", kubetest.Phase(v1alpha1.SandboxFailed))
		if done.Status.Reason != v1alpha1.ReasonImageNotPresent {
			t.Errorf("reason %q message %q, want ImageNotPresent", done.Status.Reason, done.Status.Message)
		}
	})

	t.Run("a pool that does not exist is reported", func(t *testing.T) {
		e.sandbox(t, "orphan", "no-such-pool", "true")
		s := e.waitFor(t, "orphan", kubetest.Reason(v1alpha1.ReasonPoolNotFound))
		if c := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.SandboxConditionScheduled); c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "no-such-pool") {
			t.Errorf("Scheduled condition %+v", c)
		}
	})

	t.Run("full agents make a sandbox wait with a counted reason, a freed slot places it", func(t *testing.T) {
		for i := 0; i < 4; i++ {
			e.sandbox(t, fmt.Sprintf("long-%d", i), "pool", "sleep", "300")
		}
		for i := 0; i < 4; i++ {
			e.waitFor(t, fmt.Sprintf("long-%d", i), kubetest.Phase(v1alpha1.SandboxRunning))
		}
		e.sandbox(t, "waiting", "pool", "sleep", "300")
		s := e.waitFor(t, "waiting", kubetest.Reason(v1alpha1.ReasonUnschedulable))
		if want := "0/2 agents available: 2 no free slot"; s.Status.Message != want {
			t.Errorf("message %q, want %q", s.Status.Message, want)
		}
		// Delete a running sandbox: its container goes, the finalizer goes, the waiting one runs.
		victim, _ := e.cp.Sandbox.SandboxV1alpha1().Sandboxes(e.ns).Get(ctx, "long-0", metav1.GetOptions{})
		if err := e.cp.Sandbox.SandboxV1alpha1().Sandboxes(e.ns).Delete(ctx, "long-0", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.WaitSandboxGone(t, e.cp.Sandbox, e.ns, "long-0", schedPoll)
		if n := e.containersOf(containerdtest.Namespace, string(victim.UID)); n != 0 {
			t.Errorf("%d containers left for a deleted sandbox", n)
		}
		e.waitFor(t, "waiting", kubetest.Phase(v1alpha1.SandboxRunning))
	})
}

func TestSchedulerImageAffinity(t *testing.T) {
	e := newSchedEnv(t)
	e.createPool("pool", 4)
	// agent-empty's containerd namespace has no images; agent-warm's has the test image.
	e.startAgent("agent-empty", "pool", "empty", 4)
	e.startAgent("agent-warm", "pool", containerdtest.Namespace, 4)
	e.startScheduler()
	for i := 0; i < 3; i++ {
		e.sandbox(t, fmt.Sprintf("img-%d", i), "pool", "sleep", "60")
	}
	for i := 0; i < 3; i++ {
		s := e.waitFor(t, fmt.Sprintf("img-%d", i), kubetest.Phase(v1alpha1.SandboxRunning))
		if s.Status.Agent != "agent-warm" {
			t.Errorf("sandbox img-%d went to %s, want agent-warm, the agent whose node has the image", i, s.Status.Agent)
		}
	}
}

func TestSchedulerRestartAndAgentLoss(t *testing.T) {
	e := newSchedEnv(t)
	e.createPool("pool", 8)
	e.startAgent("agent-a", "pool", containerdtest.Namespace, 8)
	e.startScheduler()
	ctx := context.Background()

	// A burst, with the scheduler restarted in the middle of it.
	var uids []string
	for i := 0; i < 6; i++ {
		uids = append(uids, string(e.sandbox(t, fmt.Sprintf("burst-%d", i), "pool", "sleep", "300").UID))
		if i == 2 {
			e.cancel()
			e.startScheduler()
		}
	}
	for i := 0; i < 6; i++ {
		e.waitFor(t, fmt.Sprintf("burst-%d", i), kubetest.Phase(v1alpha1.SandboxRunning))
	}
	for i, uid := range uids {
		if n := e.containersOf(containerdtest.Namespace, uid); n != 1 {
			t.Errorf("burst-%d has %d containers, want exactly 1", i, n)
		}
	}

	// The agent Pod goes away: its sandboxes fail with AgentLost.
	if err := e.cp.Kube.CoreV1().Pods(e.sysNS).Delete(ctx, "agent-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		s := e.waitFor(t, fmt.Sprintf("burst-%d", i), kubetest.Phase(v1alpha1.SandboxFailed))
		if s.Status.Reason != v1alpha1.ReasonAgentLost {
			t.Errorf("burst-%d reason %q, want AgentLost", i, s.Status.Reason)
		}
	}
}

func hasString(ss []string, s string) bool {
	for _, v := range ss {
		if v == s {
			return true
		}
	}
	return false
}
