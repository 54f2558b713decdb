package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2/ktesting"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggregatorclientset "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset"
	kubeapiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/poolcontroller"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// listenerResolver resolves the sandbox-apiserver's Service to its
// listener on loopback (kube-apiserver's aggregator dials a Service's
// endpoints, and endpoints cannot be loopback addresses); any other Service
// is an error.
type listenerResolver struct {
	namespace, name string
	url             *url.URL
}

func (r listenerResolver) ResolveEndpoint(namespace, name string, _ int32) (*url.URL, error) {
	if namespace != r.namespace || name != r.name {
		return nil, fmt.Errorf("no endpoint for service %s/%s in this test", namespace, name)
	}
	u := *r.url
	return &u, nil
}

// manifestObject decodes the object of kind from the multi-document
// manifest file of manifests/default into obj.
func manifestObject(t *testing.T, file, kind string, obj any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(framework.CRDDir(), "..", "default", file))
	if err != nil {
		t.Fatal(err)
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			t.Fatalf("no %s in %s", kind, file)
		}
		if err != nil {
			t.Fatal(err)
		}
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind == kind {
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s in %s: %v", kind, file, err)
			}
			return
		}
	}
}

// writeSecretDir lays the Secret's data out in dir as kubelet does for a
// Secret volume (each key a symlink into ..data, swapped atomically, the
// previous generation removed); gen counts the updates from 1.
func writeSecretDir(t *testing.T, dir string, s *corev1.Secret, gen int) {
	t.Helper()
	genDir := filepath.Join(dir, fmt.Sprintf("..gen%d", gen))
	if err := os.Mkdir(genDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range s.Data {
		if err := os.WriteFile(filepath.Join(genDir, k), v, 0o600); err != nil {
			t.Fatal(err)
		}
		if link := filepath.Join(dir, k); gen == 1 {
			if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(genDir), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if gen > 1 {
		if err := os.RemoveAll(filepath.Join(dir, fmt.Sprintf("..gen%d", gen-1))); err != nil {
			t.Fatal(err)
		}
	}
}

// certDER is the DER of the PEM certificate certPEM.
func certDER(t *testing.T, certPEM []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("no certificate in %q", certPEM)
	}
	return block.Bytes
}

// servedLeaf connects to addr with a TLS client that trusts only roots and
// expects serverName, and returns the certificate the server presented.
func servedLeaf(addr, serverName string, roots *x509.CertPool) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// TestAPIServiceCABundle runs the pool controller (as its ServiceAccount,
// with the shipped RBAC) beside a real kube-apiserver that holds the
// shipped Service and APIService of the sandbox-apiserver, and the
// sandbox-apiserver with the serving certificate the controller issued,
// laid out as kubelet mounts its Secret. The APIService gets the caBundle
// of the CA that signed that certificate; a client that trusts only that
// bundle reaches the sandbox-apiserver's /healthz under its Service's name;
// kube-apiserver, verifying with the same bundle, declares the APIService
// Available and proxies discovery to it; and a new certificate in the
// mounted files is served without a restart.
func TestAPIServiceCABundle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const svcName = poolcontroller.DefaultSandboxAPIServerService
	host := svcName + "." + sysNS + ".svc"
	// Before kube-apiserver starts: its aggregator takes the resolver then.
	t.Cleanup(kubeapiserverapp.SetServiceResolverForTests(listenerResolver{
		namespace: sysNS, name: svcName, url: &url.URL{Scheme: "https", Host: ln.Addr().String()},
	}))
	cp := framework.StartWithRBAC(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	admin := aggregatorclientset.NewForConfigOrDie(cp.Config)

	// The shipped Service (with an endpoint the resolver stands in for) and
	// APIService, which must not skip verification.
	svc := &corev1.Service{}
	manifestObject(t, "sandbox-apiserver.yaml", "Service", svc)
	apiService := &apiregistrationv1.APIService{}
	manifestObject(t, "sandbox-apiserver.yaml", "APIService", apiService)
	if apiService.Spec.InsecureSkipTLSVerify || len(apiService.Spec.CABundle) != 0 {
		t.Fatalf("the shipped APIService: insecureSkipTLSVerify %v, caBundle %q; want neither",
			apiService.Spec.InsecureSkipTLSVerify, apiService.Spec.CABundle)
	}
	if svc.Name != svcName || svc.Namespace != sysNS || apiService.Name != poolcontroller.DefaultSandboxAPIServerAPIService ||
		apiService.Spec.Service == nil || apiService.Spec.Service.Name != svcName || apiService.Spec.Service.Namespace != sysNS {
		t.Fatalf("the shipped Service %s/%s and APIService %s (service %+v) are not the pool controller's defaults",
			svc.Namespace, svc.Name, apiService.Name, apiService.Spec.Service)
	}
	if _, err := cp.Kube.CoreV1().Services(sysNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kube.DiscoveryV1().EndpointSlices(sysNS).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svcName + "-test", Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.10"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](8443), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ApiregistrationV1().APIServices().Create(ctx, apiService, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Discovery of kube-apiserver must not wait for it after the test.
		_ = admin.ApiregistrationV1().APIServices().Delete(context.Background(), apiService.Name, metav1.DeleteOptions{})
	})

	// The pool controller, as its ServiceAccount, as cmd/pool-controller
	// runs it.
	pcConfig := rest.CopyConfig(cp.Config)
	pcConfig.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + sysNS + ":fast-sandbox-pool-controller",
		Groups:   []string{"system:authenticated", "system:serviceaccounts", "system:serviceaccounts:" + sysNS},
	}
	pcKube := kubernetes.NewForConfigOrDie(pcConfig)
	pcSandbox := versioned.NewForConfigOrDie(pcConfig)
	_, pcCtx := ktesting.NewTestContext(t)
	pcCtx, pcCancel := context.WithCancel(pcCtx)
	inf := poolcontroller.NewInformers(pcKube, pcSandbox, sysNS, 0)
	c, err := poolcontroller.NewControllerWithInformers(pcCtx, pcKube, pcSandbox, inf, sysNS, poolcontroller.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pcAggregator := aggregatorclientset.NewForConfigOrDie(pcConfig)
	if err := c.SetSandboxAPIServer(poolcontroller.SandboxAPIServerOptions{Client: pcAggregator}); err != nil {
		t.Fatal(err)
	}
	inf.Start(pcCtx.Done())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.Run(pcCtx, 1); err != nil {
			t.Errorf("pool controller: %v", err)
		}
	})
	t.Cleanup(func() { pcCancel(); wg.Wait(); inf.Shutdown() })

	// The APIService gets the caBundle of the CA that signed the serving
	// certificate.
	poll := kubetest.Poll{Timeout: time.Minute}
	serving := kubetest.WaitSecret(t, cp.Kube, sysNS, v1alpha1.SandboxAPIServerServingSecretName, poll)
	var caBundle []byte
	kubetest.Eventually(t, poll, "the APIService's caBundle", func(ctx context.Context) error {
		s, err := admin.ApiregistrationV1().APIServices().Get(ctx, apiService.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(s.Spec.CABundle) == 0 {
			return errors.New("no caBundle yet")
		}
		caBundle = s.Spec.CABundle
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
	if !bytes.Equal(caBundle, ca.CertPEM) || !bytes.Equal(serving.Data[agentpki.KeyCACert], ca.CertPEM) {
		t.Errorf("caBundle:\n%s\nSecret's ca.crt:\n%s\nwant the agent API's CA:\n%s", caBundle, serving.Data[agentpki.KeyCACert], ca.CertPEM)
	}
	leaf, err := x509.ParseCertificate(certDER(t, serving.Data[agentpki.KeyCert]))
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("the serving certificate is not signed by the CA: %v", err)
	}
	// Its RBAC reaches that APIService only.
	if _, err := pcAggregator.ApiregistrationV1().APIServices().Patch(ctx, "v1.apps", types.MergePatchType, []byte(`{}`),
		metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}, FieldManager: poolcontroller.ControllerName}); !apierrors.IsForbidden(err) {
		t.Errorf("the pool controller patching another APIService: %v, want Forbidden", err)
	}
	if _, err := pcAggregator.ApiregistrationV1().APIServices().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the pool controller listing every APIService: %v, want Forbidden", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caBundle) {
		t.Fatalf("no certificate in the caBundle %q", caBundle)
	}

	// The sandbox-apiserver, as its ServiceAccount, serving the mounted
	// Secret.
	servingDir, clientDir := t.TempDir(), t.TempDir()
	writeSecretDir(t, servingDir, serving, 1)
	writeSecretDir(t, clientDir, kubetest.WaitSecret(t, cp.Kube, sysNS, v1alpha1.SandboxAPIServerClientSecretName, poll), 1)
	kubeconfig := srKubeconfig(t, cp.Config, sysNS, "fast-sandbox-apiserver")
	srStartServer(ctx, t, cancel, ln, kubeconfig, sysNS, clientDir, func(cert *genericoptions.GeneratableKeyCert) {
		cert.CertKey.CertFile = filepath.Join(servingDir, agentpki.KeyCert)
		cert.CertKey.KeyFile = filepath.Join(servingDir, agentpki.KeyKey)
	})

	// A client that trusts only the caBundle reaches /healthz by the
	// Service's name.
	trusting := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12},
	}}
	kubetest.Eventually(t, poll, "/healthz through TLS verified with the caBundle", func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+ln.Addr().String()+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := trusting.Do(req)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return nil
	})
	if got, err := servedLeaf(ln.Addr().String(), host, roots); err != nil || !got.Equal(leaf) {
		t.Errorf("served certificate %v, %v; want the one of the Secret", got, err)
	}
	// Another CA does not verify it.
	otherCert, otherKey, err := agentpki.NewCA("other", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := agentpki.ParseCA(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.Cert)
	if _, err := servedLeaf(ln.Addr().String(), host, otherRoots); err == nil {
		t.Error("a client trusting another CA accepted the sandbox-apiserver")
	}

	// kube-apiserver verifies it with the caBundle: Available, and
	// discovery of the group goes through.
	kubetest.Eventually(t, poll, "APIService Available", func(ctx context.Context) error {
		s, err := admin.ApiregistrationV1().APIServices().Get(ctx, apiService.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range s.Status.Conditions {
			if cond.Type == apiregistrationv1.Available {
				if cond.Status != apiregistrationv1.ConditionTrue {
					return fmt.Errorf("Available=%s: %s: %s", cond.Status, cond.Reason, cond.Message)
				}
				return nil
			}
		}
		return errors.New("no Available condition yet")
	})
	body, err := cp.Kube.Discovery().RESTClient().Get().AbsPath("/apis/subresources.fast-sandbox.io/v1alpha1").DoRaw(ctx)
	if err != nil || !strings.Contains(string(body), "sandboxes/exec") {
		t.Errorf("discovery through kube-apiserver: %v: %s", err, body)
	}

	// A new certificate in the mounted files (as kubelet updates the
	// Secret on a renewal) is served without a restart.
	certPEM, keyPEM, err := ca.IssueServing(leaf.DNSNames, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	renewed := serving.DeepCopy()
	renewed.Data[agentpki.KeyCert], renewed.Data[agentpki.KeyKey] = certPEM, keyPEM
	writeSecretDir(t, servingDir, renewed, 2)
	newDER := certDER(t, certPEM)
	kubetest.Eventually(t, kubetest.Poll{Timeout: 2 * time.Minute}, "the renewed certificate served", func(context.Context) error {
		got, err := servedLeaf(ln.Addr().String(), host, roots)
		if err != nil {
			return err
		}
		if !bytes.Equal(got.Raw, newDER) {
			return fmt.Errorf("still serving the certificate with serial %s", got.SerialNumber)
		}
		return nil
	})
}
