package integration

import (
	"context"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// subresourcesGroup is the sandbox-apiserver's API group (docs/interactive.md).
const subresourcesGroup = "subresources.fast-sandbox.io"

var apiServerSA = []string{"system:serviceaccount:" + sysNS + ":fast-sandbox-apiserver", "system:serviceaccounts", "system:serviceaccounts:" + sysNS}

// access is one request a SubjectAccessReview asks about.
type access struct {
	verb, group, resource, subresource, ns, name string
}

func (a access) String() string {
	r := a.resource
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.group != "" {
		r += "." + a.group
	}
	s := a.verb + " " + r
	if a.name != "" {
		s += " " + a.name
	}
	if a.ns != "" {
		s += " in " + a.ns
	}
	return s
}

// allowed asks kube-apiserver's RBAC authorizer whether who (user, then
// groups) may do a.
func allowed(t *testing.T, cp *framework.ControlPlane, who []string, a access) bool {
	t.Helper()
	sar, err := cp.Kube.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   who[0],
			Groups: append([]string{"system:authenticated"}, who[1:]...),
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource,
				Namespace: a.ns, Name: a.name,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %s: %v", a, err)
	}
	return sar.Status.Allowed
}

// The shipped roles give the sandbox-apiserver's subresources as
// docs/interactive.md says: fast-sandbox-edit exec, attach, log and files
// (read and write); fast-sandbox-view only log; neither outside its
// namespace. The sandbox-apiserver's own account reads what it needs to
// find an agent and its own certificate, and may delegate authentication
// and authorization; the pool controller may write that certificate.
func TestSubresourcesRBAC(t *testing.T) {
	cp := framework.StartWithRBAC(t)
	teamA, teamB := kubetest.CreateNamespace(t, cp.Kube, "team-a"), kubetest.CreateNamespace(t, cp.Kube, "team-b")
	bind(t, cp, teamA, "alice", "fast-sandbox-edit")
	bind(t, cp, teamA, "bob", "fast-sandbox-view")
	sub := func(verb, subresource, ns string) access {
		return access{verb: verb, group: subresourcesGroup, resource: "sandboxes", subresource: subresource, ns: ns, name: "box"}
	}
	type tc struct {
		a    access
		want bool
	}
	for _, who := range []struct {
		name  string
		who   []string
		cases []tc
	}{
		{"edit", []string{"alice"}, []tc{
			{sub("create", "exec", teamA), true},
			{sub("get", "exec", teamA), true},
			{sub("create", "attach", teamA), true},
			{sub("get", "attach", teamA), true},
			{sub("get", "log", teamA), true},
			{sub("get", "files", teamA), true},
			{sub("update", "files", teamA), true},
			{sub("create", "exec", teamB), false},
			{sub("get", "log", teamB), false},
			{sub("delete", "files", teamA), false},
			{access{verb: "get", group: subresourcesGroup, resource: "sandboxes", ns: teamA, name: "box"}, false},
		}},
		{"view", []string{"bob"}, []tc{
			{sub("get", "log", teamA), true},
			{sub("create", "exec", teamA), false},
			{sub("get", "exec", teamA), false},
			{sub("create", "attach", teamA), false},
			{sub("get", "files", teamA), false},
			{sub("update", "files", teamA), false},
			{sub("get", "log", teamB), false},
		}},
		{"nobody", []string{"mallory"}, []tc{
			{sub("create", "exec", teamA), false},
			{sub("get", "log", teamA), false},
		}},
		{"sandbox-apiserver", apiServerSA, []tc{
			{access{verb: "get", group: v1alpha1.GroupName, resource: "sandboxes", ns: teamA, name: "box"}, true},
			{access{verb: "list", group: v1alpha1.GroupName, resource: "sandboxes"}, true},
			{access{verb: "watch", group: v1alpha1.GroupName, resource: "sandboxes"}, true},
			{access{verb: "update", group: v1alpha1.GroupName, resource: "sandboxes", ns: teamA, name: "box"}, false},
			{access{verb: "update", group: v1alpha1.GroupName, resource: "sandboxes", subresource: "status", ns: teamA, name: "box"}, false},
			{access{verb: "list", resource: "pods", ns: sysNS}, true},
			{access{verb: "watch", resource: "pods", ns: sysNS}, true},
			{access{verb: "list", resource: "pods", ns: teamA}, false},
			{access{verb: "create", resource: "pods", ns: sysNS}, false},
			{access{verb: "get", resource: "secrets", ns: sysNS, name: v1alpha1.SandboxAPIServerClientSecretName}, true},
			{access{verb: "watch", resource: "secrets", ns: sysNS, name: v1alpha1.SandboxAPIServerClientSecretName}, true},
			{access{verb: "get", resource: "secrets", ns: sysNS, name: v1alpha1.AgentCASecretName}, false},
			{access{verb: "get", resource: "secrets", ns: sysNS, name: v1alpha1.SchedulerClientSecretName}, false},
			{access{verb: "list", resource: "secrets", ns: sysNS}, false},
			{access{verb: "create", group: "authentication.k8s.io", resource: "tokenreviews"}, true},
			{access{verb: "create", group: "authorization.k8s.io", resource: "subjectaccessreviews"}, true},
			{access{verb: "get", resource: "configmaps", ns: "kube-system", name: "extension-apiserver-authentication"}, true},
		}},
		{"pool controller", controllerSA, []tc{
			{access{verb: "create", resource: "secrets", ns: sysNS, name: v1alpha1.SandboxAPIServerClientSecretName}, true},
			{access{verb: "update", resource: "secrets", ns: sysNS, name: v1alpha1.SandboxAPIServerClientSecretName}, true},
			{sub("create", "exec", teamA), false},
		}},
		{"scheduler", schedulerSA, []tc{
			{access{verb: "get", resource: "secrets", ns: sysNS, name: v1alpha1.SandboxAPIServerClientSecretName}, false},
			{sub("create", "exec", teamA), false},
		}},
	} {
		t.Run(who.name, func(t *testing.T) {
			for _, c := range who.cases {
				if got := allowed(t, cp, who.who, c.a); got != c.want {
					t.Errorf("%s: allowed %v, want %v", c.a, got, c.want)
				}
			}
		})
	}
}
