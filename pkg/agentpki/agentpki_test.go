package agentpki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const ns = "fast-sandbox-system"

// pair is a PEM certificate and key.
type pair struct{ cert, key []byte }

func newCA(t *testing.T, now time.Time) *CA {
	t.Helper()
	certPEM, keyPEM, err := NewCA("test CA", now, DefaultCAValidity)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func agentPair(t *testing.T, ca *CA, pod string, now time.Time) pair {
	t.Helper()
	c, k, err := ca.IssueAgent(ns, pod, now, DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	return pair{c, k}
}

func schedulerPair(t *testing.T, ca *CA, now time.Time) pair {
	t.Helper()
	c, k, err := ca.IssueScheduler(now, DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	return pair{c, k}
}

func apiServerPair(t *testing.T, ca *CA, now time.Time) pair {
	t.Helper()
	c, k, err := ca.IssueAPIServer(now, DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	return pair{c, k}
}

func mustParse(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// secretDir lays files out as kubelet does for a Secret volume: each key is
// a symlink to ..data/<key>, and ..data is a symlink to a timestamped
// directory, swapped atomically on update.
type secretDir struct {
	t   *testing.T
	dir string
	gen int
}

func newSecretDir(t *testing.T, p pair, caPEM []byte) *secretDir {
	d := &secretDir{t: t, dir: t.TempDir()}
	d.update(p.cert, p.key, caPEM)
	for _, k := range []string{KeyCert, KeyKey, KeyCACert} {
		if err := os.Symlink(filepath.Join("..data", k), filepath.Join(d.dir, k)); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *secretDir) update(certPEM, keyPEM, caPEM []byte) {
	d.t.Helper()
	d.gen++
	gen := filepath.Join(d.dir, "..gen"+string(rune('0'+d.gen)))
	if err := os.Mkdir(gen, 0o700); err != nil {
		d.t.Fatal(err)
	}
	for k, v := range map[string][]byte{KeyCert: certPEM, KeyKey: keyPEM, KeyCACert: caPEM} {
		if err := os.WriteFile(filepath.Join(gen, k), v, 0o600); err != nil {
			d.t.Fatal(err)
		}
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		d.t.Fatal(err)
	}
}

func (d *secretDir) files() (certFile, keyFile, caFile string) {
	return filepath.Join(d.dir, KeyCert), filepath.Join(d.dir, KeyKey), filepath.Join(d.dir, KeyCACert)
}

// agent is an agent API served over TLS on loopback.
type agent struct {
	*httptest.Server
	called atomic.Int32 // requests the handler saw
	mu     sync.Mutex
	log    strings.Builder // the server's error log
}

func (a *agent) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.Write(p)
}

// errors closes the server, which waits for its connections, and returns
// what it logged (TLS handshake errors).
func (a *agent) errors() string {
	a.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// startAgent serves an agent API over TLS with cfg on loopback.
func startAgent(t *testing.T, cfg *tls.Config) *agent {
	t.Helper()
	a := &agent{}
	a.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.called.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	a.Config.ErrorLog = log.New(a, "", 0)
	a.TLS = cfg
	a.StartTLS()
	t.Cleanup(a.Close)
	return a
}

func agentServer(t *testing.T, p pair, caPEM []byte) *agent {
	t.Helper()
	d := newSecretDir(t, p, caPEM)
	cfg, err := ServerConfig(d.files())
	if err != nil {
		t.Fatal(err)
	}
	return startAgent(t, cfg)
}

// get calls url on a new connection with cfg and returns the server's leaf.
func get(url string, cfg *tls.Config) (*x509.Certificate, error) {
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url + "/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if string(body) != "ok" {
		return nil, io.ErrUnexpectedEOF
	}
	return resp.TLS.PeerCertificates[0], nil
}

func clientConfig(t *testing.T, p pair, caPEM []byte, pod string) *tls.Config {
	t.Helper()
	c, err := NewClient(p.cert, p.key, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c.ConfigFor(ns, pod)
}

func TestAgentAPI(t *testing.T) {
	now := time.Now()
	past := now.Add(-2 * DefaultCertValidity)
	ca, otherCA := newCA(t, past), newCA(t, past)
	sched := schedulerPair(t, ca, now)
	agentA := agentPair(t, ca, "a", now)

	// A client certificate with client authentication but another identity.
	c, k, err := ca.issue("impostor", AgentIdentity(ns, "b"), x509.ExtKeyUsageClientAuth, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	impostor := pair{c, k}

	tests := []struct {
		name    string
		server  pair
		client  func() *tls.Config
		wantErr []string // substrings of the client's error; nil: success
		// serverErr, if set, is in the server's log: the agent refused the
		// client (otherwise the client refused the agent).
		serverErr string
	}{{
		name:   "right identity",
		server: agentA,
		client: func() *tls.Config { return clientConfig(t, sched, ca.CertPEM, "a") },
	}, {
		name:   "the sandbox-apiserver's identity",
		server: agentA,
		client: func() *tls.Config { return clientConfig(t, apiServerPair(t, ca, now), ca.CertPEM, "a") },
	}, {
		name:    "server is another agent Pod of the same CA",
		server:  agentPair(t, ca, "b", now),
		client:  func() *tls.Config { return clientConfig(t, sched, ca.CertPEM, "a") },
		wantErr: []string{AgentIdentity(ns, "a"), AgentIdentity(ns, "b")},
	}, {
		name:   "server is the same Pod name in another namespace",
		server: agentA,
		client: func() *tls.Config {
			creds, err := NewClient(sched.cert, sched.key, ca.CertPEM)
			if err != nil {
				t.Fatal(err)
			}
			return creds.ConfigFor("other", "a")
		},
		wantErr: []string{AgentIdentity("other", "a"), AgentIdentity(ns, "a")},
	}, {
		name:    "server certificate from another CA",
		server:  agentPair(t, otherCA, "a", now),
		client:  func() *tls.Config { return clientConfig(t, sched, ca.CertPEM, "a") },
		wantErr: []string{"unknown authority"},
	}, {
		name:    "server certificate expired",
		server:  func() pair { c, k, _ := ca.IssueAgent(ns, "a", past, time.Hour); return pair{c, k} }(),
		client:  func() *tls.Config { return clientConfig(t, sched, ca.CertPEM, "a") },
		wantErr: []string{"expired"},
	}, {
		name:   "server presents a client certificate",
		server: sched,
		client: func() *tls.Config { return clientConfig(t, sched, ca.CertPEM, "a") },
		// The scheduler's certificate may not authenticate servers.
		wantErr: []string{"usage"},
	}, {
		name:   "client without certificate",
		server: agentA,
		client: func() *tls.Config {
			cfg := clientConfig(t, sched, ca.CertPEM, "a")
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &tls.Certificate{}, nil
			}
			return cfg
		},
		wantErr:   []string{"certificate required"},
		serverErr: "didn't provide a certificate",
	}, {
		name:      "client presents an agent certificate",
		server:    agentA,
		client:    func() *tls.Config { return clientConfig(t, agentPair(t, ca, "b", now), ca.CertPEM, "a") },
		wantErr:   []string{"bad certificate"},
		serverErr: "incompatible key usage",
	}, {
		name:      "client certificate for client authentication names another identity",
		server:    agentA,
		client:    func() *tls.Config { return clientConfig(t, impostor, ca.CertPEM, "a") },
		wantErr:   []string{"bad certificate"},
		serverErr: fmt.Sprintf("client identity %q is neither %q nor %q", AgentIdentity(ns, "b"), SchedulerIdentity, APIServerIdentity),
	}, {
		name:      "client certificate from another CA",
		server:    agentA,
		client:    func() *tls.Config { return clientConfig(t, schedulerPair(t, otherCA, now), ca.CertPEM, "a") },
		wantErr:   []string{"unknown certificate authority"},
		serverErr: "unknown authority",
	}, {
		name:   "client certificate expired",
		server: agentA,
		client: func() *tls.Config {
			c, k, err := ca.IssueScheduler(past, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return clientConfig(t, pair{c, k}, ca.CertPEM, "a")
		},
		wantErr:   []string{"expired certificate"},
		serverErr: "expired",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := agentServer(t, tt.server, ca.CertPEM)
			_, err := get(srv.URL, tt.client())
			logged := srv.errors()
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("request failed: %v", err)
				}
				if n := srv.called.Load(); n != 1 {
					t.Fatalf("handler called %d times, want 1", n)
				}
				return
			}
			if err == nil {
				t.Fatal("request succeeded, want a refused handshake")
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if tt.serverErr != "" && !strings.Contains(logged, tt.serverErr) {
				t.Errorf("the server logged %q, want %q", logged, tt.serverErr)
			}
			if n := srv.called.Load(); n != 0 {
				t.Fatalf("the handler saw %d requests, want none", n)
			}
		})
	}
}

func TestVerifyClient(t *testing.T) {
	now := time.Now()
	ca := newCA(t, now)
	cert := func(p pair) tls.ConnectionState {
		c := mustParse(t, p.cert)
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c, ca.Cert}}}
	}
	if err := verifyClient(cert(schedulerPair(t, ca, now))); err != nil {
		t.Errorf("scheduler refused: %v", err)
	}
	if err := verifyClient(cert(apiServerPair(t, ca, now))); err != nil {
		t.Errorf("sandbox-apiserver refused: %v", err)
	}
	err := verifyClient(cert(agentPair(t, ca, "b", now)))
	if err == nil || !strings.Contains(err.Error(), AgentIdentity(ns, "b")) {
		t.Errorf("agent certificate: got %v, want an error naming its identity", err)
	}
	if err := verifyClient(tls.ConnectionState{}); err == nil {
		t.Error("no certificate accepted")
	}
	// A certificate whose chain was not verified names nobody.
	unverified := cert(apiServerPair(t, ca, now))
	unverified.VerifiedChains = nil
	if err := verifyClient(unverified); err == nil {
		t.Error("an unverified certificate accepted")
	}
}

func TestPeerIdentity(t *testing.T) {
	now := time.Now()
	ca := newCA(t, now)
	c := mustParse(t, apiServerPair(t, ca, now).cert)
	cs := &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c, ca.Cert}}}
	if id, err := PeerIdentity(cs); err != nil || id != APIServerIdentity {
		t.Errorf("PeerIdentity = %q, %v; want %q", id, err, APIServerIdentity)
	}
	for name, cs := range map[string]*tls.ConnectionState{
		"no TLS":         nil,
		"no certificate": {},
		"not verified":   {PeerCertificates: []*x509.Certificate{c}},
	} {
		if id, err := PeerIdentity(cs); err == nil {
			t.Errorf("%s: PeerIdentity = %q, want an error", name, id)
		}
	}
}

