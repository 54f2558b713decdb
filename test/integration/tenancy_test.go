package integration

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/poolcontroller"
	"github.com/fast-sandbox/fast-sandbox/pkg/scheduler"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

const sysNS = v1alpha1.DefaultSystemNamespace

// Service accounts of the components, as manifests/default runs them.
var (
	schedulerSA  = []string{"system:serviceaccount:" + sysNS + ":fast-sandbox-scheduler", "system:serviceaccounts", "system:serviceaccounts:" + sysNS}
	controllerSA = []string{"system:serviceaccount:" + sysNS + ":fast-sandbox-pool-controller", "system:serviceaccounts", "system:serviceaccounts:" + sysNS}
)

func impersonate(cp *framework.ControlPlane, who []string) (kubernetes.Interface, versioned.Interface) {
	return cp.Impersonate(who[0], who[1:]...)
}

func bind(t *testing.T, cp *framework.ControlPlane, ns, user, role string) {
	t.Helper()
	_, err := cp.Kube.RbacV1().RoleBindings(ns).Create(context.Background(), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user + "-" + role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Both roles give get on sandboxes.
	kubetest.WaitAllowed(t, cp.Kube, user, nil, authorizationv1.ResourceAttributes{Verb: "get", Group: v1alpha1.GroupName, Resource: "sandboxes", Namespace: ns})
}

// check asserts that err is Forbidden when forbidden, and anything but
// Forbidden otherwise (NotFound, AlreadyExists... the request was authorized).
func check(t *testing.T, what string, err error, forbidden bool) {
	t.Helper()
	switch {
	case forbidden && !apierrors.IsForbidden(err):
		t.Errorf("%s: %v, want Forbidden", what, err)
	case !forbidden && apierrors.IsForbidden(err):
		t.Errorf("%s: %v, want it allowed", what, err)
	}
}

// tenantSandbox is a Sandbox of the pool "shared".
func tenantSandbox(name string) *v1alpha1.Sandbox {
	return kubetest.Sandbox(name, "shared", "busybox", "true")
}

// Tenants hold Sandboxes in their namespaces and nothing else: not pools,
// not the system namespace's Pods or Secrets, not another tenant's
// namespace. The components' own accounts reach only what they use.
func TestTenantRBAC(t *testing.T) {
	cp := framework.StartWithRBAC(t)
	ctx := context.Background()
	teamA, teamB := kubetest.CreateNamespace(t, cp.Kube, "team-a"), kubetest.CreateNamespace(t, cp.Kube, "team-b")
	bind(t, cp, teamA, "alice", "fast-sandbox-edit")
	bind(t, cp, teamA, "bob", "fast-sandbox-view")
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

	t.Run("edit", func(t *testing.T) {
		kube, sbx := cp.Impersonate("alice")
		_, err := sbx.SandboxV1alpha1().Sandboxes(teamA).Create(ctx, tenantSandbox("mine"), metav1.CreateOptions{})
		check(t, "create a Sandbox in her namespace", err, false)
		_, err = sbx.SandboxV1alpha1().Sandboxes(teamA).List(ctx, metav1.ListOptions{})
		check(t, "list Sandboxes in her namespace", err, false)
		check(t, "delete a Sandbox in her namespace", sbx.SandboxV1alpha1().Sandboxes(teamA).Delete(ctx, "mine", metav1.DeleteOptions{}), false)
		_, err = sbx.SandboxV1alpha1().Sandboxes(teamB).Create(ctx, tenantSandbox("theirs"), metav1.CreateOptions{})
		check(t, "create a Sandbox in another namespace", err, true)
		_, err = sbx.SandboxV1alpha1().Sandboxes(teamA).UpdateStatus(ctx, tenantSandbox("mine"), metav1.UpdateOptions{})
		check(t, "write a Sandbox's status", err, true)
		_, err = sbx.SandboxV1alpha1().SandboxPools().Create(ctx, validPool("hers"), metav1.CreateOptions{})
		check(t, "create a SandboxPool", err, true)
		if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Create(ctx, validPool("operators"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err = sbx.SandboxV1alpha1().SandboxPools().Get(ctx, "operators", metav1.GetOptions{})
		check(t, "read a SandboxPool (no pool-reader binding)", err, true)
		pool := validPool("operators")
		pool.Spec.Agent.Image = "evil/agent:latest"
		_, err = sbx.SandboxV1alpha1().SandboxPools().Update(ctx, pool, metav1.UpdateOptions{})
		check(t, "edit a SandboxPool", err, true)
		_, err = sbx.SandboxV1alpha1().SandboxPools().Patch(ctx, "operators", "application/merge-patch+json",
			[]byte(`{"spec":{"agent":{"image":"evil/agent:latest"}}}`), metav1.PatchOptions{})
		check(t, "patch a SandboxPool", err, true)
		check(t, "delete a SandboxPool", sbx.SandboxV1alpha1().SandboxPools().Delete(ctx, "operators", metav1.DeleteOptions{}), true)
		_, err = kube.CoreV1().Pods(sysNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, dryRun)
		check(t, "create a Pod in the system namespace", err, true)
		_, err = kube.CoreV1().Secrets(sysNS).List(ctx, metav1.ListOptions{})
		check(t, "list the system namespace's Secrets", err, true)
		_, err = kube.CoreV1().Secrets(teamA).List(ctx, metav1.ListOptions{})
		check(t, "list Secrets (fast-sandbox-edit alone grants none)", err, true)
	})
	t.Run("view", func(t *testing.T) {
		_, sbx := cp.Impersonate("bob")
		_, err := sbx.SandboxV1alpha1().Sandboxes(teamA).List(ctx, metav1.ListOptions{})
		check(t, "list Sandboxes", err, false)
		_, err = sbx.SandboxV1alpha1().Sandboxes(teamA).Create(ctx, tenantSandbox("b"), metav1.CreateOptions{})
		check(t, "create a Sandbox", err, true)
	})
	t.Run("aggregated into the built-in roles", func(t *testing.T) {
		for role, into := range map[string][]string{
			"fast-sandbox-view": {"view", "edit", "admin"},
			"fast-sandbox-edit": {"edit", "admin"},
		} {
			cr, err := cp.Kube.RbacV1().ClusterRoles().Get(ctx, role, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range into {
				if cr.Labels["rbac.authorization.k8s.io/aggregate-to-"+r] != "true" {
					t.Errorf("%s is not aggregated into %s: labels %v", role, r, cr.Labels)
				}
			}
		}
	})
	t.Run("scheduler", func(t *testing.T) {
		kube, _ := impersonate(cp, schedulerSA)
		_, err := kube.CoreV1().Secrets(sysNS).Get(ctx, v1alpha1.SchedulerClientSecretName, metav1.GetOptions{})
		check(t, "get its client certificate", err, false)
		_, err = kube.CoreV1().Secrets(sysNS).Watch(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("metadata.name", v1alpha1.SchedulerClientSecretName).String()})
		check(t, "watch its client certificate", err, false)
		_, err = kube.CoreV1().Secrets(sysNS).Get(ctx, v1alpha1.AgentCASecretName, metav1.GetOptions{})
		check(t, "get the CA", err, true)
		_, err = kube.CoreV1().Secrets(sysNS).List(ctx, metav1.ListOptions{})
		check(t, "list the system namespace's Secrets", err, true)
		_, err = kube.CoreV1().Secrets(teamA).List(ctx, metav1.ListOptions{})
		check(t, "list a tenant's Secrets", err, true)
		_, err = kube.CoreV1().Pods(teamA).List(ctx, metav1.ListOptions{})
		check(t, "list a tenant's Pods", err, true)
		_, err = kube.CoreV1().Pods(sysNS).List(ctx, metav1.ListOptions{})
		check(t, "list the agent Pods", err, false)
	})
	t.Run("pool controller", func(t *testing.T) {
		kube, _ := impersonate(cp, controllerSA)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}
		_, err := kube.CoreV1().Pods(teamA).Create(ctx, pod, dryRun)
		check(t, "create a Pod in a tenant namespace", err, true)
		_, err = kube.CoreV1().Secrets(teamA).List(ctx, metav1.ListOptions{})
		check(t, "list a tenant's Secrets", err, true)
		_, err = kube.CoreV1().Pods(sysNS).Create(ctx, pod, dryRun)
		check(t, "create a Pod in the system namespace", err, false)
	})
}

// The scheduler and the pool controller do their work with exactly the
// permissions manifests/default gives them, and a pool's tenancy rules
// reach the tenant as status: a namespace the pool does not select waits
// with NamespaceNotAllowed, an image it does not allow fails.
func TestComponentsUnderRBAC(t *testing.T) {
	allowPrivileged(t)
	cp := framework.StartWithRBAC(t)
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), testr.New(t)))
	defer cancel()
	allowed, other := kubetest.CreateNamespace(t, cp.Kube, "allowed"), kubetest.CreateNamespace(t, cp.Kube, "other")
	if _, err := cp.Kube.CoreV1().Namespaces().Patch(ctx, allowed, "application/merge-patch+json",
		[]byte(`{"metadata":{"labels":{"sandboxes":"yes"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	pool := validPool("shared")
	pool.Spec.MinAgents = 1
	pool.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"sandboxes": "yes"}}
	pool.Spec.AllowedImages = []string{"docker.io/library/busybox:*"}
	if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The pool controller, as its ServiceAccount.
	ckube, csbx := impersonate(cp, controllerSA)
	inf := poolcontroller.NewInformers(ckube, csbx, sysNS, 0)
	c, err := poolcontroller.NewControllerWithInformers(ctx, ckube, csbx, inf, sysNS, poolcontroller.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inf.Start(ctx.Done())
	go func() { _ = c.Run(ctx, 2) }()
	// The scheduler, as its ServiceAccount.
	skube, ssbx := impersonate(cp, schedulerSA)
	cfg, err := scheduler.LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	s, err := scheduler.New(ctx, skube, ssbx, cfg, scheduler.Options{StatusPeriod: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	defer func() { cancel(); <-done; inf.Shutdown() }()

	// The controller made the CA, the scheduler's certificate and an agent
	// Pod with its own certificate, all in the system namespace.
	var agent *corev1.Pod
	kubetest.Eventually(t, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 30 * time.Second}, "an agent Pod in "+sysNS,
		func(ctx context.Context) error {
			pods, err := cp.Kube.CoreV1().Pods(sysNS).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=shared"})
			if err != nil {
				return err
			}
			if len(pods.Items) == 0 {
				return errors.New("no agent Pod")
			}
			agent = &pods.Items[0]
			return nil
		})
	caSecret, err := cp.Kube.CoreV1().Secrets(sysNS).Get(ctx, v1alpha1.AgentCASecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := agentpki.ParseCA(caSecret.Data[agentpki.KeyCACert], caSecret.Data[agentpki.KeyCAKey])
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		v1alpha1.AgentTLSSecretName(agent.Name): agentpki.AgentIdentity(sysNS, agent.Name),
		v1alpha1.SchedulerClientSecretName:      agentpki.SchedulerIdentity,
	} {
		var secret *corev1.Secret
		kubetest.Eventually(t, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 10 * time.Second}, "Secret "+name,
			func(ctx context.Context) (err error) {
				secret, err = cp.Kube.CoreV1().Secrets(sysNS).Get(ctx, name, metav1.GetOptions{})
				return err
			})
		if got := identityOf(t, ca, secret.Data[agentpki.KeyCert]); got != want {
			t.Errorf("Secret %s names %q, want %q", name, got, want)
		}
	}

	// Tenancy reaches the tenant as status.
	_, tenant := cp.Impersonate("carol")
	bind(t, cp, allowed, "carol", "fast-sandbox-edit")
	bind(t, cp, other, "carol", "fast-sandbox-edit")
	create := func(ns, name, image string) {
		t.Helper()
		sbx := tenantSandbox(name)
		sbx.Spec.Image = image
		if _, err := tenant.SandboxV1alpha1().Sandboxes(ns).Create(ctx, sbx, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create(other, "elsewhere", "busybox")
	create(allowed, "bad-image", "registry.k8s.io/etcd:3.6.0")
	waitReason := func(ns, name, reason string, phase v1alpha1.SandboxPhase) {
		t.Helper()
		// As the tenant: what it is told is in what it can read.
		last := kubetest.WaitSandbox(t, tenant, ns, name, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 20 * time.Second},
			kubetest.Where(fmt.Sprintf("phase %s with reason %s", phase, reason), func(s *v1alpha1.Sandbox) bool {
				return s.Status.Reason == reason && s.Status.Phase == phase
			}))
		if !strings.Contains(last.Status.Message, "shared") {
			t.Errorf("%s/%s: message %q does not name the pool", ns, name, last.Status.Message)
		}
	}
	waitReason(other, "elsewhere", v1alpha1.ReasonNamespaceNotAllowed, v1alpha1.SandboxPending)
	waitReason(allowed, "bad-image", v1alpha1.ReasonImageNotAllowed, v1alpha1.SandboxFailed)
}

func identityOf(t *testing.T, ca *agentpki.CA, certPEM []byte) string {
	t.Helper()
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatalf("certificate not signed by the CA: %v", err)
	}
	id, err := agentpki.IdentityOf(cert)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}
