// Package agentpki holds the mutual-TLS identities of the agent API.
//
// Trust model. The pool controller keeps one certificate authority in a
// Secret of the system namespace (keys KeyCACert and KeyCAKey); the CA's key
// never leaves the pool controller. With it the pool controller issues
//
//   - one server certificate per agent Pod, whose only URI SAN is
//     AgentIdentity(namespace, podName) and whose extended key usage is
//     server authentication only, and
//   - one client certificate for the scheduler, whose only URI SAN is
//     SchedulerIdentity and whose extended key usage is client
//     authentication only, and
//   - one client certificate for the sandbox-apiserver, whose only URI SAN
//     is APIServerIdentity and whose extended key usage is client
//     authentication only, and
//   - one serving certificate for the sandbox-apiserver (IssueServing),
//     whose SANs are the DNS names of its Service, with no URI SAN, and
//     whose extended key usage is server authentication only.
//     kube-apiserver's aggregation layer verifies it against this CA (the
//     APIService's caBundle) and the name <service>.<namespace>.svc. Having
//     no spiffe identity, it is neither an agent's nor a client's
//     certificate to the agent API, and agent certificates name no host.
//
// Certificates are mounted into Pods from Secrets (keys KeyCert, KeyKey and
// KeyCACert). The scheduler dials an agent Pod by IP, so host names prove
// nothing: before it sends a single byte of a request it verifies the
// server's chain against the CA and requires the certificate to name exactly
// the agent Pod it means to reach (ClientCredentials.ConfigFor); the
// sandbox-apiserver does the same with its own certificate. A sandbox that
// squats the agent's port therefore gets neither the request nor any
// credential, and an agent Pod cannot impersonate another one. The agent in
// turn accepts only a client certificate from the CA that names the scheduler
// or the sandbox-apiserver (ServerConfig); the certificate of another agent
// Pod, although it chains to the same CA, is refused. Which routes each of the
// two may call the agent decides per request (PeerIdentity): the scheduler
// all of them, the sandbox-apiserver only the interactive ones (exec, attach,
// logs, files), never those that change or report the desired set.
//
// Keys are ECDSA P-256; TLS 1.3 is the minimum. Certificate and CA files are
// re-read when their content changes, so renewed certificates and a rotated
// CA bundle (ca.crt may hold several CA certificates) take effect without a
// restart.
package agentpki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"time"
)

// The URI SANs of the client certificates the agent API admits.
const (
	// SchedulerIdentity is the URI SAN of the scheduler's client certificate.
	SchedulerIdentity = "spiffe://fast-sandbox.io/scheduler"
	// APIServerIdentity is the URI SAN of the sandbox-apiserver's client
	// certificate. Like the scheduler's it names no namespace: the CA is
	// the installation's own, in its system namespace.
	APIServerIdentity = "spiffe://fast-sandbox.io/sandbox-apiserver"
)

// Keys of the Secrets that hold the CA and the issued certificates.
const (
	// KeyCACert holds the PEM CA certificate(s), in the CA Secret and in
	// every Secret of an issued certificate.
	KeyCACert = "ca.crt"
	// KeyCAKey holds the PEM private key of the CA (CA Secret only).
	KeyCAKey = "ca.key"
	// KeyCert holds the PEM certificate of an agent or of the scheduler.
	KeyCert = "tls.crt"
	// KeyKey holds the PEM private key matching KeyCert.
	KeyKey = "tls.key"
)

// Default validities.
const (
	// DefaultCAValidity is how long a new CA is valid: 10 years.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultCertValidity is how long an issued certificate is valid: 365 days.
	DefaultCertValidity = 365 * 24 * time.Hour
)

// clockSkew is how far in the past certificates start to be valid, so that a
// node whose clock lags a little accepts them at once.
const clockSkew = 5 * time.Minute

const trustDomain = "fast-sandbox.io"

// AgentIdentity is the URI SAN of the server certificate of agent Pod
// namespace/podName.
func AgentIdentity(namespace, podName string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/agent/" + podName
}

// IdentityOf returns the single spiffe:// URI SAN of cert. It fails if cert has
// none or more than one.
func IdentityOf(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", errors.New("agentpki: no certificate")
	}
	var ids []string
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			ids = append(ids, u.String())
		}
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("agentpki: certificate %q has %d spiffe URI SANs, want exactly 1", cert.Subject.CommonName, len(ids))
	}
	return ids[0], nil
}

// CA is a parsed certificate authority that issues agent and scheduler
// certificates.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Key is the CA's private key, matching Cert.
	Key crypto.Signer
	// CertPEM is Cert in PEM form, for the KeyCACert entry of issued Secrets.
	CertPEM []byte
}

// NewCA creates a self-signed CA named commonName, valid from now (less a
// few minutes of clock skew) for validity, and returns its certificate and
// private key in PEM form.
func NewCA(commonName string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("agentpki: CA validity %s is not positive", validity)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	certPEM, keyPEM, err = create(tmpl, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("agentpki: creating CA %q: %w", commonName, err)
	}
	return certPEM, keyPEM, nil
}

