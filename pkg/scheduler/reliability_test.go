package scheduler

import (
	"context"
	"fmt"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

func running(s *v1alpha1.Sandbox) bool { return s.Status.Phase == v1alpha1.SandboxRunning }

func TestHappyPath(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	sbx := e.createSandbox("s1")
	got := e.wait("s1", "Running", 5*time.Second, running)
	if got.Status.Agent != "agent-a" || got.Status.AgentToldTime == nil || got.Status.StartTime == nil {
		t.Errorf("status: %+v", got.Status)
	}
	if n := a.createsOf(string(sbx.UID)); n != 1 {
		t.Errorf("created %d times, want once", n)
	}
}

// A sync that fails (connection reset, 500, lost answer) is retried with
// backoff until it succeeds, with no other event to prompt it.
func TestFailedSyncIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault fault
	}{
		{"connection reset", faultReset},
		{"server error", faultError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := e.addAgent("agent-a")
			e.start(testOptions())
			waitUntil(t, "the agent known", 5*time.Second, func() bool { return a.requestCount() > 0 })
			// Only syncs fail, for a while; status answers, so the agent is not lost.
			until := time.Now().Add(time.Second)
			a.setFaults(func(path string) fault {
				if path == api.PathSync && time.Now().Before(until) {
					return tc.fault
				}
				return faultNone
			})
			sbx := e.createSandbox("s1")
			e.wait("s1", "Running", 10*time.Second, running)
			if n := a.createsOf(string(sbx.UID)); n != 1 {
				t.Errorf("created %d times, want once", n)
			}
		})
	}
}

// A sync applied by the agent whose answer is lost is sent again (and
// answered) once the faults end, with no other event to prompt it, and the
// sandbox is created once.
func TestLostSyncAnswerIsResent(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	waitUntil(t, "the agent known", 5*time.Second, func() bool { return a.requestCount() > 0 })
	until := time.Now().Add(time.Second)
	var (
		mu    sync.Mutex
		after int
	)
	a.setFaults(func(path string) fault {
		if path != api.PathSync {
			return faultNone
		}
		if time.Now().Before(until) {
			return faultDrop
		}
		mu.Lock()
		after++
		mu.Unlock()
		return faultNone
	})
	sbx := e.createSandbox("s1")
	e.wait("s1", "Running", 10*time.Second, running)
	waitUntil(t, "a sync answered after the lost answers", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return after > 0
	})
	if n := a.createsOf(string(sbx.UID)); n != 1 {
		t.Errorf("created %d times, want once", n)
	}
}

// An agent Pod deleted while a sandbox is being bound to it must not crash
// the scheduler (the in-flight map of the agent went away under Bind), and
// the sandbox must end up failed with AgentLost, or placed again elsewhere
// under AutoRecreate.
func TestAgentRemovedMidBind(t *testing.T) {
	for _, policy := range []v1alpha1.SandboxFailurePolicy{v1alpha1.FailurePolicyFail, v1alpha1.FailurePolicyAutoRecreate} {
		t.Run(string(policy), func(t *testing.T) {
			e := newEnv(t)
			a := e.addAgent("agent-a")
			e.start(testOptions())
			waitUntil(t, "agent-a polled", 5*time.Second, func() bool { return a.requestCount() > 1 })
			var (
				once sync.Once
				bmu  sync.Mutex
				b    *testAgent
			)
			e.client.PrependReactor("update", "sandboxes", func(action k8stesting.Action) (bool, runtime.Object, error) {
				u := action.(k8stesting.UpdateAction)
				if u.GetSubresource() != "status" || u.GetObject().(*v1alpha1.Sandbox).Status.Phase != v1alpha1.SandboxScheduled {
					return false, nil, nil
				}
				once.Do(func() {
					// The placement on agent-a (the only agent so far) is
					// being written: another agent appears, and agent-a's Pod goes.
					if policy == v1alpha1.FailurePolicyAutoRecreate {
						nb := e.addAgent("agent-b")
						bmu.Lock()
						b = nb
						bmu.Unlock()
					}
					e.deleteAgentPod("agent-a")
					time.Sleep(300 * time.Millisecond)
				})
				return false, nil, nil
			})
			sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) { s.Spec.FailurePolicy = policy })
			switch policy {
			case v1alpha1.FailurePolicyFail:
				got := e.wait("s1", "Failed or Running", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
					return s.Status.Phase == v1alpha1.SandboxFailed || (s.Status.Phase == v1alpha1.SandboxRunning && s.Status.Agent != "agent-a")
				})
				if got.Status.Phase == v1alpha1.SandboxFailed && got.Status.Reason != v1alpha1.ReasonAgentLost {
					t.Errorf("reason %s, want AgentLost: %s", got.Status.Reason, describe(got))
				}
			default:
				got := e.wait("s1", "Running on agent-b", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
					return running(s) && s.Status.Agent == "agent-b"
				})
				bmu.Lock()
				defer bmu.Unlock()
				if n := b.createsOf(string(sbx.UID)); n != 1 || got.Status.Restarts != 1 {
					t.Errorf("created %d times on agent-b (want once), restarts %d (want 1)", n, got.Status.Restarts)
				}
			}
		})
	}
}

