package poolcontroller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// The credentials of the agent API. The controller keeps a CA in the
// system namespace (v1alpha1.AgentCASecretName), issues each agent Pod a
// server certificate naming it (v1alpha1.AgentTLSSecretName, created before
// the Pod, mounted only by it), the scheduler a client certificate
// (v1alpha1.SchedulerClientSecretName) and the sandbox-apiserver one
// (v1alpha1.SandboxAPIServerClientSecretName), and renews them before they
// expire. There is no shared secret: a credential names one Pod or one
// component.
//
// The same CA signs the sandbox-apiserver's serving certificate
// (v1alpha1.SandboxAPIServerServingSecretName, naming its Service), which
// kube-apiserver's aggregation layer verifies against the caBundle the
// controller writes into the APIService (apiservice.go).

// Event reasons of the credentials.
const (
	EventIssuedCertificate = "IssuedCertificate"
	EventFailedIssue       = "FailedIssue"
)

// credentialsCheckPeriod is how often the client certificates are checked
// for renewal.
const credentialsCheckPeriod = 10 * time.Minute

// servingCATransition is how long, from the NotBefore of a serving
// certificate issued by a CA other than its predecessor's (a few minutes
// before it was issued), the predecessor's CA stays in the Secret's ca.crt
// and so in the APIService's caBundle. The sandbox-apiserver serves the old
// certificate until kubelet has updated the mounted Secret (its sync period
// plus its Secret cache's TTL, a minute each by default) and
// k8s.io/apiserver has re-read the files (within a minute); meanwhile
// kube-apiserver must trust both.
const servingCATransition = 15 * time.Minute

// credentials holds the CA once read or made, since when (by the
// controller's clock) each agent certificate Secret has been seen without
// its Pod, and what the sandbox-apiserver's serving certificate names.
type credentials struct {
	mu       sync.Mutex
	ca       *agentpki.CA
	orphaned map[string]map[string]time.Time // by pool, then Secret name and UID

	// apiServer is set by SetSandboxAPIServer before Run; its zero value
	// means the defaults.
	apiServer SandboxAPIServerOptions
	// apiService keeps the APIService's caBundle; nil when no client of
	// apiregistration.k8s.io was given.
	apiService *apiServiceKeeper
}

// ca returns the agent API's CA, reading its Secret or creating it.
func (c *Controller) ca(ctx context.Context) (*agentpki.CA, error) {
	c.creds.mu.Lock()
	defer c.creds.mu.Unlock()
	if c.creds.ca != nil {
		return c.creds.ca, nil
	}
	secrets := c.kubeClient.CoreV1().Secrets(c.namespace)
	secret, err := secrets.Get(ctx, v1alpha1.AgentCASecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		certPEM, keyPEM, gerr := agentpki.NewCA("fast-sandbox agent API CA", c.clock.Now(), agentpki.DefaultCAValidity)
		if gerr != nil {
			return nil, fmt.Errorf("making the agent API CA: %w", gerr)
		}
		secret, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.AgentCASecretName, Namespace: c.namespace},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{agentpki.KeyCACert: certPEM, agentpki.KeyCAKey: keyPEM},
		}, metav1.CreateOptions{FieldManager: ControllerName})
		if apierrors.IsAlreadyExists(err) {
			secret, err = secrets.Get(ctx, v1alpha1.AgentCASecretName, metav1.GetOptions{})
		} else if err == nil {
			klog.FromContext(ctx).Info("Created the agent API CA", "secret", klog.KObj(secret))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("getting the agent API CA Secret %s/%s: %w", c.namespace, v1alpha1.AgentCASecretName, err)
	}
	ca, err := agentpki.ParseCA(secret.Data[agentpki.KeyCACert], secret.Data[agentpki.KeyCAKey])
	if err != nil {
		return nil, fmt.Errorf("the agent API CA Secret %s/%s: %w", c.namespace, v1alpha1.AgentCASecretName, err)
	}
	c.creds.ca = ca
	return ca, nil
}

// clientCredential is a client certificate of the agent API that the
// controller keeps in a Secret of the system namespace for one component.
type clientCredential struct {
	secretName string
	// who names the component in messages ("the scheduler").
	who string
	// issue issues the component's certificate (its identity) from ca.
	issue func(ca *agentpki.CA, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error)
}

var (
	schedulerClient = clientCredential{
		secretName: v1alpha1.SchedulerClientSecretName,
		who:        "the scheduler",
		issue:      (*agentpki.CA).IssueScheduler,
	}
	apiServerClient = clientCredential{
		secretName: v1alpha1.SandboxAPIServerClientSecretName,
		who:        "the sandbox-apiserver",
		issue:      (*agentpki.CA).IssueAPIServer,
	}
	// clientCredentials are the client certificates runCredentials keeps.
	clientCredentials = []clientCredential{schedulerClient, apiServerClient}
)

