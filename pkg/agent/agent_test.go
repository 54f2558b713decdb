package agent

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// fakeRuntime is an in-memory runtime that counts creations.
type fakeRuntime struct {
	mu      sync.Mutex
	running map[string]api.SandboxStatus
	creates map[string]int
	exits   chan api.SandboxStatus
}

func newFakeRuntime(existing ...api.SandboxStatus) *fakeRuntime {
	f := &fakeRuntime{running: map[string]api.SandboxStatus{}, creates: map[string]int{}, exits: make(chan api.SandboxStatus, 16)}
	for _, s := range existing {
		f.running[s.UID] = s
	}
	return f
}

func (f *fakeRuntime) Initialize(context.Context) (runtime.Info, error) {
	return runtime.Info{Runtime: "fake"}, nil
}

func (f *fakeRuntime) CreateSandbox(_ context.Context, s api.SandboxSpec) api.SandboxStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st, ok := f.running[s.UID]; ok {
		return st
	}
	f.creates[s.UID]++
	now := time.Now()
	st := api.SandboxStatus{UID: s.UID, Name: s.Name, Namespace: s.Namespace, State: api.StateRunning, StartedAt: &now,
		CPUMillis: s.CPUMillis, MemoryBytes: s.MemoryBytes}
	if s.Image == "missing" {
		st = api.SandboxStatus{UID: s.UID, State: api.StateFailed, Reason: api.ReasonImageNotPresent}
	}
	f.running[s.UID] = st
	return st
}

func (f *fakeRuntime) DeleteSandbox(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.running, uid)
	return nil
}

func (f *fakeRuntime) has(uid string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.running[uid]
	return ok
}

// eventually polls cond for up to five seconds.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

func (f *fakeRuntime) ListSandboxes(context.Context) ([]api.SandboxStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.SandboxStatus
	for _, s := range f.running {
		out = append(out, s)
	}
	return out, nil
}

func (f *fakeRuntime) ListImages(context.Context) ([]api.Image, error) {
	return []api.Image{{Names: []string{"docker.io/library/busybox:latest"}, Digest: "sha256:abc", Size: 1}}, nil
}

func (f *fakeRuntime) Logs(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("output")), nil
}

func (f *fakeRuntime) Exits() <-chan api.SandboxStatus { return f.exits }
func (f *fakeRuntime) Close() error                    { return nil }

const token = "0123456789abcdef0123"

func start(t *testing.T, rt *fakeRuntime, capacity api.Resources) (*Agent, *httptest.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := New(Config{Capacity: capacity}, rt, testr.New(t))
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler(token))
	t.Cleanup(srv.Close)
	return a, srv
}

func sbx(uid string) api.SandboxSpec {
	return api.SandboxSpec{UID: uid, Name: "n-" + uid, Namespace: "ns", Image: "busybox", CPUMillis: 100, MemoryBytes: 1 << 20}
}

