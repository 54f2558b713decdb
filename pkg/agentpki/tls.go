package agentpki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"
)

// reloadInterval is how often, at most, files are checked for new content.
// Tests shorten it; a source copies it when it is made.
var reloadInterval = time.Second

// material is one consistent set of credentials: a certificate with its key
// and the CA pool that verifies the peer.
type material struct {
	cert *tls.Certificate
	pool *x509.CertPool
	raw  [3][]byte // certificate, key and CA PEM as parsed
}

func parseMaterial(certPEM, keyPEM, caPEM []byte) (*material, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("agentpki: parsing the certificate and key: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("agentpki: no CA certificate in the CA PEM")
	}
	return &material{cert: &cert, pool: pool, raw: [3][]byte{certPEM, keyPEM, caPEM}}, nil
}

// source hands out the current material. If it was loaded from files, it
// re-reads them at most once per interval when asked for the material, and
// replaces the material when their content changed and parses; otherwise
// it keeps the last good material.
type source struct {
	files    [3]string // certificate, key, CA; empty if not from files
	interval time.Duration

	mu      sync.Mutex
	cur     *material
	checked time.Time
}

func loadSource(certFile, keyFile, caFile string) (*source, error) {
	s := &source{files: [3]string{certFile, keyFile, caFile}, interval: reloadInterval}
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *source) get() *material {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files[0] != "" && time.Since(s.checked) >= s.interval {
		_ = s.refreshLocked() // keep the last good material
	}
	return s.cur
}

// refreshLocked re-reads the files and replaces the material if their
// content changed and parses. s.mu is held (or s not yet shared).
func (s *source) refreshLocked() error {
	s.checked = time.Now()
	var raw [3][]byte
	for i, f := range s.files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("agentpki: reading %s: %w", f, err)
		}
		raw[i] = b
	}
	if s.cur != nil && bytes.Equal(raw[0], s.cur.raw[0]) && bytes.Equal(raw[1], s.cur.raw[1]) && bytes.Equal(raw[2], s.cur.raw[2]) {
		return nil
	}
	m, err := parseMaterial(raw[0], raw[1], raw[2])
	if err != nil {
		return fmt.Errorf("agentpki: loading %s, %s and %s: %w", s.files[0], s.files[1], s.files[2], err)
	}
	s.cur = m
	return nil
}

// ServerConfig returns the TLS configuration of the agent's API server: it
// presents the agent's certificate (certFile, keyFile) and accepts only
// clients whose certificate chains to a CA of caFile and names
// SchedulerIdentity or APIServerIdentity (the handler then decides per route
// with PeerIdentity). The three files are re-read when their content changes
// (at most once per second, on a handshake); if they do not parse, the last
// good ones stay in use. It fails if the files cannot be loaded at first.
//
// The returned configuration is the template of every handshake: set fields
// such as NextProtos on it before use. Session tickets are disabled, so that
// every connection is verified against the current CA.
func ServerConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	src, err := loadSource(certFile, keyFile, caFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequireAndVerifyClientCert,
		SessionTicketsDisabled: true,
		VerifyConnection:       verifyClient,
	}
	initial := src.get()
	cfg.Certificates = []tls.Certificate{*initial.cert}
	cfg.ClientCAs = initial.pool
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := src.get()
		c := cfg.Clone()
		c.GetConfigForClient = nil
		c.Certificates = []tls.Certificate{*m.cert}
		c.ClientCAs = m.pool
		return c, nil
	}
	return cfg, nil
}

// verifyClient accepts only the client certificates of the scheduler and of
// the sandbox-apiserver. The chain has already been verified against the
// client CAs.
func verifyClient(cs tls.ConnectionState) error {
	id, err := PeerIdentity(&cs)
	if err != nil {
		return err
	}
	if id != SchedulerIdentity && id != APIServerIdentity {
		return fmt.Errorf("agentpki: client identity %q is neither %q nor %q", id, SchedulerIdentity, APIServerIdentity)
	}
	return nil
}