// ensureClientCredential makes sure the client certificate cred exists, is
// issued by the current CA and is not due for renewal.
func (c *Controller) ensureClientCredential(ctx context.Context, cred clientCredential) error {
	ca, err := c.ca(ctx)
	if err != nil {
		return err
	}
	secrets := c.kubeClient.CoreV1().Secrets(c.namespace)
	cur, err := secrets.Get(ctx, cred.secretName, metav1.GetOptions{})
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("getting Secret %s/%s: %w", c.namespace, cred.secretName, err)
	}
	if exists && !agentpki.NeedsRenewal(cur.Data[agentpki.KeyCert], c.clock.Now()) &&
		string(cur.Data[agentpki.KeyCACert]) == string(ca.CertPEM) {
		return nil
	}
	certPEM, keyPEM, err := cred.issue(ca, c.clock.Now(), agentpki.DefaultCertValidity)
	if err != nil {
		return fmt.Errorf("issuing the client certificate of %s: %w", cred.who, err)
	}
	data := map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: ca.CertPEM}
	if !exists {
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: cred.secretName, Namespace: c.namespace},
			Type:       corev1.SecretTypeTLS, Data: data,
		}, metav1.CreateOptions{FieldManager: ControllerName})
	} else {
		cur = cur.DeepCopy()
		cur.Data = data
		_, err = secrets.Update(ctx, cur, metav1.UpdateOptions{FieldManager: ControllerName})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("writing Secret %s/%s: %w", c.namespace, cred.secretName, err)
	}
	klog.FromContext(ctx).Info("Issued a client certificate of the agent API", "for", cred.who, "secret", klog.KRef(c.namespace, cred.secretName))
	return nil
}

// ensureSchedulerCredentials makes sure the scheduler's client certificate
// exists and is not due for renewal.
func (c *Controller) ensureSchedulerCredentials(ctx context.Context) error {
	return c.ensureClientCredential(ctx, schedulerClient)
}

// ensureAPIServerCredentials makes sure the sandbox-apiserver's client
// certificate exists and is not due for renewal.
func (c *Controller) ensureAPIServerCredentials(ctx context.Context) error {
	return c.ensureClientCredential(ctx, apiServerClient)
}

// ensureClientCredentials keeps every client certificate; one failing does
// not hold back the others.
func (c *Controller) ensureClientCredentials(ctx context.Context) error {
	var errs []error
	for _, cred := range clientCredentials {
		errs = append(errs, c.ensureClientCredential(ctx, cred))
	}
	return errors.Join(errs...)
}

// ensureServingCredential makes sure the sandbox-apiserver's serving
// certificate Secret exists, is issued by the current CA for the DNS names
// of its Service and is not due for renewal, and that its ca.crt holds the
// CA(s) that verify it: the current CA and, for servingCATransition after a
// certificate from a new CA was issued, the one that signed its predecessor.
func (c *Controller) ensureServingCredential(ctx context.Context) error {
	ca, err := c.ca(ctx)
	if err != nil {
		return err
	}
	o := c.creds.apiServer.withDefaults(c.namespace)
	ns, name := o.ServiceNamespace, v1alpha1.SandboxAPIServerServingSecretName
	secrets := c.kubeClient.CoreV1().Secrets(ns)
	cur, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cur, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("getting Secret %s/%s: %w", ns, name, err)
	}
	data, reason, err := servingSecretData(ca, cur, o.DNSNames(), c.clock.Now())
	if err != nil || data == nil {
		return err
	}
	if cur == nil {
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Type:       corev1.SecretTypeTLS, Data: data,
		}, metav1.CreateOptions{FieldManager: ControllerName})
	} else {
		updated := cur.DeepCopy()
		updated.Data = data
		_, err = secrets.Update(ctx, updated, metav1.UpdateOptions{FieldManager: ControllerName})
	}
	if err != nil {
		return fmt.Errorf("writing Secret %s/%s: %w", ns, name, err)
	}
	logger := klog.FromContext(ctx)
	if reason == "" {
		logger.Info("Updated the CAs of the sandbox-apiserver's serving certificate", "secret", klog.KRef(ns, name))
	} else {
		logger.Info("Issued the sandbox-apiserver's serving certificate", "secret", klog.KRef(ns, name), "reason", reason, "dnsNames", o.DNSNames())
	}
	return nil
}