// ParseCA parses a CA certificate and its private key, as written by NewCA.
// It fails if the certificate is not a CA or the key does not match it.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("agentpki: parsing the CA certificate: %w", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("agentpki: certificate %q is not a CA", cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("agentpki: CA %q may not sign certificates", cert.Subject.CommonName)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("agentpki: parsing the key of CA %q: %w", cert.Subject.CommonName, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("agentpki: the key does not match CA %q", cert.Subject.CommonName)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// IssueAgent issues the server certificate of agent Pod namespace/podName,
// valid from now (less a few minutes of clock skew) for validity, but never
// beyond the CA itself. It returns the certificate and a new private key in
// PEM form.
func (ca *CA) IssueAgent(namespace, podName string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if !validName(namespace) || !validName(podName) {
		return nil, nil, fmt.Errorf("agentpki: invalid agent Pod name %q/%q", namespace, podName)
	}
	certPEM, keyPEM, err = ca.issue(podName, AgentIdentity(namespace, podName), x509.ExtKeyUsageServerAuth, now, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("agentpki: issuing the certificate of agent %s/%s: %w", namespace, podName, err)
	}
	return certPEM, keyPEM, nil
}

// IssueScheduler issues the scheduler's client certificate, valid from now
// (less a few minutes of clock skew) for validity, but never beyond the CA
// itself. It returns the certificate and a new private key in PEM form.
func (ca *CA) IssueScheduler(now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, err = ca.issue("fast-sandbox-scheduler", SchedulerIdentity, x509.ExtKeyUsageClientAuth, now, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("agentpki: issuing the scheduler's certificate: %w", err)
	}
	return certPEM, keyPEM, nil
}

// IssueAPIServer issues the sandbox-apiserver's client certificate (identity
// APIServerIdentity), valid from now (less a few minutes of clock skew) for
// validity, but never beyond the CA itself. It returns the certificate and a
// new private key in PEM form; the pool controller keeps them in Secret
// v1alpha1.SandboxAPIServerClientSecretName, as the scheduler's.
func (ca *CA) IssueAPIServer(now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, err = ca.issue("fast-sandbox-apiserver", APIServerIdentity, x509.ExtKeyUsageClientAuth, now, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("agentpki: issuing the sandbox-apiserver's certificate: %w", err)
	}
	return certPEM, keyPEM, nil
}

// IssueServing issues a serving certificate for a server reached by host
// name, such as the sandbox-apiserver behind its Service: its SANs are
// dnsNames (the first is also its common name), its extended key usage is
// server authentication only, and it carries no URI SAN, so it is no
// identity of the agent API. It is valid from now (less a few minutes of
// clock skew) for validity, but never beyond the CA itself. It returns the
// certificate and a new private key in PEM form.
func (ca *CA) IssueServing(dnsNames []string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if len(dnsNames) == 0 {
		return nil, nil, errors.New("agentpki: a serving certificate needs at least one DNS name")
	}
	for _, n := range dnsNames {
		if !validDNSName(n) {
			return nil, nil, fmt.Errorf("agentpki: invalid DNS name %q", n)
		}
	}
	tmpl, err := ca.template(dnsNames[0], x509.ExtKeyUsageServerAuth, now, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("agentpki: issuing the serving certificate of %s: %w", dnsNames[0], err)
	}
	tmpl.DNSNames = append([]string(nil), dnsNames...)
	certPEM, keyPEM, err = create(tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("agentpki: issuing the serving certificate of %s: %w", dnsNames[0], err)
	}
	return certPEM, keyPEM, nil
}

func (ca *CA) issue(commonName, identity string, usage x509.ExtKeyUsage, now time.Time, validity time.Duration) ([]byte, []byte, error) {
	id, err := url.Parse(identity)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing identity %q: %w", identity, err)
	}
	tmpl, err := ca.template(commonName, usage, now, validity)
	if err != nil {
		return nil, nil, err
	}
	tmpl.URIs = []*url.URL{id}
	return create(tmpl, ca.Cert, ca.Key)
}

// template is the template of a leaf certificate of the CA with one
// extended key usage, valid from now (less clockSkew) for validity but
// never beyond the CA.
func (ca *CA) template(commonName string, usage x509.ExtKeyUsage, now time.Time, validity time.Duration) (*x509.Certificate, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("validity %s is not positive", validity)
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}, nil
}

// NeedsRenewal reports whether the PEM certificate should be replaced at now:
// it cannot be parsed, has expired, or has less than a third of its lifetime
// left.
func NeedsRenewal(certPEM []byte, now time.Time) bool {
	cert, err := parseCert(certPEM)
	if err != nil || !now.Before(cert.NotAfter) {
		return true
	}
	lifetime := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotAfter.Sub(now) < lifetime/3
}

// create makes a new P-256 key and a certificate for it from tmpl, signed by
// parent/parentKey, or self-signed if parent is nil.
func create(tmpl, parent *x509.Certificate, parentKey crypto.Signer) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating a key: %w", err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	// A random 128-bit serial number.
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128)); err != nil {
		return nil, nil, fmt.Errorf("generating a serial number: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// parseCert parses the first CERTIFICATE block of certPEM.
func parseCert(certPEM []byte) (*x509.Certificate, error) {
	for rest := certPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// parseKey parses a PKCS#8 or SEC 1 (EC) PEM private key.
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(bytes.TrimSpace(keyPEM))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", key)
	}
	return signer, nil
}

// validName reports whether s can be a path segment of an identity.
func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/?#%: ")
}

// validDNSName reports whether s is a lower-case DNS name (RFC 1123 labels
// separated by dots), as Kubernetes names Services.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
				return false
			}
		}
	}
	return true
}
