package poolcontroller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	sbxfake "github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

const testSysNS = "fast-sandbox-system"

// credsEnv is a controller over fake clients with a fake clock, its
// informers running.
type credsEnv struct {
	t     *testing.T
	ctx   context.Context
	kube  *k8sfake.Clientset
	clock *clocktesting.FakeClock
	c     *Controller
}

func newCredsEnv(t *testing.T, kube *k8sfake.Clientset, now time.Time) *credsEnv {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	client := sbxfake.NewSimpleClientset()
	clock := clocktesting.NewFakeClock(now)
	inf := NewInformers(kube, client, testSysNS, 0)
	c, err := NewControllerWithInformers(ctx, kube, client, inf, testSysNS, Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	inf.Start(ctx.Done())
	t.Cleanup(func() { cancel(); inf.Shutdown() })
	for _, synced := range c.synced {
		if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 5*time.Second, true,
			func(context.Context) (bool, error) { return synced(), nil }); err != nil {
			t.Fatal("informers did not sync")
		}
	}
	return &credsEnv{t: t, ctx: ctx, kube: kube, clock: clock, c: c}
}

func (e *credsEnv) secret(name string) *corev1.Secret {
	e.t.Helper()
	s, err := e.kube.CoreV1().Secrets(testSysNS).Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("Secret %s: %v", name, err)
	}
	return s
}

// waitSeen waits until the controller's Secret informer shows name (or,
// with gone, no longer shows it).
func (e *credsEnv) waitSeen(name string, gone bool) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(e.ctx, 10*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		_, err := e.c.secretLister.Secrets(testSysNS).Get(name)
		return gone == apierrors.IsNotFound(err), nil
	})
	if err != nil {
		e.t.Fatalf("informer never showed Secret %s (gone=%v)", name, gone)
	}
}

func identity(t *testing.T, certPEM, caPEM []byte) string {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: cert.NotBefore.Add(time.Hour),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("certificate does not verify against the CA: %v", err)
	}
	id, err := agentpki.IdentityOf(cert)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The CA is made once and kept: a restarted controller issues from the same
// one, so certificates already mounted stay valid.
func TestCAIsMadeOnceAndKept(t *testing.T) {
	kube := k8sfake.NewClientset()
	now := time.Now()
	e := newCredsEnv(t, kube, now)
	if err := e.c.ensureSchedulerCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	ca := e.secret(v1alpha1.AgentCASecretName)
	sched := e.secret(v1alpha1.SchedulerClientSecretName)
	if got := identity(t, sched.Data[agentpki.KeyCert], ca.Data[agentpki.KeyCACert]); got != agentpki.SchedulerIdentity {
		t.Errorf("scheduler identity %q", got)
	}
	if !bytes.Equal(sched.Data[agentpki.KeyCACert], ca.Data[agentpki.KeyCACert]) {
		t.Error("the scheduler's Secret does not carry the CA")
	}

	restarted := newCredsEnv(t, kube, now)
	if err := restarted.c.ensureSchedulerCredentials(restarted.ctx); err != nil {
		t.Fatal(err)
	}
	if again := restarted.secret(v1alpha1.AgentCASecretName); !bytes.Equal(again.Data[agentpki.KeyCACert], ca.Data[agentpki.KeyCACert]) {
		t.Error("a restarted controller made a new CA")
	}
	if again := restarted.secret(v1alpha1.SchedulerClientSecretName); !bytes.Equal(again.Data[agentpki.KeyCert], sched.Data[agentpki.KeyCert]) {
		t.Error("a restarted controller reissued a scheduler certificate that was not due")
	}
}

