package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// fakeRuntime is an in-memory runtime that counts creations, stops and
// removals. A creation of a UID in block waits until its channel is closed
// (a slow image pull); ListImages waits on imagesBlock when it is set and
// fails with imagesErr.
type fakeRuntime struct {
	mu          sync.Mutex
	running     map[string]api.SandboxStatus
	creates     map[string]int
	stops       map[string]int
	deletes     map[string]int
	block       map[string]chan struct{}
	imagesBlock chan struct{}
	imagesErr   error
	exits       chan api.SandboxStatus
	// unavailable counts, by UID, the next creations that cannot reach the
	// runtime (ReasonRuntimeUnavailable).
	unavailable map[string]int
}

func newFakeRuntime(existing ...api.SandboxStatus) *fakeRuntime {
	f := &fakeRuntime{running: map[string]api.SandboxStatus{}, creates: map[string]int{}, stops: map[string]int{},
		deletes: map[string]int{}, block: map[string]chan struct{}{}, exits: make(chan api.SandboxStatus, 16),
		unavailable: map[string]int{}}
	for _, s := range existing {
		f.running[s.UID] = s
	}
	return f
}

func (f *fakeRuntime) Initialize(context.Context) (runtime.Info, error) {
	return runtime.Info{Runtime: "fake"}, nil
}

func (f *fakeRuntime) CreateSandbox(ctx context.Context, s api.SandboxSpec) api.SandboxStatus {
	f.mu.Lock()
	if st, ok := f.running[s.UID]; ok {
		f.mu.Unlock()
		return st
	}
	f.creates[s.UID]++
	block := f.block[s.UID]
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return api.SandboxStatus{UID: s.UID, State: api.StateFailed, Reason: api.ReasonCreateFailed, Message: ctx.Err().Error()}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unavailable[s.UID] > 0 {
		f.unavailable[s.UID]--
		return api.SandboxStatus{UID: s.UID, Name: s.Name, Namespace: s.Namespace, State: api.StateFailed,
			Reason: api.ReasonRuntimeUnavailable, Message: "connection refused"}
	}
	now := time.Now()
	st := api.SandboxStatus{UID: s.UID, Name: s.Name, Namespace: s.Namespace, State: api.StateRunning, StartedAt: &now,
		CPUMillis: s.CPUMillis, MemoryBytes: s.MemoryBytes}
	switch s.Image {
	case "missing":
		st = api.SandboxStatus{UID: s.UID, State: api.StateFailed, Reason: api.ReasonImageNotPresent}
	case "root": // an image whose user is root, on an agent that runs only non-root sandboxes
		st = api.SandboxStatus{UID: s.UID, Name: s.Name, Namespace: s.Namespace, State: api.StateFailed,
			Reason: api.ReasonRunAsNonRootViolation, Message: "image root runs as root"}
	}
	f.running[s.UID] = st
	return st
}

// blockCreate makes the creations of uid wait until the returned function is called.
func (f *fakeRuntime) blockCreate(uid string) (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.block[uid] = ch
	f.mu.Unlock()
	return sync.OnceFunc(func() { close(ch) })
}

// count reads one of the runtime's counters.
func (f *fakeRuntime) count(m map[string]int, uid string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return m[uid]
}

// StopSandbox kills a running sandbox, keeps it, and reports its exit as a
// runtime does.
func (f *fakeRuntime) StopSandbox(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops[uid]++
	if st, ok := f.running[uid]; ok && st.State == api.StateRunning {
		code := int32(137)
		st.State, st.ExitCode, st.Reason = api.StateExited, &code, api.ReasonError
		f.running[uid] = st
		f.exits <- st
	}
	return nil
}

func (f *fakeRuntime) DeleteSandbox(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes[uid]++
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

func (f *fakeRuntime) ListImages(ctx context.Context) ([]api.Image, error) {
	f.mu.Lock()
	block, err := f.imagesBlock, f.imagesErr
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	return []api.Image{{Names: []string{"docker.io/library/busybox:latest"}, Digest: "sha256:abc", Size: 1}}, nil
}

func (f *fakeRuntime) Logs(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("output")), nil
}

func (f *fakeRuntime) Exits() <-chan api.SandboxStatus { return f.exits }
func (f *fakeRuntime) Close() error                    { return nil }