func TestServerReload(t *testing.T) {
	defer func(d time.Duration) { reloadInterval = d }(reloadInterval)
	reloadInterval = 0

	now := time.Now()
	ca := newCA(t, now)
	first := agentPair(t, ca, "a", now)
	d := newSecretDir(t, first, ca.CertPEM)
	cfg, err := ServerConfig(d.files())
	if err != nil {
		t.Fatal(err)
	}
	url := startAgent(t, cfg).URL
	client := clientConfig(t, schedulerPair(t, ca, now), ca.CertPEM, "a")
	serial := func() string {
		t.Helper()
		leaf, err := get(url, client)
		if err != nil {
			t.Fatalf("request failed: %v", err)
		}
		return leaf.SerialNumber.String()
	}

	if got, want := serial(), mustParse(t, first.cert).SerialNumber.String(); got != want {
		t.Fatalf("server presents serial %s, want %s", got, want)
	}
	renewed := agentPair(t, ca, "a", now) // a new key and serial
	d.update(renewed.cert, renewed.key, ca.CertPEM)
	want := mustParse(t, renewed.cert).SerialNumber.String()
	if got := serial(); got != want {
		t.Fatalf("after renewal the server presents serial %s, want %s", got, want)
	}

	// Broken files: the last good certificate stays.
	for _, broken := range []pair{
		{[]byte("garbage"), renewed.key},
		{renewed.cert, first.key}, // key of another certificate
	} {
		d.update(broken.cert, broken.key, ca.CertPEM)
		if got := serial(); got != want {
			t.Fatalf("after a broken update the server presents serial %s, want %s", got, want)
		}
	}
	d.update(renewed.cert, renewed.key, []byte("no CA"))
	if got := serial(); got != want {
		t.Fatalf("after a broken CA the server presents serial %s, want %s", got, want)
	}
}