// Agent Pods deleted while the scheduler was down: their sandboxes are lost
// as soon as the next scheduler has learned the cluster.
func TestSchedulerRestartAfterAgentDeleted(t *testing.T) {
	e := newEnv(t)
	e.addAgent("agent-a")
	stop := e.start(testOptions())
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	stop()
	e.deleteAgentPod("agent-a")
	e.start(testOptions())
	got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonAgentLost {
		t.Errorf("reason %s, want AgentLost", got.Status.Reason)
	}
}

// An agent that never answers since the scheduler found it is lost too.
func TestAgentUnreachableSinceDiscovery(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	stop := e.start(testOptions())
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	stop()
	a.setFaults(func(string) fault { return faultReset })
	e.start(testOptions())
	got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonAgentLost || !strings.Contains(got.Status.Message, "stopped answering") {
		t.Errorf("got %s", describe(got))
	}
}

// An agent that answers 503 while it starts is alive, not silent: its
// sandboxes are not failed however long it takes.
func TestStartingAgentIsNotLost(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	sbx := e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	a.failFor(faultUnavailable, 2*time.Second) // four times the lost timeout
	time.Sleep(2500 * time.Millisecond)
	if got := e.get("s1"); !running(got) {
		t.Fatalf("sandbox of a starting agent: %s", describe(got))
	}
	if n := a.createsOf(string(sbx.UID)); n != 1 {
		t.Errorf("created %d times, want once", n)
	}
}

// A healthy agent that was silent long enough to be declared lost, and then
// answers again: its lost sandboxes are stopped (kept, never run again), and
// it takes new sandboxes with no 409 from a revision that started over.
func TestFalseAgentLost(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	s1 := e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	a.failFor(faultReset, 1500*time.Millisecond)
	got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonAgentLost {
		t.Fatalf("got %s", describe(got))
	}
	waitUntil(t, "the lost sandbox stopped on the agent", 5*time.Second, func() bool {
		st, ok := a.state(string(s1.UID))
		return ok && st.State == api.StateExited
	})
	s2 := e.createSandbox("s2")
	e.wait("s2", "Running", 5*time.Second, running)
	if n := a.createsOf(string(s1.UID)); n != 1 {
		t.Errorf("s1 created %d times, want once", n)
	}
	if n := a.createsOf(string(s2.UID)); n != 1 {
		t.Errorf("s2 created %d times, want once", n)
	}
}