// Certificates are renewed once less than a third of their life is left,
// not before.
func TestCertificatesAreRenewedWhenDue(t *testing.T) {
	kube := k8sfake.NewClientset()
	e := newCredsEnv(t, kube, time.Now())
	pool := &v1alpha1.SandboxPool{ObjectMeta: metav1.ObjectMeta{Name: "py", UID: "pool-uid"}}
	if err := e.c.ensureSchedulerCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.c.issueAgentSecret(e.ctx, pool, "py-agent-x1"); err != nil {
		t.Fatal(err)
	}
	agentName := v1alpha1.AgentTLSSecretName("py-agent-x1")
	e.waitSeen(agentName, false)
	sched0, agent0 := e.secret(v1alpha1.SchedulerClientSecretName), e.secret(agentName)
	caPEM := e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]
	if got := identity(t, agent0.Data[agentpki.KeyCert], caPEM); got != agentpki.AgentIdentity(testSysNS, "py-agent-x1") {
		t.Errorf("agent identity %q", got)
	}

	e.clock.Step(200 * 24 * time.Hour) // 165 of 365 days left
	if err := e.c.ensureSchedulerCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.c.issueAgentSecret(e.ctx, pool, "py-agent-x1"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.secret(v1alpha1.SchedulerClientSecretName).Data[agentpki.KeyCert], sched0.Data[agentpki.KeyCert]) ||
		!bytes.Equal(e.secret(agentName).Data[agentpki.KeyCert], agent0.Data[agentpki.KeyCert]) {
		t.Error("renewed with more than a third of the lifetime left")
	}

	e.clock.Step(100 * 24 * time.Hour) // 65 days left
	if err := e.c.ensureSchedulerCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.c.issueAgentSecret(e.ctx, pool, "py-agent-x1"); err != nil {
		t.Fatal(err)
	}
	sched1, agent1 := e.secret(v1alpha1.SchedulerClientSecretName), e.secret(agentName)
	if bytes.Equal(sched1.Data[agentpki.KeyCert], sched0.Data[agentpki.KeyCert]) {
		t.Error("the scheduler's certificate was not renewed")
	}
	if bytes.Equal(agent1.Data[agentpki.KeyCert], agent0.Data[agentpki.KeyCert]) {
		t.Error("the agent's certificate was not renewed")
	}
	if got := identity(t, agent1.Data[agentpki.KeyCert], caPEM); got != agentpki.AgentIdentity(testSysNS, "py-agent-x1") {
		t.Errorf("renewed agent identity %q", got)
	}
}