func TestServerReloadThrottled(t *testing.T) {
	now := time.Now()
	ca := newCA(t, now)
	d := newSecretDir(t, agentPair(t, ca, "a", now), ca.CertPEM)
	src, err := loadSource(d.files())
	if err != nil {
		t.Fatal(err)
	}
	src.interval = time.Hour
	before := src.get()
	renewed := agentPair(t, ca, "a", now)
	d.update(renewed.cert, renewed.key, ca.CertPEM)
	if src.get() != before {
		t.Error("files re-read before the interval passed")
	}
}

func TestClientReload(t *testing.T) {
	defer func(d time.Duration) { reloadInterval = d }(reloadInterval)
	reloadInterval = time.Hour // only Reload re-reads

	now := time.Now()
	oldCA, newCA := newCA(t, now), newCA(t, now)
	srv := agentServer(t, agentPair(t, newCA, "a", now), newCA.CertPEM)
	url := srv.URL

	d := newSecretDir(t, schedulerPair(t, oldCA, now), oldCA.CertPEM)
	creds, err := LoadClient(d.files())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(url, creds.ConfigFor(ns, "a")); err == nil {
		t.Fatal("old credentials accepted an agent of the new CA")
	}
	next := schedulerPair(t, newCA, now)
	d.update(next.cert, next.key, newCA.CertPEM)
	if err := creds.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if _, err := get(url, creds.ConfigFor(ns, "a")); err != nil {
		t.Fatalf("request with reloaded credentials failed: %v", err)
	}

	d.update([]byte("garbage"), next.key, newCA.CertPEM)
	if err := creds.Reload(); err == nil {
		t.Error("Reload of a broken certificate succeeded")
	}
	if _, err := get(url, creds.ConfigFor(ns, "a")); err != nil {
		t.Fatalf("after a broken reload the last good credentials failed: %v", err)
	}
	if err := creds.Update(next.cert, next.key, newCA.CertPEM); err == nil {
		t.Error("Update of file-backed credentials succeeded")
	}
	if n := srv.called.Load(); n != 2 {
		t.Errorf("handler called %d times, want 2", n)
	}

	// PEM credentials: Update.
	old, other := schedulerPair(t, oldCA, now), schedulerPair(t, oldCA, now)
	if _, err := NewClient(old.cert, other.key, oldCA.CertPEM); err == nil {
		t.Fatal("NewClient accepted the key of another certificate")
	}
	pemCreds, err := NewClient(old.cert, old.key, oldCA.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := pemCreds.Update(next.cert, next.key, []byte("no CA")); err == nil {
		t.Error("Update with a broken CA succeeded")
	}
	if err := pemCreds.Update(next.cert, next.key, newCA.CertPEM); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if err := pemCreds.Reload(); err != nil {
		t.Errorf("Reload of PEM credentials: %v", err)
	}
	tr := pemCreds.Transport(nil, ns, "a")
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(url)
	if err != nil {
		t.Fatalf("request through Transport failed: %v", err)
	}
	resp.Body.Close()
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := ServerConfig(missing, missing, missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("ServerConfig of missing files: got %v, want an error naming the file", err)
	}
	if _, err := LoadClient(missing, missing, missing); err == nil {
		t.Error("LoadClient of missing files succeeded")
	}
}

func TestIdentity(t *testing.T) {
	if got, want := AgentIdentity("ns1", "pod-1"), "spiffe://fast-sandbox.io/ns/ns1/agent/pod-1"; got != want {
		t.Errorf("AgentIdentity = %q, want %q", got, want)
	}
	u := func(s string) *url.URL { p, _ := url.Parse(s); return p }
	tests := []struct {
		name    string
		uris    []*url.URL
		want    string
		wantErr bool
	}{
		{"one", []*url.URL{u(SchedulerIdentity)}, SchedulerIdentity, false},
		{"other schemes ignored", []*url.URL{u("https://example.com"), u(SchedulerIdentity)}, SchedulerIdentity, false},
		{"none", nil, "", true},
		{"no spiffe", []*url.URL{u("https://example.com")}, "", true},
		{"two", []*url.URL{u(SchedulerIdentity), u(AgentIdentity("a", "b"))}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := IdentityOf(&x509.Certificate{URIs: tt.uris})
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("IdentityOf = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if _, err := IdentityOf(nil); err == nil {
		t.Error("IdentityOf(nil) succeeded")
	}
}

func TestIssue(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	ca := newCA(t, now)
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "test CA" || !ca.Cert.NotBefore.Equal(now.Add(-clockSkew)) {
		t.Errorf("CA certificate: IsCA %v, CN %q, NotBefore %s", ca.Cert.IsCA, ca.Cert.Subject.CommonName, ca.Cert.NotBefore)
	}

	a1, a2 := mustParse(t, agentPair(t, ca, "pod-1", now).cert), mustParse(t, agentPair(t, ca, "pod-1", now).cert)
	if a1.Subject.CommonName != "pod-1" {
		t.Errorf("CommonName = %q, want pod-1", a1.Subject.CommonName)
	}
	if id, _ := IdentityOf(a1); id != AgentIdentity(ns, "pod-1") {
		t.Errorf("identity = %q", id)
	}
	if len(a1.ExtKeyUsage) != 1 || a1.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || a1.IsCA {
		t.Errorf("agent ExtKeyUsage = %v, IsCA %v", a1.ExtKeyUsage, a1.IsCA)
	}
	if !a1.NotBefore.Equal(now.Add(-clockSkew)) || !a1.NotAfter.Equal(now.Add(DefaultCertValidity)) {
		t.Errorf("agent validity %s to %s", a1.NotBefore, a1.NotAfter)
	}
	if a1.SerialNumber.BitLen() > 128 || a1.SerialNumber.BitLen() < 64 || a1.SerialNumber.Cmp(a2.SerialNumber) == 0 {
		t.Errorf("serial numbers %s and %s", a1.SerialNumber, a2.SerialNumber)
	}
	if err := a1.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("agent certificate not signed by the CA: %v", err)
	}

	s := mustParse(t, schedulerPair(t, ca, now).cert)
	if id, _ := IdentityOf(s); id != SchedulerIdentity || len(s.ExtKeyUsage) != 1 || s.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("scheduler identity %q, ExtKeyUsage %v", id, s.ExtKeyUsage)
	}

	as := mustParse(t, apiServerPair(t, ca, now).cert)
	if id, _ := IdentityOf(as); id != APIServerIdentity || len(as.ExtKeyUsage) != 1 || as.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth ||
		as.IsCA || as.Subject.CommonName != "fast-sandbox-apiserver" {
		t.Errorf("sandbox-apiserver identity %q, ExtKeyUsage %v, IsCA %v, CN %q", id, as.ExtKeyUsage, as.IsCA, as.Subject.CommonName)
	}
	if err := as.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("sandbox-apiserver certificate not signed by the CA: %v", err)
	}

	// Never valid beyond the CA.
	c, _, err := ca.IssueAgent(ns, "a", now.Add(DefaultCAValidity-time.Hour), DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustParse(t, c).NotAfter; !got.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter = %s, want the CA's %s", got, ca.Cert.NotAfter)
	}

	for _, bad := range [][2]string{{"", "a"}, {ns, ""}, {ns, "a/b"}, {"x/y", "a"}} {
		if _, _, err := ca.IssueAgent(bad[0], bad[1], now, time.Hour); err == nil {
			t.Errorf("IssueAgent(%q, %q) succeeded", bad[0], bad[1])
		}
	}
	if _, _, err := ca.IssueScheduler(now, 0); err == nil {
		t.Error("IssueScheduler with zero validity succeeded")
	}
	if _, _, err := ca.IssueAPIServer(now, 0); err == nil {
		t.Error("IssueAPIServer with zero validity succeeded")
	}
	if _, _, err := NewCA("x", now, -time.Hour); err == nil {
		t.Error("NewCA with negative validity succeeded")
	}
}