// An agent forgotten (its Pod deleted) gets no more requests: its syncer and
// poller goroutines end, so none is left to send a stray sync.
func TestRemovedAgentLoopsEnd(t *testing.T) {
	e := newEnv(t)
	e.start(testOptions())
	time.Sleep(300 * time.Millisecond) // the scheduler learned an empty cluster
	base := schedulerGoroutines()
	a := e.addAgent("agent-a")
	waitUntil(t, "agent-a polled", 5*time.Second, func() bool { return a.requestCount() > 2 })
	during := schedulerGoroutines()
	e.deleteAgentPod("agent-a")
	var last int
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 2*time.Second, true,
		func(context.Context) (bool, error) { last = schedulerGoroutines(); return last <= base, nil })
	if err != nil {
		t.Errorf("goroutines in pkg/scheduler: %d before agent-a, %d with it, %d two seconds after its removal", base, during, last)
	}
	before := a.requestCount()
	time.Sleep(500 * time.Millisecond) // ten status periods
	if after := a.requestCount(); after != before {
		t.Errorf("a removed agent got %d more requests", after-before)
	}
}

// schedulerGoroutines counts the goroutines with a frame in this package.
func schedulerGoroutines() int {
	buf := make([]byte, 8<<20)
	n := goruntime.Stack(buf, true)
	c := 0
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "fast-sandbox/pkg/scheduler.") {
			c++
		}
	}
	return c
}

// An agent restarted (it forgot what it applied) or one that applied a
// newer sync than this scheduler's (another scheduler, a skewed clock) is
// brought back in step: the scheduler moves past its epoch or revision.
// (The restart case guards behaviour the first release already had; the
// newer revision and epoch cases were refused with 409 forever.)
func TestAgentOrderingConflicts(t *testing.T) {
	for _, tc := range []struct {
		name string
		skew func(a *testAgent)
	}{
		{"agent restarted", func(a *testAgent) { a.restart() }},
		{"newer revision applied", func(a *testAgent) { a.mu.Lock(); a.revision += 1_000_000; a.mu.Unlock() }},
		{"newer epoch applied", func(a *testAgent) { a.mu.Lock(); a.epoch += int64(time.Hour); a.mu.Unlock() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := e.addAgent("agent-a")
			e.start(testOptions())
			e.createSandbox("s1")
			e.wait("s1", "Running", 5*time.Second, running)
			tc.skew(a)
			s2 := e.createSandbox("s2")
			e.wait("s2", "Running", 5*time.Second, running)
			if n := a.createsOf(string(s2.UID)); n != 1 {
				t.Errorf("created %d times, want once", n)
			}
		})
	}
}

// A scheduler whose clock is behind the agents' applied epoch (taken by an
// earlier leader with a faster clock) takes an epoch above it: the agents
// accept its syncs at once.
func TestEpochAboveAgentsAfterFailover(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	fast := testOptions()
	fast.Clock = func() time.Time { return time.Now().Add(time.Hour) }
	stop := e.start(fast)
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	stop()
	a.mu.Lock()
	applied := a.epoch
	a.mu.Unlock()
	e.start(testOptions()) // a clock an hour slower
	s2 := e.createSandbox("s2")
	e.wait("s2", "Running", 5*time.Second, running)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.epoch <= applied {
		t.Errorf("epoch %d is not above the earlier leader's %d", a.epoch, applied)
	}
	if a.creates[string(s2.UID)] != 1 {
		t.Errorf("created %d times, want once", a.creates[string(s2.UID)])
	}
}

// A finished sandbox leaves the agent's desired set: its UID goes in
// Finished (the agent keeps its logs), not its spec.
func TestFinishedSandboxesLeaveTheDesiredSet(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	s1 := e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	a.exit(string(s1.UID), 0)
	e.wait("s1", "Succeeded", 5*time.Second, phaseIs(v1alpha1.SandboxSucceeded))
	e.createSandbox("s2")
	e.wait("s2", "Running", 5*time.Second, running)
	waitUntil(t, "a sync with s1 finished", 5*time.Second, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.lastSync == nil {
			return false
		}
		for _, spec := range a.lastSync.Sandboxes {
			if spec.UID == string(s1.UID) {
				return false
			}
		}
		return slices.Contains(a.lastSync.Finished, string(s1.UID))
	})
	if _, ok := a.state(string(s1.UID)); !ok {
		t.Error("the agent removed a finished sandbox (and its logs) that was not deleted")
	}
}