// servingSecretData is what the serving certificate Secret cur (nil when
// missing) should hold at now, or nil when it holds it already. reason says
// why a certificate is issued; it is empty when only ca.crt changes.
func servingSecretData(ca *agentpki.CA, cur *corev1.Secret, dnsNames []string, now time.Time) (data map[string][]byte, reason string, err error) {
	if cur == nil {
		reason = "the Secret does not exist"
	} else {
		var leaf *x509.Certificate
		if leaf, reason = servingRenewalReason(ca, cur.Data, dnsNames, now); reason == "" {
			// Up to date: the previous CA goes once its transition is over.
			bundle := ca.CertPEM
			if now.Sub(leaf.NotBefore) < servingCATransition && holdsCert(cur.Data[agentpki.KeyCACert], ca.Cert) {
				bundle = cur.Data[agentpki.KeyCACert]
			}
			if bytes.Equal(bundle, cur.Data[agentpki.KeyCACert]) {
				return nil, "", nil
			}
			data = maps.Clone(cur.Data)
			data[agentpki.KeyCACert] = bundle
			return data, "", nil
		}
	}
	certPEM, keyPEM, err := ca.IssueServing(dnsNames, now, agentpki.DefaultCertValidity)
	if err != nil {
		return nil, "", fmt.Errorf("issuing the serving certificate of the sandbox-apiserver: %w", err)
	}
	bundle := slices.Clone(ca.CertPEM)
	if cur != nil {
		bundle = append(bundle, previousSigners(ca, cur.Data, now)...)
	}
	return map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: bundle}, reason, nil
}

// servingRenewalReason says why the serving certificate in data must be
// issued anew at now, or returns its leaf and "" when it need not.
func servingRenewalReason(ca *agentpki.CA, data map[string][]byte, dnsNames []string, now time.Time) (*x509.Certificate, string) {
	pair, err := tls.X509KeyPair(data[agentpki.KeyCert], data[agentpki.KeyKey])
	if err != nil {
		return nil, "it holds no certificate with its key"
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, "its certificate does not parse"
	}
	if agentpki.NeedsRenewal(data[agentpki.KeyCert], now) {
		return nil, "it is due for renewal"
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, "it is not issued by the current CA"
	}
	if !slices.Equal(slices.Sorted(slices.Values(leaf.DNSNames)), slices.Sorted(slices.Values(dnsNames))) {
		return nil, "it names other DNS names"
	}
	return leaf, ""
}

// previousSigners are the PEM CA certificates of data's ca.crt, other than
// ca, that signed data's certificate, while that certificate and they are
// still valid at now: the CA the sandbox-apiserver serves from until the
// new certificate reaches it.
func previousSigners(ca *agentpki.CA, data map[string][]byte, now time.Time) []byte {
	block, _ := pem.Decode(data[agentpki.KeyCert])
	if block == nil || block.Type != "CERTIFICATE" {
		return nil
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !now.Before(leaf.NotAfter) {
		return nil
	}
	var out []byte
	for rest := data[agentpki.KeyCACert]; ; {
		if block, rest = pem.Decode(rest); block == nil {
			return out
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil || block.Type != "CERTIFICATE" || cert.Equal(ca.Cert) || !now.Before(cert.NotAfter) ||
			leaf.CheckSignatureFrom(cert) != nil {
			continue
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
}

// holdsCert reports whether the PEM bundle holds cert.
func holdsCert(bundle []byte, cert *x509.Certificate) bool {
	for rest := bundle; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return false
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil && c.Equal(cert) {
			return true
		}
	}
}

// runCredentials keeps the client certificates (the scheduler's and the
// sandbox-apiserver's), the sandbox-apiserver's serving certificate and,
// when a client of apiregistration.k8s.io was given, its APIService's
// caBundle, until ctx ends.
func (c *Controller) runCredentials(ctx context.Context) {
	if k := c.creds.apiService; k != nil {
		go k.run(ctx, c)
	}
	for {
		err := errors.Join(c.ensureClientCredentials(ctx), c.ensureServingCredential(ctx))
		// The caBundle follows the serving Secret (and is checked on this
		// period even when nothing changed).
		c.enqueueAPIService()
		if err != nil {
			klog.FromContext(ctx).Error(err, "Keeping the certificates of the agent API and the sandbox-apiserver; retrying")
			select {
			case <-ctx.Done():
				return
			case <-c.clock.After(5 * time.Second):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-c.clock.After(credentialsCheckPeriod):
		}
	}
}

// agentTLSSecret is the Secret with the server certificate of the agent Pod
// named podName, owned by the pool.
func agentTLSSecret(pool *v1alpha1.SandboxPool, namespace, podName string, certPEM, keyPEM, caPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      v1alpha1.AgentTLSSecretName(podName),
			Namespace: namespace,
			Labels: map[string]string{
				v1alpha1.LabelPoolName: pool.Name,
				v1alpha1.LabelAgentTLS: podName,
			},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(pool, poolGVK)},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: caPEM},
	}
}

// issueAgentSecret creates (or, when due, renews) the certificate Secret of
// the agent Pod named podName.
func (c *Controller) issueAgentSecret(ctx context.Context, pool *v1alpha1.SandboxPool, podName string) error {
	ca, err := c.ca(ctx)
	if err != nil {
		return err
	}
	name := v1alpha1.AgentTLSSecretName(podName)
	cur, err := c.secretLister.Secrets(c.namespace).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("getting Secret %s/%s: %w", c.namespace, name, err)
	}
	if cur != nil && !agentpki.NeedsRenewal(cur.Data[agentpki.KeyCert], c.clock.Now()) {
		return nil
	}
	certPEM, keyPEM, err := ca.IssueAgent(c.namespace, podName, c.clock.Now(), agentpki.DefaultCertValidity)
	if err != nil {
		return fmt.Errorf("issuing the certificate of agent Pod %s: %w", podName, err)
	}
	secret := agentTLSSecret(pool, c.namespace, podName, certPEM, keyPEM, ca.CertPEM)
	secrets := c.kubeClient.CoreV1().Secrets(c.namespace)
	if cur == nil {
		_, err = secrets.Create(ctx, secret, metav1.CreateOptions{FieldManager: ControllerName})
		if apierrors.IsAlreadyExists(err) {
			return nil // made by an earlier pass the informer does not show yet
		}
	} else {
		updated := cur.DeepCopy()
		updated.Data = secret.Data
		_, err = secrets.Update(ctx, updated, metav1.UpdateOptions{FieldManager: ControllerName})
	}
	if err != nil {
		c.event(pool, nil, corev1.EventTypeWarning, EventFailedIssue, actionIssueCertificate, "Issuing the certificate of agent Pod %s failed: %v", podName, err)
		return fmt.Errorf("writing Secret %s/%s: %w", c.namespace, name, err)
	}
	verb := "Issued"
	if cur != nil {
		verb = "Renewed"
	}
	c.event(pool, nil, corev1.EventTypeNormal, EventIssuedCertificate, actionIssueCertificate, "%s the certificate of agent Pod %s", verb, podName)
	return nil
}

