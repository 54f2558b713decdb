package poolcontroller

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2/ktesting"
	clocktesting "k8s.io/utils/clock/testing"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	sbxfake "github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

// reconcileEnv is a controller over fake clients holding a pool that needs
// every kind of write in one reconcile, with a fake event recorder.
type reconcileEnv struct {
	ctx      context.Context
	kube     *k8sfake.Clientset
	sbx      *sbxfake.Clientset
	c        *Controller
	recorder *events.FakeRecorder
	// setup is how many actions each client had before the controller acted.
	kubeSetup, sbxSetup int
}

// newReconcileEnv: pool py wants 2 agents and has one running agent Pod
// (py-agent-old) without its cleanup finalizer or idle mark, one Failed on
// node-a (py-agent-done: deleted, its node cleaned up) and one Failed on a
// node that is gone (py-agent-lost: its finalizer released); the
// scheduler's certificate Secret holds no valid certificate.
func newReconcileEnv(t *testing.T) *reconcileEnv {
	t.Helper()
	pool := testPool()
	pool.Spec.MinAgents = 2
	agent := func(name, node string, phase corev1.PodPhase, finalizer bool) *corev1.Pod {
		pod := AgentPod(pool, testSysNS, name, "")
		pod.UID, pod.Spec.NodeName, pod.Status.Phase = types.UID("uid-"+pod.Name), node, phase
		pod.Annotations = nil
		pod.Finalizers = nil
		if finalizer {
			pod.Finalizers = []string{v1alpha1.FinalizerAgentPodCleanup}
		}
		return pod
	}
	old := agent("py-agent-old", "node-a", corev1.PodRunning, false)
	old.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	kube := k8sfake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Labels: map[string]string{"pool": "sandbox"}}},
		old,
		agent("py-agent-done", "node-a", corev1.PodFailed, true),
		agent("py-agent-lost", "node-gone", corev1.PodFailed, true),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SchedulerClientSecretName, Namespace: testSysNS},
			Data: map[string][]byte{"tls.crt": []byte("not a certificate")}},
	)
	client := sbxfake.NewSimpleClientset(pool)

	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	inf := NewInformers(kube, client, testSysNS, 0)
	c, err := NewControllerWithInformers(ctx, kube, client, inf, testSysNS, Options{Clock: clocktesting.NewFakeClock(time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	recorder := events.NewFakeRecorder(100)
	recorder.Verbose = true
	c.recorder = recorder
	inf.Start(ctx.Done())
	t.Cleanup(func() { cancel(); inf.Shutdown() })
	for _, synced := range c.synced {
		if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true,
			func(context.Context) (bool, error) { return synced(), nil }); err != nil {
			t.Fatal("informers did not sync")
		}
	}
	return &reconcileEnv{ctx: ctx, kube: kube, sbx: client, c: c, recorder: recorder,
		kubeSetup: len(kube.Actions()), sbxSetup: len(client.Actions())}
}

// run reconciles the pool once and keeps the scheduler's certificate once,
// as Run's workers and credentials loop do.
func (e *reconcileEnv) run(t *testing.T) {
	t.Helper()
	if _, err := e.c.syncPool(e.ctx, "py"); err != nil {
		t.Fatalf("syncPool: %v", err)
	}
	if err := e.c.ensureSchedulerCredentials(e.ctx); err != nil {
		t.Fatalf("ensureSchedulerCredentials: %v", err)
	}
}

// events drains the events recorded so far.
func (e *reconcileEnv) events() []string {
	var out []string
	for {
		select {
		case ev := <-e.recorder.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

// fieldManagerOf is the field manager a create, update or patch action
// carried; ok is false for other actions.
func fieldManagerOf(a k8stesting.Action) (manager string, ok bool) {
	switch a := a.(type) {
	case k8stesting.CreateActionImpl:
		return a.CreateOptions.FieldManager, true
	case k8stesting.UpdateActionImpl:
		return a.UpdateOptions.FieldManager, true
	case k8stesting.PatchActionImpl:
		return a.PatchOptions.FieldManager, true
	}
	return "", false
}

func describeAction(a k8stesting.Action) string {
	s := a.GetVerb() + " " + a.GetResource().Resource
	if sub := a.GetSubresource(); sub != "" {
		s += "/" + sub
	}
	return s
}

// TestEveryWriteNamesTheFieldManager: every create, update and patch the
// controller sends (Pods, Secrets, the pool's status) carries its field
// manager, so managedFields name it rather than the client's user agent.
// Events are written by client-go's event sink and are left out.
func TestEveryWriteNamesTheFieldManager(t *testing.T) {
	e := newReconcileEnv(t)
	e.run(t)

	seen := map[string]bool{}
	check := func(actions []k8stesting.Action) {
		for _, a := range actions {
			manager, ok := fieldManagerOf(a)
			if !ok || a.GetResource().Resource == "events" {
				continue
			}
			seen[describeAction(a)] = true
			if manager != ControllerName {
				t.Errorf("%s %s/%s: field manager %q, want %q", describeAction(a), a.GetNamespace(), nameOf(a), manager, ControllerName)
			}
		}
	}
	check(e.kube.Actions()[e.kubeSetup:])
	check(e.sbx.Actions()[e.sbxSetup:])
	// The reconcile did write all of these, or the test proves nothing.
	for _, want := range []string{"create pods", "patch pods", "create secrets", "update secrets", "update sandboxpools/status"} {
		if !seen[want] {
			t.Errorf("no %s among the controller's writes (saw %v)", want, seen)
		}
	}
}

func nameOf(a k8stesting.Action) string {
	switch a := a.(type) {
	case k8stesting.PatchActionImpl:
		return a.Name
	case k8stesting.CreateActionImpl:
		if o, ok := a.Object.(metav1.Object); ok {
			return o.GetName()
		}
	case k8stesting.UpdateActionImpl:
		if o, ok := a.Object.(metav1.Object); ok {
			return o.GetName()
		}
	}
	return ""
}

// TestReconcileEvents: the controller's events (events.k8s.io/v1) keep their
// reasons and say what was done as their action.
func TestReconcileEvents(t *testing.T) {
	e := newReconcileEnv(t)
	e.run(t)
	got := e.events()
	for _, want := range []string{
		"Normal " + EventIssuedCertificate + " " + actionIssueCertificate + " Issued the certificate of agent Pod py-agent-old",
		"Normal " + EventCleaningUp + " " + actionCleanupNode + " Created cleanup Pod py-agent-done-cleanup on node node-a",
		"Normal " + EventCleanupSkipped + " " + actionReleaseAgentPod + " Removed the cleanup finalizer of agent Pod py-agent-lost",
		"Normal " + EventDeletedAgent + " " + actionDeleteAgent + " Deleted agent Pod py-agent-done: it is Failed; replacing it",
		"Normal " + EventCreatedAgent + " " + actionCreateAgent + " Created agent Pod py-agent-",
	} {
		if !slices.ContainsFunc(got, func(ev string) bool { return strings.HasPrefix(ev, want) }) {
			t.Errorf("no event %q; got:\n%s", want, strings.Join(got, "\n"))
		}
	}
}

// TestEventNotesFitTheAPI: a note longer than events.k8s.io/v1 accepts is
// cut, on a character boundary.
func TestEventNotesFitTheAPI(t *testing.T) {
	recorder := events.NewFakeRecorder(1)
	c := &Controller{recorder: recorder}
	long := strings.Repeat("é", noteLimit) // two bytes each
	c.event(testPool(), nil, corev1.EventTypeWarning, EventFailedCreate, actionCreateAgent, "failed: %v", long)
	ev := <-recorder.Events
	note := strings.TrimPrefix(ev, corev1.EventTypeWarning+" "+EventFailedCreate+" ")
	if len(note) > noteLimit || !strings.HasSuffix(note, "é...") || !strings.HasPrefix(note, "failed: é") {
		t.Errorf("note of %d bytes: %q...%q", len(note), note[:20], note[len(note)-20:])
	}
	if short := truncateNote("short"); short != "short" {
		t.Errorf("truncateNote(short) = %q", short)
	}
}