// PeerIdentity returns the identity (URI SAN) of the verified client
// certificate of a connection, e.g. http.Request.TLS on the agent API. It
// fails if cs is nil (no TLS) or holds no verified chain.
func PeerIdentity(cs *tls.ConnectionState) (string, error) {
	if cs == nil || len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
		return "", errors.New("agentpki: no verified client certificate")
	}
	id, err := IdentityOf(cs.PeerCertificates[0])
	if err != nil {
		return "", fmt.Errorf("agentpki: client certificate: %w", err)
	}
	return id, nil
}

// ClientCredentials are the credentials for calling agents of the scheduler
// or of the sandbox-apiserver: its client certificate and the CA that
// verifies agents. They are safe for concurrent use.
type ClientCredentials struct {
	src *source
}

// LoadClient loads a client's credentials (the scheduler's or the
// sandbox-apiserver's) from files. The files are re-read when their content
// changes (at most once per second, on a handshake, or at once with Reload);
// if they do not parse, the last good ones stay in use. It fails if the files cannot be loaded at first.
func LoadClient(certFile, keyFile, caFile string) (*ClientCredentials, error) {
	src, err := loadSource(certFile, keyFile, caFile)
	if err != nil {
		return nil, err
	}
	return &ClientCredentials{src: src}, nil
}

// NewClient makes a client's credentials from PEM: its certificate and
// key and the CA certificate(s) that verify agents. Update replaces them.
func NewClient(certPEM, keyPEM, caPEM []byte) (*ClientCredentials, error) {
	m, err := parseMaterial(certPEM, keyPEM, caPEM)
	if err != nil {
		return nil, err
	}
	return &ClientCredentials{src: &source{cur: m}}, nil
}

// Reload re-reads the files of credentials made by LoadClient now. On error
// the last good credentials stay in use. For credentials made by NewClient it
// does nothing.
func (c *ClientCredentials) Reload() error {
	c.src.mu.Lock()
	defer c.src.mu.Unlock()
	if c.src.files[0] == "" {
		return nil
	}
	return c.src.refreshLocked()
}

// Update replaces credentials made by NewClient with new PEM ones; on error
// the current ones stay in use. Credentials made by LoadClient follow their
// files and refuse Update.
func (c *ClientCredentials) Update(certPEM, keyPEM, caPEM []byte) error {
	if c.src.files[0] != "" {
		return errors.New("agentpki: the credentials follow their files; use Reload")
	}
	m, err := parseMaterial(certPEM, keyPEM, caPEM)
	if err != nil {
		return err
	}
	c.src.mu.Lock()
	defer c.src.mu.Unlock()
	c.src.cur = m
	return nil
}

// ConfigFor returns the TLS configuration for calling agent Pod
// namespace/podName by IP. It presents the client's certificate, verifies
// the server's chain against the CA (host names are not checked: the Pod is
// dialed by IP) and requires the server's identity to be
// AgentIdentity(namespace, podName); otherwise the handshake fails before
// anything is sent.
func (c *ClientCredentials) ConfigFor(namespace, podName string) *tls.Config {
	want := AgentIdentity(namespace, podName)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain and the identity are verified in VerifyConnection.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.src.get().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyAgent(cs, c.src.get().pool, want, time.Now())
		},
	}
}

// verifyAgent verifies the server's chain against roots at now and requires
// its identity to be want.
func verifyAgent(cs tls.ConnectionState, roots *x509.CertPool, want string, now time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("agentpki: agent %s presented no certificate", want)
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		CurrentTime:   now,
	}); err != nil {
		return fmt.Errorf("agentpki: verifying the certificate of agent %s: %w", want, err)
	}
	got, err := IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("agentpki: expected agent %s: %w", want, err)
	}
	if got != want {
		return fmt.Errorf("agentpki: expected agent %s, but the server presented identity %s", want, got)
	}
	return nil
}

// Transport returns a copy of base (of http.DefaultTransport if base is nil)
// whose TLS configuration is ConfigFor(namespace, podName). Use one per agent
// Pod.
func (c *ClientCredentials) Transport(base *http.Transport, namespace, podName string) *http.Transport {
	if base == nil {
		base = http.DefaultTransport.(*http.Transport)
	}
	t := base.Clone()
	t.TLSClientConfig = c.ConfigFor(namespace, podName)
	return t
}