func TestSyncConverges(t *testing.T) {
	rt := newFakeRuntime(api.SandboxStatus{UID: "stale", State: api.StateRunning})
	_, srv := start(t, rt, api.Resources{Slots: 4})
	c := client.New(srv.URL, token, nil)
	ctx := context.Background()

	req := &api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: []api.SandboxSpec{sbx("a"), sbx("b")}}
	resp, err := c.Sync(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Sandboxes) != 2 || resp.Sandboxes[0].UID != "a" || resp.Sandboxes[0].State != api.StateRunning {
		t.Fatalf("response %+v", resp)
	}
	if len(resp.Deleting) != 1 || resp.Deleting[0] != "stale" {
		t.Errorf("deleting %v, want [stale]", resp.Deleting)
	}
	if !eventually(func() bool { return !rt.has("stale") }) {
		t.Error("an adopted sandbox that is not desired was not deleted")
	}
	// The same set again, and a retry of an older revision of the same epoch, change nothing.
	if _, err := c.Sync(ctx, req); err != nil {
		t.Fatal(err)
	}
	if rt.creates["a"] != 1 || rt.creates["b"] != 1 {
		t.Errorf("creations %v, want one each", rt.creates)
	}
	// A newer set without b deletes b.
	if _, err := c.Sync(ctx, &api.SyncRequest{Epoch: 1, Revision: 2, Sandboxes: []api.SandboxSpec{sbx("a")}}); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { return !rt.has("b") }) {
		t.Error("b is still running")
	}
	// A stale sync is refused and changes nothing.
	_, err = c.Sync(ctx, &api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: nil})
	if !client.IsConflict(err) {
		t.Errorf("stale sync: %v, want 409", err)
	}
	if !rt.has("a") {
		t.Error("a stale sync deleted a")
	}
	// A new epoch (a restarted scheduler) is accepted from revision 0.
	if _, err := c.Sync(ctx, &api.SyncRequest{Epoch: 2, Revision: 0, Sandboxes: []api.SandboxSpec{sbx("a")}}); err != nil {
		t.Errorf("new epoch: %v", err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Allocated.Slots != 1 || st.Allocated.CPUMillis != 100 || len(st.Images) != 1 || !st.Healthy || st.Epoch != 2 {
		t.Errorf("status %+v", st)
	}
}

func TestRequestsRefused(t *testing.T) {
	rt := newFakeRuntime()
	_, srv := start(t, rt, api.Resources{Slots: 2, CPUMillis: 1000, MemoryBytes: 1 << 30})
	body := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	sync := func(specs ...api.SandboxSpec) string {
		return body(api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: specs})
	}
	big := sbx("big")
	big.CPUMillis = 2000
	noImage := sbx("x")
	noImage.Image = ""
	badUID := sbx("../etc")
	cases := []struct {
		name, method, path, token, contentType, body string
		code                                         int
		contains                                     string
	}{
		{"no token", "GET", api.PathStatus, "", "", "", 401, "bearer token is required"},
		{"wrong token", "GET", api.PathStatus, "nope-nope-nope-nope", "", "", 403, "not valid"},
		{"no token on sync", "PUT", api.PathSync, "", "application/json", sync(sbx("a")), 401, "bearer token"},
		{"malformed JSON", "PUT", api.PathSync, token, "application/json", "{", 400, "malformed body"},
		{"unknown field", "PUT", api.PathSync, token, "application/json", `{"epoch":1,"sandboxez":[]}`, 400, "unknown field"},
		{"trailing data", "PUT", api.PathSync, token, "application/json", `{"epoch":1}{}`, 400, "data after"},
		{"wrong content type", "PUT", api.PathSync, token, "text/plain", sync(), 415, "application/json"},
		{"oversized", "PUT", api.PathSync, token, "application/json", `{"sandboxes":[` + strings.Repeat(" ", api.MaxRequestBytes) + `]}`, 413, "larger than"},
		{"duplicate uid", "PUT", api.PathSync, token, "application/json", sync(sbx("a"), sbx("a")), 400, "appears twice"},
		{"no image", "PUT", api.PathSync, token, "application/json", sync(noImage), 400, "image is required"},
		{"bad uid", "PUT", api.PathSync, token, "application/json", sync(badUID), 400, "uid"},
		{"more than the slots", "PUT", api.PathSync, token, "application/json", sync(sbx("a"), sbx("b"), sbx("c")), 422, "3 sandboxes need a slot; the agent has 2"},
		{"more CPU than the pod", "PUT", api.PathSync, token, "application/json", sync(big), 422, "asks 2000m CPU"},
		{"wrong method", "DELETE", api.PathSync, token, "", "", 405, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(data), tc.contains) {
				t.Errorf("%d %s, want %d containing %q", resp.StatusCode, data, tc.code, tc.contains)
			}
		})
	}
	if len(rt.creates) != 0 || len(rt.running) != 0 {
		t.Errorf("refused requests changed the runtime: creates %v running %v", rt.creates, rt.running)
	}
	// Probes need no token.
	for _, p := range []string{api.PathHealthz, api.PathReadyz, api.PathMetrics} {
		resp, err := http.Get(srv.URL + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", p, resp.StatusCode, err)
		}
		resp.Body.Close()
	}
}

func TestFinishedSandboxesHoldNoSlot(t *testing.T) {
	rt := newFakeRuntime()
	a, srv := start(t, rt, api.Resources{Slots: 1})
	c := client.New(srv.URL, token, nil)
	ctx := context.Background()
	if _, err := c.Sync(ctx, &api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: []api.SandboxSpec{sbx("a")}}); err != nil {
		t.Fatal(err)
	}
	code := int32(0)
	rt.exits <- api.SandboxStatus{UID: "a", State: api.StateExited, ExitCode: &code, Reason: api.ReasonCompleted}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := a.Status(ctx)
		if len(st.Sandboxes) == 1 && st.Sandboxes[0].State == api.StateExited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exit never reached the status: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// a finished: its slot is free for b while a is still desired (for its logs).
	resp, err := c.Sync(ctx, &api.SyncRequest{Epoch: 1, Revision: 2, Sandboxes: []api.SandboxSpec{sbx("a"), sbx("b")}})
	if err != nil {
		t.Fatalf("a finished sandbox must not hold a slot: %v", err)
	}
	if resp.Sandboxes[0].State != api.StateExited || resp.Sandboxes[1].State != api.StateRunning {
		t.Errorf("response %+v", resp.Sandboxes)
	}
	logs, err := c.Logs(ctx, "a")
	if err != nil || string(logs) != "output" {
		t.Errorf("logs %q %v", logs, err)
	}
	if _, err := c.Logs(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("logs of an unknown sandbox: %v", err)
	}
}

// TestNotReadyRefuses: until the agent has adopted what the runtime runs,
// status and sync answer 503 (an empty status would make the control plane
// take its sandboxes for lost); health answers.
func TestNotReadyRefuses(t *testing.T) {
	a := New(Config{Capacity: api.Resources{Slots: 1}}, newFakeRuntime(), testr.New(t))
	srv := httptest.NewServer(a.Handler(token))
	defer srv.Close()
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, api.PathStatus}, {http.MethodPut, api.PathSync}, {http.MethodGet, api.PathReadyz}, {http.MethodGet, api.PathHealthz},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(`{"epoch":1,"revision":1,"sandboxes":[]}`))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusServiceUnavailable
		if tc.path == api.PathHealthz {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, want)
		}
	}
}

func (f *fakeRuntime) StopSandbox(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st, ok := f.running[uid]; ok && st.State == api.StateRunning {
		code := int32(137)
		st.State, st.ExitCode, st.Reason = api.StateExited, &code, api.ReasonError
		f.running[uid] = st
	}
	return nil
}
