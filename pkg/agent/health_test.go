package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// pingRuntime is a fakeRuntime that is a runtime.Pinger: Ping fails with err
// while it is set, and while hang is set waits until it is closed (a call
// stuck whatever its deadline).
type pingRuntime struct {
	*fakeRuntime
	mu   sync.Mutex
	err  error
	hang chan struct{}
}

func (p *pingRuntime) Ping(context.Context) error {
	p.mu.Lock()
	err, hang := p.err, p.hang
	p.mu.Unlock()
	if hang != nil {
		<-hang
		return errors.New("answered late")
	}
	return err
}

func (p *pingRuntime) set(err error, hang chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err, p.hang = err, hang
}

var testHealth = HealthConfig{
	Period: 10 * time.Millisecond, Timeout: 50 * time.Millisecond,
	ReadinessThreshold: 200 * time.Millisecond, LivenessThreshold: 500 * time.Millisecond,
}

// startHealth starts an agent over rt serving its Health's probes; run
// starts the Health's checks.
func startHealth(t *testing.T, rt runtime.Runtime) (srv *httptest.Server, h *Health, run func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	a := New(Config{}, rt, testr.New(t))
	h = NewHealth(rt, testHealth, testr.New(t))
	srv = httptest.NewServer(a.ProbeHandler(WithHealth(h)))
	t.Cleanup(srv.Close)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return srv, h, func() {
		wg.Add(1)
		go func() { defer wg.Done(); h.Run(ctx) }()
	}
}

// probe answers the status code and body of GET path; it fails the test
// if the answer takes long (a probe must not wait on the runtime).
func probe(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	began := time.Now()
	resp, err := timeoutClient.Get(srv.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if d := time.Since(began); d > time.Second {
		t.Errorf("GET %s took %s", path, d)
	}
	return resp.StatusCode, string(body)
}

// waitProbe waits until GET path answers code, and returns how long that took.
func waitProbe(t *testing.T, srv *httptest.Server, path string, code int) (time.Duration, string) {
	t.Helper()
	began := time.Now()
	for {
		got, body := probe(t, srv, path)
		if got == code {
			return time.Since(began), body
		}
		if time.Since(began) > 10*time.Second {
			t.Fatalf("GET %s: still %d %q, want %d", path, got, body, code)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHealthFailsWhileTheRuntimeDoesNotAnswer(t *testing.T) {
	rt := &pingRuntime{fakeRuntime: newFakeRuntime()}
	srv, _, run := startHealth(t, rt)

	// Before the checks start (the agent starting), both probes are as before.
	rt.set(errors.New("connection refused"), nil)
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := probe(t, srv, p); code != http.StatusOK {
			t.Errorf("GET %s before the checks: %d %q", p, code, body)
		}
	}
	rt.set(nil, nil)
	run()
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := probe(t, srv, p); code != http.StatusOK {
			t.Errorf("GET %s: %d %q", p, code, body)
		}
	}

	for round := 0; round < 2; round++ {
		// containerd goes away: not ready at once, not live only after the
		// liveness threshold.
		failed := time.Now()
		rt.set(errors.New("connection refused"), nil)
		waitProbe(t, srv, "/readyz", http.StatusServiceUnavailable)
		if code, body := probe(t, srv, "/healthz"); time.Since(failed) < testHealth.LivenessThreshold-2*testHealth.Period && code != http.StatusOK {
			t.Errorf("GET /healthz %s after the runtime failed: %d %q; want ok until %s", time.Since(failed), code, body, testHealth.LivenessThreshold)
		}
		_, body := waitProbe(t, srv, "/healthz", http.StatusServiceUnavailable)
		// The last success was at most a period (plus a check) before.
		if d := time.Since(failed); d < testHealth.LivenessThreshold-2*testHealth.Period {
			t.Errorf("/healthz failed %s after the runtime, before the threshold %s", d, testHealth.LivenessThreshold)
		}
		if !strings.Contains(body, "connection refused") {
			t.Errorf("/healthz says %q; want the runtime's error", body)
		}
		if code, body := probe(t, srv, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "connection refused") {
			t.Errorf("GET /readyz while not live: %d %q", code, body)
		}

		// It answers again: live and ready at the next check.
		rt.set(nil, nil)
		if d, _ := waitProbe(t, srv, "/healthz", http.StatusOK); d > time.Second {
			t.Errorf("/healthz recovered only after %s", d)
		}
		waitProbe(t, srv, "/readyz", http.StatusOK)
	}
}

func TestHealthProbesDoNotWaitOnAHungRuntime(t *testing.T) {
	rt := &pingRuntime{fakeRuntime: newFakeRuntime()}
	srv, _, run := startHealth(t, rt)
	run()
	waitProbe(t, srv, "/readyz", http.StatusOK)

	// A check that never returns, whatever its deadline: the probes answer at
	// once (probe fails a slow answer) and turn from what the agent last knew.
	hang := make(chan struct{})
	hung := time.Now()
	rt.set(nil, hang)
	_, body := waitProbe(t, srv, "/readyz", http.StatusServiceUnavailable)
	if d := time.Since(hung); d < testHealth.ReadinessThreshold-2*testHealth.Period {
		t.Errorf("/readyz failed %s after the runtime hung, before %s: %q", d, testHealth.ReadinessThreshold, body)
	}
	_, body = waitProbe(t, srv, "/healthz", http.StatusServiceUnavailable)
	if !strings.Contains(body, "waiting for an answer") {
		t.Errorf("/healthz says %q", body)
	}
	rt.set(nil, nil)
	close(hang)
	waitProbe(t, srv, "/healthz", http.StatusOK)
	waitProbe(t, srv, "/readyz", http.StatusOK)
}

func TestHealthOfARuntimeThatCannotBeAsked(t *testing.T) {
	rt := newFakeRuntime()
	srv, h, run := startHealth(t, rt)
	run()
	time.Sleep(testHealth.LivenessThreshold + 50*time.Millisecond)
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := probe(t, srv, p); code != http.StatusOK {
			t.Errorf("GET %s: %d %q", p, code, body)
		}
	}
	if h.Live() != nil || h.Ready() != nil {
		t.Errorf("live %v ready %v", h.Live(), h.Ready())
	}
	// Without WithHealth, the probes are the agent's alone.
	var none *Health
	if none.Live() != nil || none.Ready() != nil {
		t.Error("a nil Health is not healthy")
	}
}
