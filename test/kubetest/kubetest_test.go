package kubetest

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	sbxfake "github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

// fatalRecorder is a testing.TB whose Fatal stops the helper's goroutine
// as a test's would, and records the message instead of failing the test.
type fatalRecorder struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.msg = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *fatalRecorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

// fatalOf runs f with a fatalRecorder and returns what it failed with, ""
// if it returned. A panic in f fails the test.
func fatalOf(t *testing.T, f func(tb testing.TB)) string {
	t.Helper()
	r := &fatalRecorder{TB: t}
	done := make(chan any)
	go func() {
		defer func() { done <- recover() }()
		f(r)
	}()
	if p := <-done; p != nil {
		t.Fatalf("the helper panicked: %v", p)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msg
}

func wantAll(t *testing.T, msg string, parts ...string) {
	t.Helper()
	if msg == "" {
		t.Fatalf("the helper did not fail the test; want a message with %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("message %q does not contain %q", msg, p)
		}
	}
}

// fakeWith is a fake clientset holding sandboxes. (Seeding its tracker
// would store them under the resource "sandboxs", which it guesses from the
// kind.)
func fakeWith(t *testing.T, sandboxes ...*v1alpha1.Sandbox) *sbxfake.Clientset {
	t.Helper()
	c := sbxfake.NewSimpleClientset()
	for _, s := range sandboxes {
		if _, err := c.SandboxV1alpha1().Sandboxes(s.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

var short = Poll{Interval: 5 * time.Millisecond, Timeout: 100 * time.Millisecond}

func TestWaitSandboxMissing(t *testing.T) {
	c := sbxfake.NewSimpleClientset()
	msg := fatalOf(t, func(tb testing.TB) {
		WaitSandbox(tb, c, "ns", "ghost", short, Phase(v1alpha1.SandboxRunning))
	})
	wantAll(t, msg, "Sandbox ns/ghost", "phase Running", "never seen", "not found")
}

func TestWaitSandboxWrongPhase(t *testing.T) {
	s := Sandbox("waiting", "pool", "busybox", "true")
	s.Namespace = "ns"
	s.Finalizers = []string{v1alpha1.FinalizerAgentCleanup}
	s.Status = v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxPending, Reason: v1alpha1.ReasonUnschedulable,
		Message: "0/2 agents available", Conditions: []metav1.Condition{{Type: v1alpha1.SandboxConditionScheduled,
			Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonUnschedulable, Message: "no free slot"}}}
	c := fakeWith(t, s)
	msg := fatalOf(t, func(tb testing.TB) {
		WaitSandbox(tb, c, "ns", "waiting", short, Phase(v1alpha1.SandboxRunning))
	})
	wantAll(t, msg, "never had phase Running", `phase "Pending"`, `reason "Unschedulable"`, `message "0/2 agents available"`,
		"Scheduled=False (Unschedulable: no free slot)", v1alpha1.FinalizerAgentCleanup)
}

func TestWaitSandboxReadFailsAfterSeen(t *testing.T) {
	s := Sandbox("flaky", "pool", "busybox")
	s.Namespace = "ns"
	s.Status.Phase = v1alpha1.SandboxScheduled
	c := fakeWith(t, s)
	gets := 0
	c.PrependReactor("get", "sandboxes", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		gets++
		if gets > 1 {
			return true, nil, apierrors.NewInternalError(errors.New("etcd is away"))
		}
		return false, nil, nil
	})
	msg := fatalOf(t, func(tb testing.TB) {
		WaitSandbox(tb, c, "ns", "flaky", short, Finished())
	})
	wantAll(t, msg, `last seen phase "Scheduled"`, "then reading it failed", "etcd is away")
}

func TestWaitSandboxReached(t *testing.T) {
	s := Sandbox("hello", "pool", "busybox")
	s.Namespace = "ns"
	c := fakeWith(t, s)
	go func() {
		time.Sleep(20 * time.Millisecond) // the helper polls meanwhile
		done := s.DeepCopy()
		done.Status.Phase, done.Status.ExitCode = v1alpha1.SandboxSucceeded, ptr.To[int32](0)
		_, _ = c.SandboxV1alpha1().Sandboxes("ns").UpdateStatus(context.Background(), done, metav1.UpdateOptions{})
	}()
	got := WaitSandbox(t, c, "ns", "hello", Poll{Interval: 5 * time.Millisecond, Timeout: 5 * time.Second}, Finished())
	if got.Status.Phase != v1alpha1.SandboxSucceeded {
		t.Errorf("returned %s", DescribeSandbox(got))
	}
}

func TestWaitSandboxGone(t *testing.T) {
	WaitSandboxGone(t, sbxfake.NewSimpleClientset(), "ns", "never-was", short)

	s := Sandbox("stuck", "pool", "busybox")
	s.Namespace, s.Finalizers = "ns", []string{v1alpha1.FinalizerAgentCleanup}
	c := fakeWith(t, s)
	msg := fatalOf(t, func(tb testing.TB) { WaitSandboxGone(tb, c, "ns", "stuck", short) })
	wantAll(t, msg, "Sandbox ns/stuck still there", v1alpha1.FinalizerAgentCleanup)
}

func TestWaitPool(t *testing.T) {
	p := Pool("py", 2, 2, 4, "agent:dev", Resources("1", "1Gi"))
	p.Status = v1alpha1.SandboxPoolStatus{Agents: 2, ReadyAgents: 1}
	c := sbxfake.NewSimpleClientset(p)
	msg := fatalOf(t, func(tb testing.TB) {
		WaitPool(tb, c, "py", short, Where("2 ready agents", func(p *v1alpha1.SandboxPool) bool { return p.Status.ReadyAgents == 2 }))
	})
	wantAll(t, msg, "SandboxPool py never had 2 ready agents", "agents 2 ready 1", "no conditions")

	msg = fatalOf(t, func(tb testing.TB) {
		WaitPool(tb, sbxfake.NewSimpleClientset(), "gone", short, Where("anything", func(*v1alpha1.SandboxPool) bool { return true }))
	})
	wantAll(t, msg, "never seen", "not found")
}

func TestWaitPod(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "sys", Finalizers: []string{"x/cleanup"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "agent", RestartCount: 3,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}}}
	kube := kubefake.NewClientset(pod)
	msg := fatalOf(t, func(tb testing.TB) { WaitPod(tb, kube, "sys", "agent", short, PodReady()) })
	wantAll(t, msg, "Pod sys/agent never had condition Ready", "Ready=False", "restarts 3", "CrashLoopBackOff")

	msg = fatalOf(t, func(tb testing.TB) { WaitPodGone(tb, kube, "sys", "agent", short) })
	wantAll(t, msg, "Pod sys/agent still there", "x/cleanup")
	WaitPodGone(t, kube, "sys", "other", short)
}