// A running agent Pod keeps (or gets back) its certificate; the certificate
// of a Pod that is gone is deleted once the grace for a Pod not yet seen has
// passed.
func TestAgentSecretsFollowTheirPods(t *testing.T) {
	kube := k8sfake.NewClientset()
	e := newCredsEnv(t, kube, time.Now())
	pool := &v1alpha1.SandboxPool{ObjectMeta: metav1.ObjectMeta{Name: "py", UID: "pool-uid"}}
	live := AgentPod(pool, testSysNS, "py-agent-live", "")
	for _, name := range []string{"py-agent-live", "py-agent-gone"} {
		if err := e.c.issueAgentSecret(e.ctx, pool, name); err != nil {
			t.Fatal(err)
		}
		e.waitSeen(v1alpha1.AgentTLSSecretName(name), false)
	}
	// Within the grace (from when the controller first saw it orphaned, by
	// its own clock): both kept, and a look again is asked for.
	requeue, err := e.c.syncAgentSecrets(e.ctx, pool, []*corev1.Pod{live})
	if err != nil {
		t.Fatal(err)
	}
	if requeue <= 0 || requeue > DefaultOrphanedCertificateGrace {
		t.Errorf("requeue %v, want within the grace %v", requeue, DefaultOrphanedCertificateGrace)
	}
	if _, err := kube.CoreV1().Secrets(testSysNS).Get(e.ctx, v1alpha1.AgentTLSSecretName("py-agent-gone"), metav1.GetOptions{}); err != nil {
		t.Errorf("deleted within the grace: %v", err)
	}
	// After it: the gone Pod's goes, the live one's stays.
	e.clock.Step(DefaultOrphanedCertificateGrace / 2)
	if _, err := e.c.syncAgentSecrets(e.ctx, pool, []*corev1.Pod{live}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Secrets(testSysNS).Get(e.ctx, v1alpha1.AgentTLSSecretName("py-agent-gone"), metav1.GetOptions{}); err != nil {
		t.Errorf("deleted half way through the grace: %v", err)
	}
	e.clock.Step(DefaultOrphanedCertificateGrace)
	if _, err := e.c.syncAgentSecrets(e.ctx, pool, []*corev1.Pod{live}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Secrets(testSysNS).Get(e.ctx, v1alpha1.AgentTLSSecretName("py-agent-gone"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the gone agent's Secret: %v, want NotFound", err)
	}
	e.secret(v1alpha1.AgentTLSSecretName("py-agent-live"))

	// A live Pod whose Secret was deleted gets a new one.
	if err := kube.CoreV1().Secrets(testSysNS).Delete(e.ctx, v1alpha1.AgentTLSSecretName("py-agent-live"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitSeen(v1alpha1.AgentTLSSecretName("py-agent-live"), true)
	if _, err := e.c.syncAgentSecrets(e.ctx, pool, []*corev1.Pod{live}); err != nil {
		t.Fatal(err)
	}
	e.secret(v1alpha1.AgentTLSSecretName("py-agent-live"))
}

// The sandbox-apiserver's client certificate is kept as the scheduler's:
// issued by the agent API's CA with the sandbox-apiserver's identity, kept
// while not due, renewed once due, and reissued when the Secret is lost.
func TestAPIServerCredentials(t *testing.T) {
	kube := k8sfake.NewClientset()
	e := newCredsEnv(t, kube, time.Now())
	if err := e.c.ensureClientCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	caPEM := e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]
	api0 := e.secret(v1alpha1.SandboxAPIServerClientSecretName)
	if api0.Type != corev1.SecretTypeTLS {
		t.Errorf("type %q, want %q", api0.Type, corev1.SecretTypeTLS)
	}
	if got := identity(t, api0.Data[agentpki.KeyCert], caPEM); got != agentpki.APIServerIdentity {
		t.Errorf("sandbox-apiserver identity %q, want %q", got, agentpki.APIServerIdentity)
	}
	if !bytes.Equal(api0.Data[agentpki.KeyCACert], caPEM) || len(api0.Data[agentpki.KeyKey]) == 0 {
		t.Error("the sandbox-apiserver's Secret lacks the CA or the key")
	}
	if got := identity(t, e.secret(v1alpha1.SchedulerClientSecretName).Data[agentpki.KeyCert], caPEM); got != agentpki.SchedulerIdentity {
		t.Errorf("scheduler identity %q", got)
	}

	e.clock.Step(200 * 24 * time.Hour) // 165 of 365 days left
	if err := e.c.ensureAPIServerCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.secret(v1alpha1.SandboxAPIServerClientSecretName).Data[agentpki.KeyCert], api0.Data[agentpki.KeyCert]) {
		t.Error("renewed with more than a third of the lifetime left")
	}

	e.clock.Step(100 * 24 * time.Hour) // 65 days left
	if err := e.c.ensureAPIServerCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	api1 := e.secret(v1alpha1.SandboxAPIServerClientSecretName)
	if bytes.Equal(api1.Data[agentpki.KeyCert], api0.Data[agentpki.KeyCert]) {
		t.Fatal("the sandbox-apiserver's certificate was not renewed")
	}
	if got := identity(t, api1.Data[agentpki.KeyCert], caPEM); got != agentpki.APIServerIdentity {
		t.Errorf("renewed sandbox-apiserver identity %q", got)
	}

	if err := kube.CoreV1().Secrets(testSysNS).Delete(e.ctx, v1alpha1.SandboxAPIServerClientSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ensureClientCredentials(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := identity(t, e.secret(v1alpha1.SandboxAPIServerClientSecretName).Data[agentpki.KeyCert], caPEM); got != agentpki.APIServerIdentity {
		t.Errorf("reissued sandbox-apiserver identity %q", got)
	}
}

// servingLeaf parses the serving certificate of s and checks it against
// the CA bundle caPEM for host, as kube-apiserver does with the APIService's
// caBundle.
func servingLeaf(t *testing.T, s *corev1.Secret, caPEM []byte, host string, at time.Time) *x509.Certificate {
	t.Helper()
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret %s: type %q, want %q", s.Name, s.Type, corev1.SecretTypeTLS)
	}
	pair, err := tls.X509KeyPair(s.Data[agentpki.KeyCert], s.Data[agentpki.KeyKey])
	if err != nil {
		t.Fatalf("Secret %s: %v", s.Name, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no CA certificate in %q", caPEM)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the serving certificate does not verify for %s: %v", host, err)
	}
	if len(leaf.URIs) != 0 || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("URIs %v, ExtKeyUsage %v: want none and server authentication only", leaf.URIs, leaf.ExtKeyUsage)
	}
	return leaf
}

// The sandbox-apiserver's serving certificate is issued by the agent API's
// CA for the DNS names of its Service, kept while not due, renewed once
// due, and issued anew when the Service's names change or the Secret is
// lost. Every write names the field manager.
func TestServingCertificate(t *testing.T) {
	kube := k8sfake.NewClientset()
	e := newCredsEnv(t, kube, time.Now())
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	caPEM := e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]
	s0 := e.secret(v1alpha1.SandboxAPIServerServingSecretName)
	if !bytes.Equal(s0.Data[agentpki.KeyCACert], caPEM) {
		t.Errorf("ca.crt is not the CA:\n%s", s0.Data[agentpki.KeyCACert])
	}
	leaf := servingLeaf(t, s0, caPEM, "fast-sandbox-apiserver."+testSysNS+".svc", e.clock.Now())
	want := []string{"fast-sandbox-apiserver", "fast-sandbox-apiserver." + testSysNS,
		"fast-sandbox-apiserver." + testSysNS + ".svc", "fast-sandbox-apiserver." + testSysNS + ".svc.cluster.local"}
	if !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS names %v, want %v", leaf.DNSNames, want)
	}

	e.clock.Step(200 * 24 * time.Hour) // 165 of 365 days left
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.secret(v1alpha1.SandboxAPIServerServingSecretName).Data[agentpki.KeyCert], s0.Data[agentpki.KeyCert]) {
		t.Error("renewed with more than a third of the lifetime left")
	}
	e.clock.Step(100 * 24 * time.Hour) // 65 days left
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	s1 := e.secret(v1alpha1.SandboxAPIServerServingSecretName)
	if bytes.Equal(s1.Data[agentpki.KeyCert], s0.Data[agentpki.KeyCert]) || bytes.Equal(s1.Data[agentpki.KeyKey], s0.Data[agentpki.KeyKey]) {
		t.Fatal("the serving certificate and key were not renewed")
	}
	if !bytes.Equal(s1.Data[agentpki.KeyCACert], caPEM) {
		t.Error("a renewal from the same CA changed ca.crt")
	}
	servingLeaf(t, s1, caPEM, "fast-sandbox-apiserver."+testSysNS+".svc", e.clock.Now())

	// Other names (the flags of cmd/pool-controller): issued anew for them.
	if err := e.c.SetSandboxAPIServer(SandboxAPIServerOptions{ServiceName: "sbx-api", ClusterDomain: "example.org"}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	leaf = servingLeaf(t, e.secret(v1alpha1.SandboxAPIServerServingSecretName), caPEM, "sbx-api."+testSysNS+".svc", e.clock.Now())
	want = []string{"sbx-api", "sbx-api." + testSysNS, "sbx-api." + testSysNS + ".svc", "sbx-api." + testSysNS + ".svc.example.org"}
	if !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS names %v, want %v", leaf.DNSNames, want)
	}

	// Lost: issued again.
	if err := kube.CoreV1().Secrets(testSysNS).Delete(e.ctx, v1alpha1.SandboxAPIServerServingSecretName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	servingLeaf(t, e.secret(v1alpha1.SandboxAPIServerServingSecretName), caPEM, "sbx-api."+testSysNS+".svc", e.clock.Now())

	writes := 0
	for _, a := range kube.Actions() {
		if manager, ok := fieldManagerOf(a); ok && a.GetResource().Resource == "secrets" {
			writes++
			if manager != ControllerName {
				t.Errorf("%s %s: field manager %q, want %q", describeAction(a), nameOf(a), manager, ControllerName)
			}
		}
	}
	if writes < 5 {
		t.Errorf("%d Secret writes, want at least 5 (CA, issue, renewal, new names, reissue)", writes)
	}
	for _, bad := range []SandboxAPIServerOptions{{ServiceName: "Bad_Name"}, {ServiceNamespace: "a.b"}, {ClusterDomain: "-x"}} {
		if err := (&Controller{namespace: testSysNS}).SetSandboxAPIServer(bad); err == nil {
			t.Errorf("SetSandboxAPIServer(%+v) succeeded", bad)
		}
	}
}

// A serving certificate from another CA (the CA Secret was replaced) is
// issued anew from the current one; its Secret's ca.crt holds both CAs
// while the sandbox-apiserver may still serve the old certificate, then the
// current one only.
func TestServingCertificateFollowsANewCA(t *testing.T) {
	now := time.Now()
	oldCertPEM, certPEM, keyPEM := servingFromOldCA(t, now)
	kube := k8sfake.NewClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SandboxAPIServerServingSecretName, Namespace: testSysNS},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: oldCertPEM},
	})
	e := newCredsEnv(t, kube, now)
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	caPEM := e.secret(v1alpha1.AgentCASecretName).Data[agentpki.KeyCACert]
	s := e.secret(v1alpha1.SandboxAPIServerServingSecretName)
	host := "fast-sandbox-apiserver." + testSysNS + ".svc"
	servingLeaf(t, s, caPEM, host, now)
	bundle := s.Data[agentpki.KeyCACert]
	if want := append(slices.Clone(caPEM), oldCertPEM...); !bytes.Equal(bundle, want) {
		t.Fatalf("ca.crt during the change of CA:\n%s\nwant the new CA, then the old one", bundle)
	}
	// The bundle verifies the old certificate too (still served until the
	// Secret reaches the Pod).
	servingLeaf(t, &corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM}},
		bundle, host, now)

	e.clock.Step(servingCATransition / 2)
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.secret(v1alpha1.SandboxAPIServerServingSecretName).Data[agentpki.KeyCACert]; !bytes.Equal(got, bundle) {
		t.Errorf("the old CA went before the transition ended:\n%s", got)
	}
	e.clock.Step(servingCATransition)
	if err := e.c.ensureServingCredential(e.ctx); err != nil {
		t.Fatal(err)
	}
	s2 := e.secret(v1alpha1.SandboxAPIServerServingSecretName)
	if !bytes.Equal(s2.Data[agentpki.KeyCACert], caPEM) {
		t.Errorf("ca.crt after the transition:\n%s\nwant the current CA only", s2.Data[agentpki.KeyCACert])
	}
	if !bytes.Equal(s2.Data[agentpki.KeyCert], s.Data[agentpki.KeyCert]) {
		t.Error("the certificate was issued again when only ca.crt had to change")
	}
}

// servingFromOldCA makes a CA other than the controller's ("old CA", made
// an hour ago) and a serving certificate from it for the sandbox-apiserver's
// default names, as a replaced CA Secret leaves behind.
func servingFromOldCA(t *testing.T, now time.Time) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caPEM, caKeyPEM, err := agentpki.NewCA("old CA", now.Add(-time.Hour), agentpki.DefaultCAValidity)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := agentpki.ParseCA(caPEM, caKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	names := SandboxAPIServerOptions{}.withDefaults(testSysNS).DNSNames()
	certPEM, keyPEM, err = ca.IssueServing(names, now.Add(-time.Hour), agentpki.DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	return caPEM, certPEM, keyPEM
}
