// Package framework starts what the integration tests run against: a real
// kube-apiserver with etcd, in the test process, with the fast-sandbox CRDs
// installed from manifests/crds.
package framework

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/kubernetes/test/utils/apiserver"
	"sigs.k8s.io/yaml"

	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
)

// ControlPlane is a running kube-apiserver with the CRDs installed.
type ControlPlane struct {
	Config         *rest.Config
	KubeconfigFile string
	Kube           kubernetes.Interface
	Sandbox        versioned.Interface
}

// Start runs etcd and kube-apiserver in the test process, installs the CRDs
// and waits until they are served. Everything stops when the test ends.
func Start(t *testing.T) *ControlPlane {
	t.Helper()
	srv := apiserver.StartAPITestServer(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.KubeConfigFile)
	if err != nil {
		t.Fatalf("loading kubeconfig of the test apiserver: %v", err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	cp := &ControlPlane{
		Config:         cfg,
		KubeconfigFile: srv.KubeConfigFile,
		Kube:           srv.ClientSet,
		Sandbox:        versioned.NewForConfigOrDie(cfg),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := InstallCRDs(ctx, cfg, CRDDir()); err != nil {
		t.Fatalf("installing CRDs: %v", err)
	}
	return cp
}

// CRDDir is manifests/crds of this repository.
func CRDDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "manifests", "crds")
}

// InstallCRDs creates every CRD in dir and waits until each is Established.
func InstallCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	client, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "fast-sandbox.io_*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no CRD manifests in %s", dir)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(data, crd); err != nil {
			return fmt.Errorf("decoding %s: %w", f, err)
		}
		if _, err := client.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating CRD %s: %w", crd.Name, err)
		}
		err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			got, err := client.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range got.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("waiting for CRD %s to be established: %w", crd.Name, err)
		}
	}
	return nil
}