// syncAgentSecrets gives every running agent Pod of the pool a valid
// certificate (issued anew when missing, renewed when due) and deletes the
// certificates of Pods that are gone, once seen so for Options.OrphanedCertificateGrace by
// the controller's own clock (a Secret is made just before its Pod, which
// an informer may show later). The duration, when positive, is when to look
// again for one still in its grace.
func (c *Controller) syncAgentSecrets(ctx context.Context, pool *v1alpha1.SandboxPool, pods []*corev1.Pod) (time.Duration, error) {
	var errs []error
	live := make(map[string]bool, len(pods))
	for _, pod := range pods {
		live[pod.Name] = true
		if pod.DeletionTimestamp != nil || podFinished(pod) || !metav1.IsControlledBy(pod, pool) {
			continue
		}
		errs = append(errs, c.issueAgentSecret(ctx, pool, pod.Name))
	}
	secrets, err := c.secretLister.Secrets(c.namespace).List(labels.SelectorFromSet(labels.Set{v1alpha1.LabelPoolName: pool.Name}))
	if err != nil {
		return 0, fmt.Errorf("listing the agent certificate Secrets of %s: %w", pool.Name, err)
	}
	now := c.clock.Now()
	var requeue time.Duration
	c.creds.mu.Lock()
	defer c.creds.mu.Unlock()
	if c.creds.orphaned == nil {
		c.creds.orphaned = map[string]map[string]time.Time{}
	}
	// Only the Secrets orphaned now are remembered.
	orphaned, next := c.creds.orphaned[pool.Name], map[string]time.Time{}
	defer func() { c.creds.orphaned[pool.Name] = next }()
	for _, s := range secrets {
		podName := s.Labels[v1alpha1.LabelAgentTLS]
		key := s.Name + "/" + string(s.UID)
		if podName == "" || !metav1.IsControlledBy(s, pool) || live[podName] {
			continue
		}
		since, seen := orphaned[key]
		if !seen {
			since = now
		}
		next[key] = since
		if left := c.certGrace - now.Sub(since); left > 0 {
			if requeue <= 0 || left < requeue {
				requeue = left
			}
			continue
		}
		err := c.kubeClient.CoreV1().Secrets(c.namespace).Delete(ctx, s.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &s.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting Secret %s/%s of a gone agent: %w", s.Namespace, s.Name, err))
			continue
		}
		delete(next, key)
	}
	return requeue, errors.Join(errs...)
}

// deleteAgentSecret deletes the certificate Secret of the agent Pod named
// podName, whose creation failed; the collection above removes it otherwise.
func (c *Controller) deleteAgentSecret(ctx context.Context, podName string) {
	name := v1alpha1.AgentTLSSecretName(podName)
	err := c.kubeClient.CoreV1().Secrets(c.namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		klog.FromContext(ctx).Error(err, "Deleting the certificate of an agent Pod that was not created", "secret", klog.KRef(c.namespace, name))
	}
}