func TestUntilKeepsTheLastReason(t *testing.T) {
	n := 0
	err := short.Until(context.Background(), func(context.Context) error {
		n++
		return fmt.Errorf("%d agents, want 3", n)
	})
	if err == nil || !strings.Contains(err.Error(), "agents, want 3") || !strings.Contains(err.Error(), "100ms") {
		t.Errorf("Until: %v", err)
	}
	if n < 2 {
		t.Errorf("the condition ran %d times, want it polled", n)
	}
	if err := short.Until(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Errorf("Until of a met condition: %v", err)
	}
	msg := fatalOf(t, func(tb testing.TB) {
		Eventually(tb, short, "the pool's agents", func(context.Context) error { return errors.New("1 agent") })
	})
	wantAll(t, msg, "the pool's agents", "1 agent")
}

func TestConsistently(t *testing.T) {
	calls := 0
	Consistently(t, Poll{Interval: 10 * time.Millisecond, Timeout: 50 * time.Millisecond}, "nothing", func(context.Context) error {
		calls++
		return nil
	})
	if calls < 3 {
		t.Errorf("the condition ran %d times over the window", calls)
	}
	start := time.Now()
	msg := fatalOf(t, func(tb testing.TB) {
		calls := 0
		Consistently(tb, Poll{Interval: 10 * time.Millisecond, Timeout: time.Minute}, "2 agents stay", func(context.Context) error {
			if calls++; calls == 3 {
				return errors.New("3 agents")
			}
			return nil
		})
	})
	wantAll(t, msg, "2 agents stay", "3 agents")
	if time.Since(start) > 10*time.Second {
		t.Errorf("Consistently went on after the condition failed")
	}
}

func TestNamespaces(t *testing.T) {
	kube := kubefake.NewClientset()
	EnsureNamespace(t, kube, "sys")
	EnsureNamespace(t, kube, "sys") // exists: fine
	if _, err := kube.CoreV1().ServiceAccounts("sys").Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Errorf("no default ServiceAccount: %v", err)
	}
	// The fake apiserver does not generate names: a reactor plays it.
	kube.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		ns := a.(k8stesting.CreateAction).GetObject().(*corev1.Namespace)
		if ns.Name == "" {
			ns.Name = ns.GenerateName + "abcde"
		}
		return false, nil, nil
	})
	if got := CreateNamespace(t, kube, "team"); got != "team-abcde" {
		t.Errorf("CreateNamespace = %q", got)
	}
	kube.PrependReactor("create", "namespaces", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "namespaces"}, "", errors.New("no"))
	})
	msg := fatalOf(t, func(tb testing.TB) { CreateNamespace(tb, kube, "denied") })
	wantAll(t, msg, "creating a namespace denied-*", "forbidden")
}