func TestNeedsRenewal(t *testing.T) {
	now := time.Now()
	ca := newCA(t, now)
	c, _, err := ca.IssueAgent(ns, "a", now, 300*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The lifetime is 300h plus 5m of clock skew; a third of it is 100h1m40s.
	tests := []struct {
		name string
		cert []byte
		at   time.Time
		want bool
	}{
		{"fresh", c, now, false},
		{"before NotBefore", c, now.Add(-time.Hour), false},
		{"more than a third left", c, now.Add(199 * time.Hour), false},
		{"less than a third left", c, now.Add(201 * time.Hour), true},
		{"expired", c, now.Add(301 * time.Hour), true},
		{"at NotAfter", c, mustParse(t, c).NotAfter, true},
		{"garbage", []byte("garbage"), now, true},
		{"empty", nil, now, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NeedsRenewal(tt.cert, tt.at); got != tt.want {
				t.Errorf("NeedsRenewal = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseCA(t *testing.T) {
	now := time.Now()
	caCert, caKey, err := NewCA("ca", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := NewCA("other", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if string(ca.CertPEM) != string(caCert) {
		t.Error("CertPEM differs from the parsed certificate")
	}
	leaf := agentPair(t, ca, "a", now)
	tests := []struct {
		name      string
		cert, key []byte
		wantErr   string
	}{
		{"not a CA", leaf.cert, leaf.key, "not a CA"},
		{"mismatched key", caCert, otherKey, "does not match"},
		{"garbage certificate", []byte("garbage"), caKey, "parsing the CA certificate"},
		{"garbage key", caCert, []byte("garbage"), "parsing the key"},
		{"key of unknown type", caCert, []byte("-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n"), "unsupported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCA(tt.cert, tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCA: got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// A serving certificate names the host names it is given, serves only, and
// is no identity of the agent API: neither an agent nor a client.
func TestIssueServing(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	ca := newCA(t, now)
	names := []string{"api", "api.sys", "api.sys.svc", "api.sys.svc.cluster.local"}
	certPEM, keyPEM, err := ca.IssueServing(names, now, DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	c := mustParse(t, certPEM)
	if c.Subject.CommonName != "api" || strings.Join(c.DNSNames, ",") != strings.Join(names, ",") || len(c.URIs) != 0 || c.IsCA {
		t.Errorf("CN %q, DNS names %v, URIs %v, IsCA %v", c.Subject.CommonName, c.DNSNames, c.URIs, c.IsCA)
	}
	if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("ExtKeyUsage = %v, want server authentication only", c.ExtKeyUsage)
	}
	if !c.NotBefore.Equal(now.Add(-clockSkew)) || !c.NotAfter.Equal(now.Add(DefaultCertValidity)) {
		t.Errorf("validity %s to %s", c.NotBefore, c.NotAfter)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("the key does not match: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: "api.sys.svc", CurrentTime: now}); err != nil {
		t.Errorf("not valid for api.sys.svc: %v", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.sys.svc", CurrentTime: now}); err == nil {
		t.Error("valid for a name it was not issued for")
	}

	// Not an identity of the agent API.
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c, ca.Cert}}}
	if err := verifyClient(cs); err == nil {
		t.Error("the agent accepts the serving certificate as a client")
	}
	if err := verifyAgent(cs, roots, AgentIdentity(ns, "api"), now); err == nil {
		t.Error("the serving certificate passes as an agent's")
	}
	// And an agent's certificate names no host.
	if a := mustParse(t, agentPair(t, ca, "api.sys.svc", now).cert); len(a.DNSNames) != 0 {
		t.Errorf("agent certificate DNS names %v", a.DNSNames)
	} else if _, err := a.Verify(x509.VerifyOptions{Roots: roots, DNSName: "api.sys.svc", CurrentTime: now}); err == nil {
		t.Error("an agent certificate is valid for a host name")
	}

	// Never valid beyond the CA.
	late, _, err := ca.IssueServing(names, now.Add(DefaultCAValidity-time.Hour), DefaultCertValidity)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustParse(t, late).NotAfter; !got.Equal(ca.Cert.NotAfter) {
		t.Errorf("NotAfter = %s, want the CA's %s", got, ca.Cert.NotAfter)
	}
	for _, bad := range [][]string{nil, {""}, {"API.sys"}, {"api..sys"}, {"-api"}, {"api/x"}, {"api", "a b"}} {
		if _, _, err := ca.IssueServing(bad, now, time.Hour); err == nil {
			t.Errorf("IssueServing(%q) succeeded", bad)
		}
	}
	if _, _, err := ca.IssueServing(names, now, 0); err == nil {
		t.Error("IssueServing with zero validity succeeded")
	}
}
