package kubetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
)

// Resources is cpu and memory (quantities: "500m", "64Mi").
func Resources(cpu, memory string) v1alpha1.SandboxResources {
	return v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse(cpu)), Memory: ptr.To(resource.MustParse(memory))}
}

// Sandbox is a Sandbox of the pool that runs cmd in image, with no
// resources of its own.
func Sandbox(name, pool, image string, cmd ...string) *v1alpha1.Sandbox {
	return &v1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.SandboxSpec{PoolName: pool, Image: image, Command: cmd},
	}
}

// Pool is a SandboxPool of minAgents to maxAgents agents, each with slots
// slots (0: the API's default), running agentImage with agent's resources.
func Pool(name string, minAgents, maxAgents, slots int32, agentImage string, agent v1alpha1.SandboxResources) *v1alpha1.SandboxPool {
	return &v1alpha1.SandboxPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.SandboxPoolSpec{
			MinAgents: minAgents, MaxAgents: maxAgents, SlotsPerAgent: slots,
			Agent: v1alpha1.AgentTemplate{Image: agentImage, Resources: agent},
		},
	}
}

// CreateSandbox creates s in namespace ns and returns it as stored.
func CreateSandbox(tb testing.TB, c versioned.Interface, ns string, s *v1alpha1.Sandbox) *v1alpha1.Sandbox {
	tb.Helper()
	got, err := c.SandboxV1alpha1().Sandboxes(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("creating Sandbox %s/%s: %v", ns, s.Name, err)
	}
	return got
}

// CreatePool creates p and returns it as stored.
func CreatePool(tb testing.TB, c versioned.Interface, p *v1alpha1.SandboxPool) *v1alpha1.SandboxPool {
	tb.Helper()
	got, err := c.SandboxV1alpha1().SandboxPools().Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("creating SandboxPool %s: %v", p.Name, err)
	}
	return got
}

// CreateNamespace makes a namespace named prefix-<random> with its
// "default" ServiceAccount, and returns its name.
func CreateNamespace(tb testing.TB, kube kubernetes.Interface, prefix string) string {
	tb.Helper()
	ns, err := kube.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("creating a namespace %s-*: %v", prefix, err)
	}
	defaultServiceAccount(tb, kube, ns.Name)
	return ns.Name
}

// EnsureNamespace makes the namespace name with its "default"
// ServiceAccount, unless they exist.
func EnsureNamespace(tb testing.TB, kube kubernetes.Interface, name string) {
	tb.Helper()
	_, err := kube.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("creating namespace %s: %v", name, err)
	}
	defaultServiceAccount(tb, kube, name)
}

// defaultServiceAccount makes the ServiceAccount that the ServiceAccount
// admission plugin wants of every Pod: where no kube-controller-manager
// runs (the integration tests' apiserver), nothing else makes it, and
// where one runs it may not have made it yet.
func defaultServiceAccount(tb testing.TB, kube kubernetes.Interface, ns string) {
	tb.Helper()
	_, err := kube.CoreV1().ServiceAccounts(ns).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("creating the default ServiceAccount of namespace %s: %v", ns, err)
	}
}

// WaitAllowed waits until kube-apiserver's authorizer lets user (in
// groups, and system:authenticated) do what attrs says, as a
// SubjectAccessReview answers. The RBAC authorizer reads roles and
// bindings through an informer, so a binding takes effect a moment after
// it is created: a test that binds and then acts as the subject waits
// here first.
func WaitAllowed(tb testing.TB, kube kubernetes.Interface, user string, groups []string, attrs authorizationv1.ResourceAttributes) {
	tb.Helper()
	Eventually(tb, Poll{Interval: 20 * time.Millisecond, Timeout: 30 * time.Second},
		fmt.Sprintf("%s allowed to %s %s in %q", user, attrs.Verb, attrs.Resource, attrs.Namespace),
		func(ctx context.Context) error {
			sar, err := kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{
					User:               user,
					Groups:             append([]string{"system:authenticated"}, groups...),
					ResourceAttributes: &attrs,
				},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if !sar.Status.Allowed {
				return fmt.Errorf("not yet allowed: %s", sar.Status.Reason)
			}
			return nil
		})
}

// ServiceAccountUser is the user name and groups that a ServiceAccount's
// token authenticates as.
func ServiceAccountUser(ns, name string) (string, []string) {
	return "system:serviceaccount:" + ns + ":" + name, []string{"system:serviceaccounts", "system:serviceaccounts:" + ns}
}