// A sandbox too large to send fails alone with InvalidSpec; the agent's
// other sandboxes run. Values are sent without HTML escaping: a value of
// '<' that fits as is (but not escaped sixfold) runs.
func TestOversizedSandboxFailsAlone(t *testing.T) {
	e := newEnv(t)
	e.addAgent("agent-a")
	e.start(testOptions())
	big := strings.Repeat("x", 30000)
	e.createSandbox("big", func(s *v1alpha1.Sandbox) {
		s.Spec.Env = []v1alpha1.EnvVar{{Name: "A", Value: big}, {Name: "B", Value: big}, {Name: "C", Value: big}}
	})
	e.createSandbox("html", func(s *v1alpha1.Sandbox) {
		s.Spec.Env = []v1alpha1.EnvVar{{Name: "A", Value: strings.Repeat("<", 20000)}}
	})
	e.createSandbox("small")
	got := e.wait("big", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonInvalidSpec || got.Status.Agent != "" {
		t.Errorf("big: %s", describe(got))
	}
	e.wait("html", "Running", 5*time.Second, running)
	e.wait("small", "Running", 5*time.Second, running)
}

// Past its deadline a sandbox fails with DeadlineExceeded and its agent
// stops it but keeps it (and its logs).
func TestDeadlineStopsTheSandbox(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	e.start(testOptions())
	s1 := e.createSandbox("s1", func(s *v1alpha1.Sandbox) { s.Spec.ActiveDeadlineSeconds = ptr.To[int64](1) })
	got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonDeadlineExceeded {
		t.Fatalf("got %s", describe(got))
	}
	waitUntil(t, "the agent stopped it", 5*time.Second, func() bool {
		st, ok := a.state(string(s1.UID))
		return ok && st.State == api.StateExited
	})
}

// AutoRecreate: a sandbox whose agent Pod is deleted is placed again on
// another agent, in a new container, with restarts counted. Fail (the
// default) fails it with AgentLost.
func TestAgentLostFailurePolicy(t *testing.T) {
	for _, policy := range []v1alpha1.SandboxFailurePolicy{"", v1alpha1.FailurePolicyAutoRecreate} {
		t.Run(string(policy)+"default", func(t *testing.T) {
			e := newEnv(t)
			a := e.addAgent("agent-a")
			e.start(testOptions())
			sbx := e.createSandbox("s1", func(s *v1alpha1.Sandbox) { s.Spec.FailurePolicy = policy })
			e.wait("s1", "Running", 5*time.Second, running)
			b := e.addAgent("agent-b")
			waitUntil(t, "agent-b polled", 5*time.Second, func() bool { return b.requestCount() > 1 })
			e.deleteAgentPod("agent-a")
			if policy == "" {
				got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
				if got.Status.Reason != v1alpha1.ReasonAgentLost {
					t.Errorf("got %s", describe(got))
				}
				if b.createsOf(string(sbx.UID)) != 0 {
					t.Error("a sandbox with failurePolicy Fail ran again")
				}
				return
			}
			got := e.wait("s1", "Running on agent-b", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
				return running(s) && s.Status.Agent == "agent-b"
			})
			if got.Status.Restarts != 1 {
				t.Errorf("restarts %d, want 1", got.Status.Restarts)
			}
			if a.createsOf(string(sbx.UID)) != 1 || b.createsOf(string(sbx.UID)) != 1 {
				t.Errorf("creations: agent-a %d, agent-b %d; want 1 and 1", a.createsOf(string(sbx.UID)), b.createsOf(string(sbx.UID)))
			}
		})
	}
}

