package agent

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
)

// The agent API's credentials in tests: one CA, the certificate of one
// agent Pod that every test server presents, and client certificates by
// identity. Servers are served as cmd/agent serves them (agentpki.ServerConfig).

const testAgentNS, testAgentPod = "fast-sandbox-system", "pool-agent-test"

// Identities a test client can have.
type identity int

const (
	identityScheduler identity = iota
	identityAPIServer
	identityOtherAgent // a certificate of the same CA that names another agent Pod
)

type pkiFixture struct {
	ca                  *agentpki.CA
	caPEM               []byte
	agentCert, agentKey []byte
}

var testPKI = newPKIFixture()

func newPKIFixture() *pkiFixture {
	now := time.Now()
	caPEM, caKey, err := agentpki.NewCA("test", now, 24*time.Hour)
	if err != nil {
		panic(err)
	}
	ca, err := agentpki.ParseCA(caPEM, caKey)
	if err != nil {
		panic(err)
	}
	certPEM, keyPEM, err := ca.IssueAgent(testAgentNS, testAgentPod, now, 24*time.Hour)
	if err != nil {
		panic(err)
	}
	return &pkiFixture{ca: ca, caPEM: caPEM, agentCert: certPEM, agentKey: keyPEM}
}

// credentials issues a client certificate of id.
func (p *pkiFixture) credentials(id identity) *agentpki.ClientCredentials {
	now := time.Now()
	var c, k []byte
	var err error
	switch id {
	case identityScheduler:
		c, k, err = p.ca.IssueScheduler(now, time.Hour)
	case identityAPIServer:
		c, k, err = p.ca.IssueAPIServer(now, time.Hour)
	case identityOtherAgent:
		c, k, err = p.ca.IssueAgent(testAgentNS, "pool-agent-other", now, time.Hour)
	}
	if err != nil {
		panic(err)
	}
	creds, err := agentpki.NewClient(c, k, p.caPEM)
	if err != nil {
		panic(err)
	}
	return creds
}

// client is an HTTP client with id's certificate that verifies the test
// agent's; its requests time out after five seconds.
func (p *pkiFixture) client(id identity) *http.Client {
	return &http.Client{Transport: p.credentials(id).Transport(nil, testAgentNS, testAgentPod), Timeout: 5 * time.Second}
}

// tlsConfig is a client TLS configuration of id for the test agent.
func (p *pkiFixture) tlsConfig(id identity) *tls.Config {
	return p.credentials(id).ConfigFor(testAgentNS, testAgentPod)
}

// serveTLS serves h behind the agent's mutual TLS until the test ends.
func serveTLS(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string][]byte{agentpki.KeyCert: testPKI.agentCert, agentpki.KeyKey: testPKI.agentKey, agentpki.KeyCACert: testPKI.caPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := agentpki.ServerConfig(filepath.Join(dir, agentpki.KeyCert), filepath.Join(dir, agentpki.KeyKey), filepath.Join(dir, agentpki.KeyCACert))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}
