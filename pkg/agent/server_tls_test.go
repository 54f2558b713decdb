package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
)

// The agent API as cmd/agent serves it: Handler behind mutual TLS that
// admits the scheduler (every route) and the sandbox-apiserver (the
// interactive routes), ProbeHandler in plain HTTP with nothing of the API.
// Requests that are refused never reach the runtime.
func TestAPIServedOnlyToItsClients(t *testing.T) {
	const ns, pod = "fast-sandbox-system", "pool-agent-x1"
	now := time.Now()
	caPEM, caKey, err := agentpki.NewCA("test", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := agentpki.ParseCA(caPEM, caKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueAgent(ns, pod, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: caPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tlsConfig, err := agentpki.ServerConfig(filepath.Join(dir, agentpki.KeyCert), filepath.Join(dir, agentpki.KeyKey), filepath.Join(dir, agentpki.KeyCACert))
	if err != nil {
		t.Fatal(err)
	}

	rt := newFakeRuntime()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := New(Config{Capacity: api.Resources{Slots: 4}}, rt, testr.New(t))
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(a.Handler())
	srv.TLS = tlsConfig
	srv.StartTLS()
	t.Cleanup(srv.Close)
	probes := httptest.NewServer(a.ProbeHandler())
	t.Cleanup(probes.Close)

	clientOf := func(issue func() ([]byte, []byte, error)) *http.Client {
		t.Helper()
		c, k, err := issue()
		if err != nil {
			t.Fatal(err)
		}
		creds, err := agentpki.NewClient(c, k, caPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Client{Transport: creds.Transport(nil, ns, pod), Timeout: 5 * time.Second}
	}
	scheduler := clientOf(func() ([]byte, []byte, error) { return ca.IssueScheduler(now, time.Hour) })
	otherAgent := clientOf(func() ([]byte, []byte, error) { return ca.IssueAgent(ns, "pool-agent-x2", now, time.Hour) })
	apiServer := clientOf(func() ([]byte, []byte, error) { return ca.IssueAPIServer(now, time.Hour) })
	sync := &api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: []api.SandboxSpec{{UID: "u1", Namespace: "t", Name: "a", Image: "busybox"}}}

	if _, err := client.New(srv.URL, otherAgent).Sync(ctx, sync); err == nil {
		t.Error("another agent's certificate was admitted")
	}
	// The sandbox-apiserver's certificate passes TLS, but not to sync or status.
	if _, err := client.New(srv.URL, apiServer).Sync(ctx, sync); !client.IsRefused(err) || !strings.Contains(err.Error(), "403") {
		t.Errorf("the sandbox-apiserver's sync: %v, want 403", err)
	}
	if _, err := client.New(srv.URL, apiServer).Status(ctx); !client.IsRefused(err) || !strings.Contains(err.Error(), "403") {
		t.Errorf("the sandbox-apiserver's status: %v, want 403", err)
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: scheduler.Transport.(*http.Transport).TLSClientConfig.Clone()}, Timeout: 5 * time.Second}
	noCert.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = nil
	noCert.Transport.(*http.Transport).TLSClientConfig.Certificates = nil
	if _, err := client.New(srv.URL, noCert).Sync(ctx, sync); err == nil {
		t.Error("a client without a certificate was admitted")
	}
	if resp, err := http.Get(strings.Replace(srv.URL, "https://", "http://", 1) + api.PathStatus); err == nil {
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Error("plain HTTP was answered")
		}
	}
	rt.mu.Lock()
	if len(rt.creates) != 0 {
		t.Errorf("refused requests reached the runtime: %v", rt.creates)
	}
	rt.mu.Unlock()

	if _, err := client.New(srv.URL, scheduler).Sync(ctx, sync); err != nil {
		t.Fatalf("the scheduler was refused: %v", err)
	}

	// The probe port answers probes and nothing of the API.
	for path, want := range map[string]int{api.PathHealthz: 200, api.PathReadyz: 200, api.PathMetrics: 200,
		api.PathStatus: 404, "/v1/sandboxes/u1/logs": 404} {
		resp, err := http.Get(probes.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("probe port %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	req, _ := http.NewRequest(http.MethodPut, probes.URL+api.PathSync, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			t.Error("the probe port took a sync")
		}
	}
}