// A deleted sandbox whose agent Pod is going keeps its finalizer until the
// agent Pod object is gone (the pool controller holds it until the node is
// cleaned of the agent's containers), then loses it.
func TestDeletedSandboxWaitsForAgentCleanup(t *testing.T) {
	e := newEnv(t)
	e.addAgent("agent-a")
	e.start(testOptions())
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	ctx := context.Background()
	pod, err := e.kube.CoreV1().Pods(testSysNS).Get(ctx, "agent-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	pod.DeletionTimestamp = &now // terminating, held by the pool controller's finalizer
	if _, err := e.kube.CoreV1().Pods(testSysNS).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if err := e.client.SandboxV1alpha1().Sandboxes(testNS).Delete(ctx, "s1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // five sweeps
	if got := e.get("s1"); got.DeletionTimestamp == nil || !hasFinalizer(got) {
		t.Fatalf("the sandbox lost its finalizer while its agent's node was not cleaned: %+v", got.ObjectMeta)
	}
	e.deleteAgentPod("agent-a")
	waitUntil(t, "the sandbox gone", 5*time.Second, func() bool {
		_, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Get(ctx, "s1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// Two schedulers with leader election, the first with a clock an hour
// ahead: only the leader syncs, and when it steps down the standby (whose
// clock is behind the epoch the agents applied) takes over at once.
func TestLeaderFailoverWithSkewedClocks(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	fast := testOptions()
	fast.Clock = func() time.Time { return time.Now().Add(time.Hour) }
	stopFirst := e.startLeader("first", fast)
	e.createSandbox("s1")
	e.wait("s1", "Running", 10*time.Second, running)
	e.startLeader("second", testOptions())
	time.Sleep(300 * time.Millisecond) // the standby waits for the lease
	stopFirst()                        // releases the lease
	s2 := e.createSandbox("s2")
	e.wait("s2", "Running", 15*time.Second, running)
	if n := a.createsOf(string(s2.UID)); n != 1 {
		t.Errorf("s2 created %d times, want once", n)
	}
}

// A storm of agent restarts and stale syncs during a burst: every sandbox
// ends Running, created exactly once.
func TestConflictStorm(t *testing.T) {
	e := newEnv(t)
	var agents []*testAgent
	for _, name := range []string{"agent-a", "agent-b", "agent-c"} {
		a := e.addAgent(name)
		a.slots = 16
		agents = append(agents, a)
	}
	e.start(testOptions())
	done := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(30 * time.Millisecond):
			}
			a := agents[i%len(agents)]
			if i%2 == 0 {
				a.restart()
			} else {
				a.mu.Lock()
				a.revision += 1000 // as if a newer sync had been applied
				a.mu.Unlock()
			}
		}
	}()
	var uids []string
	for i := 0; i < 30; i++ {
		uids = append(uids, string(e.createSandbox(fmt.Sprintf("s%d", i)).UID))
	}
	for i := range uids {
		e.wait(fmt.Sprintf("s%d", i), "Running", 15*time.Second, running)
	}
	close(done)
	for i, uid := range uids {
		total := 0
		for _, a := range agents {
			total += a.createsOf(uid)
		}
		if total != 1 {
			t.Errorf("s%d created %d times, want once", i, total)
		}
	}
}

// An agent that stops answering (a crash loop, a partition) on a node that
// is Ready keeps its sandboxes: they are containers of the node, not of the
// agent process. Nothing new is placed on it. Once its node is not Ready
// either, it is lost.
func TestSilentAgentOnReadyNodeKeepsItsSandboxes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Status: v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}}}}
	if _, err := e.kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a := e.addAgent("agent-a")
	e.start(testOptions())
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)
	a.setFaults(func(string) fault { return faultReset })
	time.Sleep(1500 * time.Millisecond) // three times the lost timeout
	if got := e.get("s1"); !running(got) {
		t.Fatalf("a sandbox of a silent agent on a Ready node: %s", describe(got))
	}
	e.createSandbox("s2")
	time.Sleep(300 * time.Millisecond)
	if got := e.get("s2"); got.Status.Agent != "" {
		t.Errorf("a sandbox was placed on a silent agent: %s", describe(got))
	}
	node.Status.Conditions[0].Status = v1.ConditionUnknown
	if _, err := e.kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := e.wait("s1", "Failed", 5*time.Second, phaseIs(v1alpha1.SandboxFailed))
	if got.Status.Reason != v1alpha1.ReasonAgentLost {
		t.Errorf("got %s", describe(got))
	}
}
