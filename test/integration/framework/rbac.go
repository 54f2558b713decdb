package framework

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	etcdserver "k8s.io/apiserver/pkg/storage/etcd3/testserver"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	kubeapiservertesting "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"
	"sigs.k8s.io/yaml"

	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// StartWithRBAC runs kube-apiserver with the RBAC authorizer (Start's
// allows everything), installs the CRDs and applies the project's
// namespace and RBAC manifests (manifests/default: namespace.yaml,
// rbac.yaml, tenant-rbac.yaml). The ControlPlane's clients are cluster
// admins; Impersonate makes clients of other users.
func StartWithRBAC(t *testing.T) *ControlPlane {
	t.Helper()
	etcd := etcdserver.RunEtcd(t, etcdserver.NewTestConfig(t))
	storage := storagebackend.NewDefaultConfig(path.Join(uuid.New().String(), "registry"), nil)
	storage.Transport.ServerList = etcd.Endpoints()
	srv := kubeapiservertesting.StartTestServerOrDie(t, nil, []string{"--authorization-mode=RBAC"}, storage)
	t.Cleanup(srv.TearDownFn)
	cfg := rest.CopyConfig(srv.ClientConfig)
	cfg.QPS, cfg.Burst = 1000, 2000
	// The loopback configuration asks for protobuf, which custom resources
	// do not speak.
	cfg.ContentType, cfg.AcceptContentTypes = "application/json", ""
	cp := &ControlPlane{Config: cfg, Kube: kubernetes.NewForConfigOrDie(cfg), Sandbox: versioned.NewForConfigOrDie(cfg)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := InstallCRDs(ctx, cfg, CRDDir()); err != nil {
		t.Fatalf("installing CRDs: %v", err)
	}
	for _, f := range []string{"namespace.yaml", "rbac.yaml", "tenant-rbac.yaml"} {
		if err := cp.apply(ctx, filepath.Join(CRDDir(), "..", "default", f)); err != nil {
			t.Fatalf("applying %s: %v", f, err)
		}
	}
	cp.waitRBACSettled(t, cp.SystemNamespace(t))
	return cp
}

// waitRBACSettled waits until kube-apiserver's RBAC authorizer has seen
// every role and binding applied so far. The authorizer reads them
// through informers, one watch per kind, each in the order of writes: so
// once a Role, RoleBinding, ClusterRole and ClusterRoleBinding made last
// are in effect, so is everything made before them.
func (cp *ControlPlane) waitRBACSettled(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	const user, group = "rbac-settled", "test.fast-sandbox.io"
	rules := func(resource string) []rbacv1.PolicyRule {
		return []rbacv1.PolicyRule{{APIGroups: []string{group}, Resources: []string{resource}, Verbs: []string{"get"}}}
	}
	subjects := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
	meta := metav1.ObjectMeta{Name: user, Namespace: ns}
	if _, err := cp.Kube.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules("clusterwide")}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user}, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kube.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: meta, Rules: rules("namespaced")}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kube.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: meta,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user}, Subjects: subjects}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, resource := range []string{"clusterwide", "namespaced"} {
		kubetest.WaitAllowed(t, cp.Kube, user, nil, authorizationv1.ResourceAttributes{Verb: "get", Group: group, Resource: resource, Namespace: ns})
	}
}

// Impersonate returns clients that act as user in groups.
func (cp *ControlPlane) Impersonate(user string, groups ...string) (kubernetes.Interface, versioned.Interface) {
	cfg := rest.CopyConfig(cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append([]string{"system:authenticated"}, groups...)}
	return kubernetes.NewForConfigOrDie(cfg), versioned.NewForConfigOrDie(cfg)
}

// apply creates the Namespaces, ServiceAccounts and RBAC objects of a
// multi-document manifest; other kinds are an error.
func (cp *ControlPlane) apply(ctx context.Context, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	reader := utilyaml.NewYAMLReader(bufioReader(data))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return err
		}
		if meta.Kind == "" {
			continue
		}
		if err := cp.create(ctx, meta.Kind, doc); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s in %s: %w", meta.Kind, file, err)
		}
	}
}

func (cp *ControlPlane) create(ctx context.Context, kind string, doc []byte) error {
	opts := metav1.CreateOptions{}
	decode := func(into any) error { return yaml.UnmarshalStrict(doc, into) }
	switch kind {
	case "Namespace":
		o := &corev1.Namespace{}
		if err := decode(o); err != nil {
			return err
		}
		_, err := cp.Kube.CoreV1().Namespaces().Create(ctx, o, opts)
		return err
	case "ServiceAccount":
		o := &corev1.ServiceAccount{}
		if err := decode(o); err != nil {
			return err
		}
		_, err := cp.Kube.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
		return err
	case "ClusterRole":
		o := &rbacv1.ClusterRole{}
		if err := decode(o); err != nil {
			return err
		}
		_, err := cp.Kube.RbacV1().ClusterRoles().Create(ctx, o, opts)
		return err
	case "ClusterRoleBinding":
		o := &rbacv1.ClusterRoleBinding{}
		if err := decode(o); err != nil {
			return err
		}
		_, err := cp.Kube.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
		return err
	case "Role":
		o := &rbacv1.Role{}
		if err := decode(o); err != nil {
			return err
		}
		_, err := cp.Kube.RbacV1().Roles(o.Namespace).Create(ctx, o, opts)
		return err
	case "RoleBinding":
		o := &rbacv1.RoleBinding{}
		if err := decode(o); err != nil {
			return err
		}
		_, err := cp.Kube.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, opts)
		return err
	}
	return fmt.Errorf("unexpected kind %s", kind)
}

func bufioReader(data []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(data)) }
