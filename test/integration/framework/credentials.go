package framework

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// SystemNamespace makes sure the system namespace exists, with the
// default ServiceAccount that Pod admission looks for, and returns it.
func (cp *ControlPlane) SystemNamespace(t *testing.T) string {
	t.Helper()
	kubetest.EnsureNamespace(t, cp.Kube, v1alpha1.DefaultSystemNamespace)
	return v1alpha1.DefaultSystemNamespace
}

// AgentCredentials are the agent API's credentials of a test, made as the
// pool controller makes them: a CA, and the scheduler's client certificate
// in its Secret in the system namespace.
type AgentCredentials struct {
	CA *agentpki.CA
	// Scheduler holds the scheduler's client certificate, for a test that
	// calls agents itself.
	Scheduler *agentpki.ClientCredentials
}

// AgentCredentials makes a CA and writes the scheduler's Secret.
func (cp *ControlPlane) AgentCredentials(t *testing.T) *AgentCredentials {
	t.Helper()
	ns := cp.SystemNamespace(t)
	now := time.Now()
	caPEM, caKey, err := agentpki.NewCA("integration test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := agentpki.ParseCA(caPEM, caKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueScheduler(now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := agentpki.NewClient(certPEM, keyPEM, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cp.Kube.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SchedulerClientSecretName},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: caPEM},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the scheduler's Secret: %v", err)
	}
	return &AgentCredentials{CA: ca, Scheduler: client}
}

// ServerTLS is the TLS configuration of the agent Pod podName (in the
// system namespace), as the agent makes it from its mounted Secret.
func (c *AgentCredentials) ServerTLS(t *testing.T, podName string) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := c.CA.IssueAgent(v1alpha1.DefaultSystemNamespace, podName, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: c.CA.CertPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := agentpki.ServerConfig(filepath.Join(dir, agentpki.KeyCert), filepath.Join(dir, agentpki.KeyKey),
		filepath.Join(dir, agentpki.KeyCACert))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// ClientFor is an HTTP client with the scheduler's credentials that talks
// only to the agent Pod podName.
func (c *AgentCredentials) ClientFor(podName string) *http.Client {
	return &http.Client{Transport: c.Scheduler.Transport(nil, v1alpha1.DefaultSystemNamespace, podName)}
}
