package scheduler

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// testManager names the test's own writes, told apart from the scheduler's.
const testManager = "test"

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

// TestEveryWriteNamesTheFieldManager: every create, update and patch the
// scheduler sends (the finalizer, the placement, the agent's outcome, an
// unschedulable sandbox's status, the finalizer's removal) carries its
// field manager. Events are written by client-go's event sink and are left
// out.
func TestEveryWriteNamesTheFieldManager(t *testing.T) {
	e := newEnv(t)
	a := e.addAgent("agent-a")
	kubeSetup, sbxSetup := len(e.kube.Actions()), len(e.client.Actions())
	e.start(testOptions())
	ctx := context.Background()
	create := func(name, pool string) *v1alpha1.Sandbox {
		t.Helper()
		sbx := &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: k8stypes.UID("sbx-" + name)},
			Spec: v1alpha1.SandboxSpec{PoolName: pool, Image: "busybox", Command: []string{"sleep", "3600"}}}
		sbx, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Create(ctx, sbx, metav1.CreateOptions{FieldManager: testManager})
		if err != nil {
			t.Fatal(err)
		}
		return sbx
	}
	s1 := create("s1", testPool)
	create("orphan", "no-such-pool")
	e.wait("s1", "Running", 5*time.Second, running)
	e.wait("orphan", "PoolNotFound", 5*time.Second, func(s *v1alpha1.Sandbox) bool { return s.Status.Reason == v1alpha1.ReasonPoolNotFound })
	a.exit(string(s1.UID), 0)
	e.wait("s1", "Succeeded", 5*time.Second, phaseIs(v1alpha1.SandboxSucceeded))
	if err := e.client.SandboxV1alpha1().Sandboxes(testNS).Delete(ctx, "s1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "s1 gone (its finalizer removed)", 5*time.Second, func() bool {
		_, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Get(ctx, "s1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})

	seen := map[string]bool{}
	check := func(actions []k8stesting.Action) {
		for _, a := range actions {
			manager, ok := fieldManagerOf(a)
			if !ok || manager == testManager || a.GetResource().Resource == "events" {
				continue
			}
			what := a.GetVerb() + " " + a.GetResource().Resource
			if a.GetSubresource() != "" {
				what += "/" + a.GetSubresource()
			}
			seen[what] = true
			if manager != fieldManager {
				t.Errorf("%s in %s: field manager %q, want %q", what, a.GetNamespace(), manager, fieldManager)
			}
		}
	}
	check(e.kube.Actions()[kubeSetup:])
	check(e.client.Actions()[sbxSetup:])
	for _, want := range []string{"update sandboxes", "update sandboxes/status", "patch sandboxes"} {
		if !seen[want] {
			t.Errorf("no %s among the scheduler's writes (saw %v)", want, seen)
		}
	}
}