// timeoutClient calls the agent API as the scheduler (see pki_test.go); it
// fails a test whose request hangs (a sync stalled on a creation).
var timeoutClient = testPKI.client(identityScheduler)

func start(t *testing.T, rt *fakeRuntime, capacity api.Resources) (*Agent, *httptest.Server) {
	t.Helper()
	return startWith(t, rt, Config{Capacity: capacity})
}

func startWith(t *testing.T, rt *fakeRuntime, cfg Config) (*Agent, *httptest.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := New(cfg, rt, testr.New(t))
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return a, serveTLS(t, a.Handler())
}

func sbx(uid string) api.SandboxSpec {
	return api.SandboxSpec{UID: uid, Name: "n-" + uid, Namespace: "ns", Image: "busybox", CPUMillis: 100, MemoryBytes: 1 << 20}
}

func TestSyncConverges(t *testing.T) {
	rt := newFakeRuntime(api.SandboxStatus{UID: "stale", State: api.StateRunning})
	_, srv := start(t, rt, api.Resources{Slots: 4})
	c := client.New(srv.URL, timeoutClient)
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
	if rt.count(rt.creates, "a") != 1 || rt.count(rt.creates, "b") != 1 {
		t.Errorf("creations %d %d, want one each", rt.count(rt.creates, "a"), rt.count(rt.creates, "b"))
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
	tooManyFinished := body(api.SyncRequest{Epoch: 1, Revision: 1, Finished: make([]string, api.MaxFinished+1)})
	bothLists := body(api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: []api.SandboxSpec{sbx("a")}, Finished: []string{"a"}})
	cases := []struct {
		name, method, path, contentType, body string
		code                                  int
		contains                              string
	}{
		{"malformed JSON", "PUT", api.PathSync, "application/json", "{", 400, "malformed body"},
		{"unknown field", "PUT", api.PathSync, "application/json", `{"epoch":1,"sandboxez":[]}`, 400, "unknown field"},
		{"trailing data", "PUT", api.PathSync, "application/json", `{"epoch":1}{}`, 400, "data after"},
		{"wrong content type", "PUT", api.PathSync, "text/plain", sync(), 415, "application/json"},
		{"oversized", "PUT", api.PathSync, "application/json", `{"sandboxes":[` + strings.Repeat(" ", api.MaxRequestBytes) + `]}`, 413, "larger than"},
		{"duplicate uid", "PUT", api.PathSync, "application/json", sync(sbx("a"), sbx("a")), 400, "appears twice"},
		{"too many sandboxes", "PUT", api.PathSync, "application/json", sync(make([]api.SandboxSpec, api.MaxSandboxes+1)...), 422, "at most 1024"},
		{"too many finished", "PUT", api.PathSync, "application/json", tooManyFinished, 422, "at most 16384"},
		{"in sandboxes and finished", "PUT", api.PathSync, "application/json", bothLists, 400, "appears twice"},
		{"wrong method", "DELETE", api.PathSync, "", "", 405, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			// No overall timeout: the oversized body takes a while through TLS.
			resp, err := (&http.Client{Transport: timeoutClient.Transport}).Do(req)
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
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.creates) != 0 || len(rt.running) != 0 {
		t.Errorf("refused requests changed the runtime: creates %v running %v", rt.creates, rt.running)
	}
	// Probes are open (the API port admits only the scheduler's certificate;
	// see server_tls_test.go).
	for _, p := range []string{api.PathHealthz, api.PathReadyz, api.PathMetrics} {
		resp, err := timeoutClient.Get(srv.URL + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", p, resp.StatusCode, err)
		}
		resp.Body.Close()
	}
}

func TestFinishedSandboxesHoldNoSlot(t *testing.T) {
	rt := newFakeRuntime()
	a, srv := start(t, rt, api.Resources{Slots: 1})
	c := client.New(srv.URL, timeoutClient)
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
	srv := serveTLS(t, a.Handler())
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, api.PathStatus}, {http.MethodPut, api.PathSync}, {http.MethodGet, api.PathReadyz}, {http.MethodGet, api.PathHealthz},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(`{"epoch":1,"revision":1,"sandboxes":[]}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := timeoutClient.Do(req)
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

// syncOK sends a sync and fails the test on an error.
func syncOK(t *testing.T, c *client.Client, rev int64, specs []api.SandboxSpec, finished ...string) *api.SyncResponse {
	t.Helper()
	resp, err := c.Sync(context.Background(), &api.SyncRequest{Epoch: 1, Revision: rev, Sandboxes: specs, Finished: finished})
	if err != nil {
		t.Fatalf("sync revision %d: %v", rev, err)
	}
	if len(resp.Sandboxes) != len(specs) {
		t.Fatalf("sync revision %d answered %d sandboxes for %d", rev, len(resp.Sandboxes), len(specs))
	}
	return resp
}

// statusOf is the agent's status of one sandbox (State "" when it has none).
func statusOf(a *Agent, uid string) api.SandboxStatus {
	for _, s := range a.Status(context.Background()).Sandboxes {
		if s.UID == uid {
			return s
		}
	}
	return api.SandboxStatus{}
}

// TestInvalidSandboxFailsAlone: a malformed or oversized sandbox fails with
// InvalidSpec, naming the field; the rest of the sync runs.
func TestInvalidSandboxFailsAlone(t *testing.T) {
	with := func(uid string, change func(*api.SandboxSpec)) api.SandboxSpec {
		s := sbx(uid)
		change(&s)
		return s
	}
	cases := []struct {
		name     string
		spec     api.SandboxSpec
		contains string
	}{
		{"bad uid", sbx("../etc"), `sandboxes[1].uid "../etc"`},
		{"no name", with("x", func(s *api.SandboxSpec) { s.Name = "" }), "sandboxes[1].name is required"},
		{"no namespace", with("x", func(s *api.SandboxSpec) { s.Namespace = "" }), "sandboxes[1].namespace is required"},
		{"no image", with("x", func(s *api.SandboxSpec) { s.Image = "" }), "sandboxes[1].image is required"},
		{"negative CPU", with("x", func(s *api.SandboxSpec) { s.CPUMillis = -1 }), "sandboxes[1].cpuMillis -1"},
		{"negative memory", with("x", func(s *api.SandboxSpec) { s.MemoryBytes = -1 }), "sandboxes[1].memoryBytes -1"},
		{"unknown network mode", with("x", func(s *api.SandboxSpec) { s.NetworkMode = "Host" }), `sandboxes[1].networkMode "Host"`},
		{"empty env name", with("x", func(s *api.SandboxSpec) { s.Env = []api.EnvVar{{Name: "A"}, {Value: "v"}} }), "sandboxes[1].env[1].name is required"},
		{"oversized", with("x", func(s *api.SandboxSpec) { s.Args = []string{strings.Repeat("a", api.MaxSandboxSpecBytes)} }),
			fmt.Sprintf("sandboxes[1] is %d bytes as JSON; at most %d", api.MaxSandboxSpecBytes+len(`{"uid":"x","namespace":"ns","name":"n-x","image":"busybox","args":[""],"cpuMillis":100,"memoryBytes":1048576}`), api.MaxSandboxSpecBytes)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := newFakeRuntime()
			a, srv := start(t, rt, api.Resources{Slots: 4})
			c := client.New(srv.URL, timeoutClient)
			resp := syncOK(t, c, 1, []api.SandboxSpec{sbx("a"), tc.spec, sbx("b")})
			got := resp.Sandboxes
			if got[0].State != api.StateRunning || got[2].State != api.StateRunning {
				t.Errorf("the valid sandboxes: %+v", got)
			}
			bad := got[1]
			if bad.UID != tc.spec.UID || bad.State != api.StateFailed || bad.Reason != api.ReasonInvalidSpec || !strings.Contains(bad.Message, tc.contains) {
				t.Errorf("the invalid sandbox: %+v, want Failed/InvalidSpec with %q", bad, tc.contains)
			}
			if n := rt.count(rt.creates, tc.spec.UID); n != 0 {
				t.Errorf("the invalid sandbox was created %d times", n)
			}
			if st := statusOf(a, tc.spec.UID); st.Reason != api.ReasonInvalidSpec {
				t.Errorf("status of the invalid sandbox: %+v", st)
			}
			// Once the sync leaves it out, the status forgets it.
			syncOK(t, c, 2, []api.SandboxSpec{sbx("a"), sbx("b")})
			if st := statusOf(a, tc.spec.UID); st.State != "" {
				t.Errorf("status of a sandbox no longer desired: %+v", st)
			}
		})
	}
}

// TestNoCapacityPerSandbox: the sandboxes the agent has keep their place;
// new ones are admitted in the request's order while they fit, the others
// fail with NoCapacity.
func TestNoCapacityPerSandbox(t *testing.T) {
	big := sbx("big")
	big.CPUMillis = 2000
	fat := sbx("fat")
	fat.MemoryBytes = 600 << 20
	cases := []struct {
		name     string
		capacity api.Resources
		before   []api.SandboxSpec // applied first
		specs    []api.SandboxSpec
		want     []string // "" runs, else the NoCapacity message contains it
	}{
		{"slots", api.Resources{Slots: 2}, nil, []api.SandboxSpec{sbx("a"), sbx("b"), sbx("c"), sbx("d")},
			[]string{"", "", "sandbox ns/n-c needs a slot; the agent's 2 slots are taken", "needs a slot"}},
		{"existing keep their place", api.Resources{Slots: 2}, []api.SandboxSpec{sbx("z")}, []api.SandboxSpec{sbx("a"), sbx("b"), sbx("z")},
			[]string{"", "needs a slot", ""}},
		{"more CPU than the agent, a smaller one after it still fits", api.Resources{Slots: 4, CPUMillis: 1000}, nil,
			[]api.SandboxSpec{sbx("a"), big, sbx("b")}, []string{"", "sandbox ns/n-big asks 2000m CPU; the agent has 1000m", ""}},
		{"CPU left", api.Resources{Slots: 20, CPUMillis: 250}, nil, []api.SandboxSpec{sbx("a"), sbx("b"), sbx("c")},
			[]string{"", "", "asks 100m CPU; the agent has 250m, 200m of it taken"}},
		{"memory left", api.Resources{Slots: 20, MemoryBytes: 1 << 30}, []api.SandboxSpec{fat}, []api.SandboxSpec{fat, func() api.SandboxSpec { s := fat; s.UID = "fat2"; return s }(), sbx("a")},
			[]string{"", "asks 629145600 bytes of memory; the agent has 1073741824, 629145600 of it taken", ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := newFakeRuntime()
			a, srv := start(t, rt, tc.capacity)
			c := client.New(srv.URL, timeoutClient)
			if tc.before != nil {
				syncOK(t, c, 1, tc.before)
			}
			resp := syncOK(t, c, 2, tc.specs)
			for i, want := range tc.want {
				got := resp.Sandboxes[i]
				switch {
				case want == "" && got.State != api.StateRunning:
					t.Errorf("%s: %+v, want Running", tc.specs[i].UID, got)
				case want != "" && (got.State != api.StateFailed || got.Reason != api.ReasonNoCapacity || !strings.Contains(got.Message, want)):
					t.Errorf("%s: %+v, want NoCapacity with %q", tc.specs[i].UID, got, want)
				case want != "" && rt.count(rt.creates, got.UID) != 0:
					t.Errorf("%s was created", got.UID)
				case want != "" && statusOf(a, got.UID).Reason != api.ReasonNoCapacity:
					t.Errorf("%s: status %+v, want NoCapacity", got.UID, statusOf(a, got.UID))
				}
			}
		})
	}
}

// TestFinished: a finished sandbox that runs is stopped, not removed, its
// logs stay; a finished UID the agent lacks is not created; finished
// sandboxes hold no slot.
func TestFinished(t *testing.T) {
	rt := newFakeRuntime()
	a, srv := start(t, rt, api.Resources{Slots: 1})
	c := client.New(srv.URL, timeoutClient)
	ctx := context.Background()
	syncOK(t, c, 1, []api.SandboxSpec{sbx("a")})

	resp := syncOK(t, c, 2, []api.SandboxSpec{sbx("b")}, "a", "ghost")
	if resp.Sandboxes[0].State != api.StateRunning {
		t.Errorf("b: %+v; a finished sandbox must not hold a slot", resp.Sandboxes[0])
	}
	if len(resp.Deleting) != 0 {
		t.Errorf("deleting %v, want none", resp.Deleting)
	}
	if !eventually(func() bool { return statusOf(a, "a").State == api.StateExited }) {
		t.Fatalf("a was not stopped: %+v", statusOf(a, "a"))
	}
	if rt.count(rt.stops, "a") != 1 || rt.count(rt.deletes, "a") != 0 || !rt.has("a") {
		t.Errorf("a: stops %d deletes %d, want 1 0", rt.count(rt.stops, "a"), rt.count(rt.deletes, "a"))
	}
	if logs, err := c.Logs(ctx, "a"); err != nil || string(logs) != "output" {
		t.Errorf("logs of a finished sandbox: %q %v", logs, err)
	}
	if rt.count(rt.creates, "ghost") != 0 || rt.has("ghost") || statusOf(a, "ghost").State != "" {
		t.Error("a finished UID the agent lacked was created")
	}
	// Still finished: nothing more happens. Out of both lists: removed.
	syncOK(t, c, 3, []api.SandboxSpec{sbx("b")}, "a")
	time.Sleep(50 * time.Millisecond)
	if rt.count(rt.stops, "a") != 1 || !rt.has("a") {
		t.Errorf("a stopped again or removed: stops %d", rt.count(rt.stops, "a"))
	}
	resp = syncOK(t, c, 4, []api.SandboxSpec{sbx("b")})
	if len(resp.Deleting) != 1 || resp.Deleting[0] != "a" {
		t.Errorf("deleting %v, want [a]", resp.Deleting)
	}
	if !eventually(func() bool { return !rt.has("a") && statusOf(a, "a").State == "" }) {
		t.Error("a was not removed once out of both lists")
	}
}

// TestSlowCreationDoesNotStallSyncs: a creation that takes long (an image
// pull) is answered Creating after SyncWait and goes on in the background;
// another sync meanwhile creates its other sandboxes at once, and waits on
// (never repeats) the slow creation.
func TestSlowCreationDoesNotStallSyncs(t *testing.T) {
	rt := newFakeRuntime()
	release := rt.blockCreate("slow")
	defer release()
	a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 4}, SyncWait: 300 * time.Millisecond})
	c := client.New(srv.URL, &http.Client{Transport: timeoutClient.Transport, Timeout: 3 * time.Second})

	first := make(chan *api.SyncResponse, 1)
	go func() {
		resp, err := c.Sync(context.Background(), &api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: []api.SandboxSpec{sbx("slow")}})
		if err != nil {
			t.Error(err)
		}
		first <- resp
	}()
	if !eventually(func() bool { return rt.count(rt.creates, "slow") == 1 }) {
		t.Fatal("the slow creation never began")
	}
	t0 := time.Now()
	resp := syncOK(t, c, 2, []api.SandboxSpec{sbx("slow"), sbx("fast")})
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("the second sync took %v", d)
	}
	if resp.Sandboxes[0].State != api.StateCreating || resp.Sandboxes[0].Name != "n-slow" || resp.Sandboxes[0].Namespace != "ns" || resp.Sandboxes[1].State != api.StateRunning {
		t.Errorf("second answer %+v, want slow Creating, fast Running", resp.Sandboxes)
	}
	if r := <-first; r == nil || len(r.Sandboxes) != 1 || r.Sandboxes[0].State != api.StateCreating || r.Sandboxes[0].UID != "slow" {
		t.Errorf("first answer %+v, want slow Creating", r)
	}
	st := a.Status(context.Background())
	if s := statusOf(a, "slow"); s.State != api.StateCreating || st.Allocated.Slots != 2 {
		t.Errorf("status while creating: %+v, allocated %+v", s, st.Allocated)
	}
	release()
	if !eventually(func() bool { return statusOf(a, "slow").State == api.StateRunning }) {
		t.Errorf("status after the creation: %+v", statusOf(a, "slow"))
	}
	resp = syncOK(t, c, 3, []api.SandboxSpec{sbx("slow"), sbx("fast")})
	if resp.Sandboxes[0].State != api.StateRunning || rt.count(rt.creates, "slow") != 1 {
		t.Errorf("after the creation: %+v, %d creations", resp.Sandboxes[0], rt.count(rt.creates, "slow"))
	}
}

// TestDroppedWhileCreating: a sandbox no longer desired while it is being
// created is removed once its creation ends, and stays in Deleting until
// then; desired again meanwhile, it is kept. Either way it is created once.
func TestDroppedWhileCreating(t *testing.T) {
	for _, redesire := range []bool{false, true} {
		t.Run(fmt.Sprintf("redesired=%v", redesire), func(t *testing.T) {
			rt := newFakeRuntime()
			release := rt.blockCreate("x")
			defer release()
			a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 4}, SyncWait: 50 * time.Millisecond})
			c := client.New(srv.URL, timeoutClient)
			if resp := syncOK(t, c, 1, []api.SandboxSpec{sbx("x")}); resp.Sandboxes[0].State != api.StateCreating {
				t.Fatalf("answer %+v, want Creating", resp.Sandboxes[0])
			}
			resp := syncOK(t, c, 2, nil)
			if len(resp.Deleting) != 1 || resp.Deleting[0] != "x" {
				t.Errorf("deleting %v, want [x]", resp.Deleting)
			}
			if resp := syncOK(t, c, 3, nil); len(resp.Deleting) != 1 {
				t.Errorf("deleting %v, want [x] until it is gone", resp.Deleting)
			}
			if s := statusOf(a, "x"); s.State != api.StateCreating {
				t.Errorf("status %+v, want Creating", s)
			}
			if redesire {
				if resp := syncOK(t, c, 4, []api.SandboxSpec{sbx("x")}); resp.Sandboxes[0].State != api.StateCreating || len(resp.Deleting) != 0 {
					t.Errorf("desired again: %+v", resp)
				}
			}
			release()
			if redesire {
				if !eventually(func() bool { return statusOf(a, "x").State == api.StateRunning }) {
					t.Errorf("status %+v, want Running", statusOf(a, "x"))
				}
				time.Sleep(50 * time.Millisecond)
				if !rt.has("x") || rt.count(rt.deletes, "x") != 0 {
					t.Error("a sandbox desired again was removed")
				}
			} else if !eventually(func() bool { return !rt.has("x") && statusOf(a, "x").State == "" }) {
				t.Errorf("x was not removed after its creation: %+v", statusOf(a, "x"))
			}
			if n := rt.count(rt.creates, "x"); n != 1 {
				t.Errorf("%d creations, want 1", n)
			}
		})
	}
}

// TestFinishedWhileCreating: a sandbox reported finished while it is being
// created is stopped once created, and kept.
func TestFinishedWhileCreating(t *testing.T) {
	rt := newFakeRuntime()
	release := rt.blockCreate("x")
	defer release()
	a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 4}, SyncWait: 10 * time.Millisecond})
	c := client.New(srv.URL, timeoutClient)
	syncOK(t, c, 1, []api.SandboxSpec{sbx("x")})
	if resp := syncOK(t, c, 2, nil, "x"); len(resp.Deleting) != 0 {
		t.Errorf("deleting %v, want none", resp.Deleting)
	}
	release()
	if !eventually(func() bool { return statusOf(a, "x").State == api.StateExited }) {
		t.Fatalf("status %+v, want Exited", statusOf(a, "x"))
	}
	if !rt.has("x") || rt.count(rt.stops, "x") != 1 || rt.count(rt.deletes, "x") != 0 || rt.count(rt.creates, "x") != 1 {
		t.Errorf("x: creates %d stops %d deletes %d, want 1 1 0", rt.count(rt.creates, "x"), rt.count(rt.stops, "x"), rt.count(rt.deletes, "x"))
	}
}

// TestExitWhileCreating: an exit the runtime reports before the creation
// returned is kept.
func TestExitWhileCreating(t *testing.T) {
	rt := newFakeRuntime()
	release := rt.blockCreate("x")
	defer release()
	a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 4}, SyncWait: 10 * time.Millisecond})
	c := client.New(srv.URL, timeoutClient)
	syncOK(t, c, 1, []api.SandboxSpec{sbx("x")})
	code := int32(3)
	rt.exits <- api.SandboxStatus{UID: "x", State: api.StateExited, ExitCode: &code, Reason: api.ReasonError}
	if !eventually(func() bool { return statusOf(a, "x").State == api.StateExited }) {
		t.Fatalf("status %+v, want Exited", statusOf(a, "x"))
	}
	release()
	if !eventually(func() bool { a.mu.RLock(); defer a.mu.RUnlock(); return a.creating["x"] == nil }) {
		t.Fatal("the creation never ended")
	}
	if s := statusOf(a, "x"); s.State != api.StateExited || s.ExitCode == nil || *s.ExitCode != 3 {
		t.Errorf("status %+v, want the exit", s)
	}
}

// TestConflictCarriesApplied: a 409 says which epoch and revision were applied.
func TestConflictCarriesApplied(t *testing.T) {
	_, srv := start(t, newFakeRuntime(), api.Resources{Slots: 4})
	c := client.New(srv.URL, timeoutClient)
	if _, err := c.Sync(context.Background(), &api.SyncRequest{Epoch: 7, Revision: 12}); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPut, srv.URL+api.PathSync, strings.NewReader(`{"epoch":7,"revision":11,"sandboxes":[]}`))
	resp, err := timeoutClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusConflict || e.Code != http.StatusConflict || e.AppliedEpoch != 7 || e.AppliedRevision != 12 {
		t.Errorf("%d %+v, want 409 applied 7/12", resp.StatusCode, e)
	}
}

// TestStatusDoesNotWaitOnImages: the status answers from the last image
// listing while a listing hangs, and says unhealthy once listings fail for
// three periods.
func TestStatusDoesNotWaitOnImages(t *testing.T) {
	rt := newFakeRuntime()
	a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 1}, ImageRefreshPeriod: 20 * time.Millisecond})
	c := client.New(srv.URL, &http.Client{Transport: timeoutClient.Transport, Timeout: 2 * time.Second})
	block := make(chan struct{})
	rt.mu.Lock()
	rt.imagesBlock = block
	rt.mu.Unlock()
	t0 := time.Now()
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > time.Second || len(st.Images) != 1 {
		t.Errorf("status took %v with images %v", d, st.Images)
	}
	close(block)
	rt.mu.Lock()
	rt.imagesBlock, rt.imagesErr = nil, errors.New("containerd is busy")
	rt.mu.Unlock()
	if !eventually(func() bool { return !a.Status(context.Background()).Healthy }) {
		t.Error("still healthy while image listings fail")
	}
	rt.mu.Lock()
	rt.imagesErr = nil
	rt.mu.Unlock()
	if !eventually(func() bool { return a.Status(context.Background()).Healthy }) {
		t.Error("not healthy again once image listings succeed")
	}
}

// TestCreateTimeout: a creation runs under its own context, bounded by
// CreateTimeout, not by the sync that started it.
func TestCreateTimeout(t *testing.T) {
	rt := newFakeRuntime()
	release := rt.blockCreate("x")
	defer release()
	a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 4}, SyncWait: 10 * time.Millisecond, CreateTimeout: 200 * time.Millisecond})
	c := client.New(srv.URL, timeoutClient)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := c.Sync(ctx, &api.SyncRequest{Epoch: 1, Revision: 1, Sandboxes: []api.SandboxSpec{sbx("x")}}); err != nil {
		t.Fatal(err)
	}
	cancel() // the request's end does not end the creation
	time.Sleep(50 * time.Millisecond)
	if s := statusOf(a, "x"); s.State != api.StateCreating {
		t.Errorf("status %+v, want Creating", s)
	}
	if !eventually(func() bool { return statusOf(a, "x").State == api.StateFailed }) {
		t.Fatalf("status %+v, want Failed after CreateTimeout", statusOf(a, "x"))
	}
	if s := statusOf(a, "x"); s.Reason != api.ReasonCreateFailed || !strings.Contains(s.Message, "deadline") {
		t.Errorf("status %+v", s)
	}
}

// TestRuntimeUnavailableIsNotFinal: a creation that could not reach the
// runtime (containerd restarting) is not the sandbox's outcome: it is not
// recorded (the status does not report it, and never as Failed), so the
// control plane's next sync creates it, and that creation runs it. One that
// is no longer desired meanwhile is removed as usual.
func TestRuntimeUnavailableIsNotFinal(t *testing.T) {
	rt := newFakeRuntime()
	rt.unavailable["x"] = 1
	a, srv := startWith(t, rt, Config{Capacity: api.Resources{Slots: 4}, SyncWait: time.Second})
	c := client.New(srv.URL, timeoutClient)
	resp := syncOK(t, c, 1, []api.SandboxSpec{sbx("x")})
	if st := resp.Sandboxes[0]; st.State != api.StateCreating {
		t.Errorf("answer %+v, want Creating (not a final outcome)", st)
	}
	if !eventually(func() bool { a.mu.RLock(); defer a.mu.RUnlock(); return a.creating["x"] == nil }) {
		t.Fatal("the creation never ended")
	}
	if st := statusOf(a, "x"); st.State != "" {
		t.Errorf("status %+v, want x not reported", st)
	}
	if n := rt.count(rt.creates, "x"); n != 1 {
		t.Errorf("%d creations, want 1", n)
	}
	// The control plane sees x desired but not reported and syncs again.
	resp = syncOK(t, c, 2, []api.SandboxSpec{sbx("x")})
	if st := resp.Sandboxes[0]; st.State != api.StateRunning {
		t.Errorf("answer to the next sync %+v, want Running", st)
	}
	if st := statusOf(a, "x"); st.State != api.StateRunning {
		t.Errorf("status %+v, want Running", st)
	}
	if n := rt.count(rt.creates, "x"); n != 2 {
		t.Errorf("%d creations, want 2", n)
	}

	// Dropped while its creation could not reach the runtime: removed
	// (whatever the attempt left), as any sandbox no longer desired.
	rt.mu.Lock()
	rt.unavailable["y"] = 1
	rt.mu.Unlock()
	release := rt.blockCreate("y")
	syncOK(t, c, 3, []api.SandboxSpec{sbx("x"), sbx("y")})
	syncOK(t, c, 4, []api.SandboxSpec{sbx("x")})
	release()
	if !eventually(func() bool { return rt.count(rt.deletes, "y") == 1 && statusOf(a, "y").State == "" }) {
		t.Errorf("y: deletes %d, status %+v; want removed", rt.count(rt.deletes, "y"), statusOf(a, "y"))
	}
}

// TestRuntimeReasonsReachStatus: why the runtime refused a sandbox
// (RunAsNonRootViolation) or stopped one (EphemeralStorageExceeded, an
// exit) is in the agent's status, with the message, and so it is from an
// agent that restarted and adopted them.
func TestRuntimeReasonsReachStatus(t *testing.T) {
	rt := newFakeRuntime()
	a, srv := start(t, rt, api.Resources{Slots: 4})
	c := client.New(srv.URL, timeoutClient)
	root := sbx("root")
	root.Image = "root"
	syncOK(t, c, 1, []api.SandboxSpec{sbx("big"), root})
	code := int32(137)
	stopped := api.SandboxStatus{UID: "big", Name: "n-big", Namespace: "ns", State: api.StateExited, ExitCode: &code,
		Reason: api.ReasonEphemeralStorageExceeded, Message: "it used 17 MiB of ephemeral storage, above its limit of 16 MiB"}
	rt.exits <- stopped
	check := func(a *Agent) {
		t.Helper()
		if !eventually(func() bool { return statusOf(a, "big").Reason == api.ReasonEphemeralStorageExceeded }) {
			t.Errorf("status %+v, want %s", statusOf(a, "big"), api.ReasonEphemeralStorageExceeded)
		}
		if s := statusOf(a, "big"); s.Message != stopped.Message || s.State != api.StateExited {
			t.Errorf("status %+v lacks the runtime's message", s)
		}
		if s := statusOf(a, "root"); s.State != api.StateFailed || s.Reason != api.ReasonRunAsNonRootViolation || s.Message == "" {
			t.Errorf("status %+v, want Failed %s", s, api.ReasonRunAsNonRootViolation)
		}
	}
	check(a)

	rt.mu.Lock()
	listed := []api.SandboxStatus{stopped, rt.running["root"]}
	rt.mu.Unlock()
	restarted, _ := start(t, newFakeRuntime(listed...), api.Resources{Slots: 4})
	check(restarted)
}
