package scheduler

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	sbxfake "github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

const (
	testNS    = "tenant"
	testSysNS = v1alpha1.DefaultSystemNamespace
	testPool  = "pool"
	testImage = "docker.io/library/busybox:latest"
)

// fault is what a test agent does with one request.
type fault int

const (
	faultNone fault = iota
	// faultReset resets the connection before the request is applied.
	faultReset
	// faultDrop applies the request, then resets the connection: the
	// answer is lost.
	faultDrop
	// faultUnavailable answers 503 "starting" without applying anything.
	faultUnavailable
	// faultError answers 500 without applying anything.
	faultError
)

// testAgent speaks the agent API over HTTP from memory, like an agent over
// a runtime, and lets a test refuse, drop or delay its answers and restart
// it. It counts the creations of every sandbox, so a test can assert that
// each ran exactly once.
type testAgent struct {
	t    *testing.T
	name string
	srv  *httptest.Server

	mu        sync.Mutex
	epoch     int64
	revision  int64
	sandboxes map[string]api.SandboxStatus
	creates   map[string]int
	lastSync  *api.SyncRequest
	requests  int
	slots     int
	cpuMillis int64 // capacity; 4000 when 0
	// faults decides what happens to a request (path is PathStatus or PathSync).
	faults func(path string) fault
	// syncDelay holds every sync that long before it is applied.
	syncDelay time.Duration
}

// testCA is the agent API's CA of the tests; the scheduler's client
// certificate and every test agent's server certificate come from it.
var testCA = sync.OnceValues(func() (*agentpki.CA, error) {
	certPEM, keyPEM, err := agentpki.NewCA("test agent API CA", time.Now(), time.Hour)
	if err != nil {
		return nil, err
	}
	return agentpki.ParseCA(certPEM, keyPEM)
})

// newTestAgent starts a test agent that, like the real one, serves only
// mutual TLS with a certificate naming its Pod and admits only the
// scheduler's client certificate.
func newTestAgent(t *testing.T, name string) *testAgent {
	a := &testAgent{t: t, name: name, sandboxes: map[string]api.SandboxStatus{}, creates: map[string]int{}, slots: 8}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	a.srv.TLS = agentTLSConfig(t, name)
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

// agentTLSConfig is the server configuration of the agent Pod name (in the
// system namespace), as the real agent makes it from its Secret's files.
func agentTLSConfig(t *testing.T, name string) *tls.Config {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueAgent(testSysNS, name, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for file, data := range map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: ca.CertPEM} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := agentpki.ServerConfig(filepath.Join(dir, agentpki.KeyCert), filepath.Join(dir, agentpki.KeyKey), filepath.Join(dir, agentpki.KeyCACert))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// schedulerSecret is the Secret with the scheduler's client certificate, as
// the pool controller writes it.
func schedulerSecret(t *testing.T) *v1.Secret {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueScheduler(time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &v1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.SchedulerClientSecretName, Namespace: testSysNS},
		Data:       map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: ca.CertPEM},
	}
}

func (a *testAgent) port() int32 { return int32(a.srv.Listener.Addr().(*net.TCPAddr).Port) }

func (a *testAgent) setFaults(f func(path string) fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.faults = f
}

// failFor makes every request fail with f until d has passed.
func (a *testAgent) failFor(f fault, d time.Duration) {
	until := time.Now().Add(d)
	a.setFaults(func(string) fault {
		if time.Now().Before(until) {
			return f
		}
		return faultNone
	})
}

// restart forgets what the agent applied (epoch and revision) and keeps its
// sandboxes, as a restarted agent that adopted its containers does.
func (a *testAgent) restart() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch, a.revision = 0, 0
}

func (a *testAgent) createsOf(uid string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.creates[uid]
}

func (a *testAgent) state(uid string) (api.SandboxStatus, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.sandboxes[uid]
	return st, ok
}

func (a *testAgent) requestCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests
}

func (a *testAgent) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.requests++
	f := faultNone
	if a.faults != nil {
		f = a.faults(r.URL.Path)
	}
	delay := a.syncDelay
	a.mu.Unlock()
	switch f {
	case faultReset:
		reset(w)
		return
	case faultUnavailable:
		writeAgentError(w, api.Error{Code: http.StatusServiceUnavailable, Message: "the agent is starting"})
		return
	case faultError:
		writeAgentError(w, api.Error{Code: http.StatusInternalServerError, Message: "injected failure"})
		return
	}
	var answer any
	switch r.URL.Path {
	case api.PathStatus:
		answer = a.status()
	case api.PathSync:
		if delay > 0 {
			time.Sleep(delay)
		}
		// Each spec is kept raw too, to hold it to the agent's size bound as
		// it came on the wire.
		var raw struct {
			Sandboxes []json.RawMessage `json:"sandboxes"`
		}
		body, err := io.ReadAll(r.Body)
		req := &api.SyncRequest{}
		if err == nil {
			err = json.Unmarshal(body, req)
		}
		if err == nil {
			err = json.Unmarshal(body, &raw)
		}
		if err != nil {
			writeAgentError(w, api.Error{Code: http.StatusBadRequest, Message: err.Error()})
			return
		}
		tooBig := map[string]bool{}
		for i, spec := range raw.Sandboxes {
			if len(spec) > api.MaxSandboxSpecBytes {
				tooBig[req.Sandboxes[i].UID] = true
			}
		}
		resp, apiErr := a.sync(req, tooBig)
		if apiErr != nil {
			writeAgentError(w, *apiErr)
			return
		}
		answer = resp
	default:
		http.NotFound(w, r)
		return
	}
	if f == faultDrop {
		reset(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(answer)
}

func (a *testAgent) status() *api.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := &api.Status{
		Agent:    api.AgentInfo{PodName: a.name, Namespace: testSysNS, Pool: testPool},
		Capacity: api.Resources{Slots: a.slots, CPUMillis: cmp.Or(a.cpuMillis, 4000), MemoryBytes: 4 << 30},
		Images:   []api.Image{{Names: []string{testImage}, Digest: "sha256:0123", Size: 5 << 20}},
		Healthy:  true, Epoch: a.epoch, Revision: a.revision, Time: time.Now(),
	}
	for _, s := range a.sandboxes {
		st.Sandboxes = append(st.Sandboxes, s)
		if s.State == api.StateRunning || s.State == api.StatePaused {
			st.Allocated.Slots++
		}
	}
	return st
}

func (a *testAgent) sync(req *api.SyncRequest, tooBig map[string]bool) (*api.SyncResponse, *api.Error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if req.Epoch < a.epoch || (req.Epoch == a.epoch && req.Revision < a.revision) {
		return nil, &api.Error{Code: http.StatusConflict, Message: "stale sync", AppliedEpoch: a.epoch, AppliedRevision: a.revision}
	}
	a.epoch, a.revision, a.lastSync = req.Epoch, req.Revision, req
	keep := map[string]bool{}
	resp := &api.SyncResponse{}
	for _, spec := range req.Sandboxes {
		keep[spec.UID] = true
		st, ok := a.sandboxes[spec.UID]
		switch {
		case !ok && tooBig[spec.UID]:
			now := time.Now()
			st = api.SandboxStatus{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, State: api.StateFailed,
				Reason: api.ReasonInvalidSpec, Message: "too large", FinishedAt: &now}
			a.sandboxes[spec.UID] = st
		case !ok:
			now := time.Now()
			a.creates[spec.UID]++
			st = api.SandboxStatus{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, ContainerID: "fsbx-" + spec.UID,
				State: api.StateRunning, CreatedAt: &now, StartedAt: &now, Start: api.StartWarm}
			a.sandboxes[spec.UID] = st
		}
		// Like the agent, it converges on paused: true pauses, false
		// resumes a sandbox paused by spec (not one paused as idle).
		switch {
		case spec.Paused && st.State == api.StateRunning:
			st.State, st.PauseReason = api.StatePaused, api.PauseReasonSpec
		case spec.Paused && st.State == api.StatePaused:
			st.PauseReason = api.PauseReasonSpec
		case !spec.Paused && st.State == api.StatePaused && st.PauseReason == api.PauseReasonSpec:
			st.State, st.PauseReason = api.StateRunning, ""
		}
		a.sandboxes[spec.UID] = st
		resp.Sandboxes = append(resp.Sandboxes, st)
	}
	for _, uid := range req.Finished {
		keep[uid] = true
		if st, ok := a.sandboxes[uid]; ok && (st.State == api.StateRunning || st.State == api.StatePaused) {
			code, now := int32(137), time.Now()
			st.State, st.ExitCode, st.Reason, st.FinishedAt = api.StateExited, &code, api.ReasonError, &now
			st.PauseReason = ""
			a.sandboxes[uid] = st
		}
	}
	for uid := range a.sandboxes {
		if !keep[uid] {
			delete(a.sandboxes, uid)
		}
	}
	return resp, nil
}

// exit makes a sandbox's command exit with code.
func (a *testAgent) exit(uid string, code int32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.sandboxes[uid]
	now := time.Now()
	st.State, st.ExitCode, st.FinishedAt, st.Reason = api.StateExited, &code, &now, api.ReasonCompleted
	a.sandboxes[uid] = st
}

// update changes what the agent reports of a sandbox (e.g. that it is
// idle, or paused as idle, or its last activity).
func (a *testAgent) update(uid string, f func(*api.SandboxStatus)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.sandboxes[uid]
	if !ok {
		a.t.Errorf("test agent %s has no sandbox %s", a.name, uid)
		return
	}
	f(&st)
	a.sandboxes[uid] = st
}

// lastSpec is the spec of a sandbox in the newest sync the agent applied.
func (a *testAgent) lastSpec(uid string) (api.SandboxSpec, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lastSync == nil {
		return api.SandboxSpec{}, false
	}
	for _, spec := range a.lastSync.Sandboxes {
		if spec.UID == uid {
			return spec, true
		}
	}
	return api.SandboxSpec{}, false
}

// reset closes the connection with a TCP reset, answering nothing.
func reset(w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

func writeAgentError(w http.ResponseWriter, e api.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Code)
	_ = json.NewEncoder(w).Encode(e)
}

// env is a fake API (client-go's fake clientsets), test agents and the
// scheduler under test.
type env struct {
	t      *testing.T
	kube   *k8sfake.Clientset
	client *sbxfake.Clientset
	agents map[string]*testAgent
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, kube: k8sfake.NewClientset(), client: sbxfake.NewSimpleClientset(), agents: map[string]*testAgent{}}
	withAPISemantics(e.client)
	ctx := context.Background()
	if _, err := e.kube.CoreV1().Secrets(testSysNS).Create(ctx, schedulerSecret(t), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pool := &v1alpha1.SandboxPool{ObjectMeta: metav1.ObjectMeta{Name: testPool, UID: "pool-uid"},
		Spec: v1alpha1.SandboxPoolSpec{MinAgents: 1, MaxAgents: 10, SlotsPerAgent: 8}}
	if _, err := e.client.SandboxV1alpha1().SandboxPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// testPoolRef is the controller reference the pool controller puts on agent Pods.
func testPoolRef() metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "SandboxPool",
		Name: testPool, UID: "pool-uid", Controller: ptr.To(true)}
}

// addAgent starts a test agent and creates its Ready agent Pod.
func (e *env) addAgent(name string) *testAgent {
	e.t.Helper()
	a := newTestAgent(e.t, name)
	e.agents[name] = a
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testSysNS, UID: k8stypes.UID("uid-" + name),
			Labels:          map[string]string{v1alpha1.LabelPoolName: testPool},
			OwnerReferences: []metav1.OwnerReference{testPoolRef()}},
		Spec: v1.PodSpec{NodeName: "node-1", Containers: []v1.Container{{Name: "agent",
			Ports: []v1.ContainerPort{{Name: v1alpha1.AgentAPIPortName, ContainerPort: a.port()}}}}},
		Status: v1.PodStatus{Phase: v1.PodRunning, PodIP: "127.0.0.1",
			Conditions: []v1.PodCondition{{Type: v1.PodReady, Status: v1.ConditionTrue}}},
	}
	if _, err := e.kube.CoreV1().Pods(testSysNS).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *env) deleteAgentPod(name string) {
	e.t.Helper()
	if err := e.kube.CoreV1().Pods(testSysNS).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// testOptions are fast: a lost agent is found within a second.
func testOptions() Options {
	return Options{StatusPeriod: 50 * time.Millisecond, StatusTimeout: 300 * time.Millisecond,
		SyncTimeout: 2 * time.Second, AgentLostTimeout: 500 * time.Millisecond, AgentLostAttempts: 3,
		SweepPeriod: 100 * time.Millisecond}
}

// start runs a scheduler until the test ends or the returned stop is called.
func (e *env) start(opts Options) (stop func()) {
	e.t.Helper()
	cfg, err := LoadConfig("")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), testr.NewWithOptions(e.t, testr.Options{Verbosity: 2})))
	s, err := New(ctx, e.kube, e.client, cfg, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			e.t.Errorf("scheduler: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return stop
}

func (e *env) createSandbox(name string, mutate ...func(*v1alpha1.Sandbox)) *v1alpha1.Sandbox {
	e.t.Helper()
	sbx := &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, UID: k8stypes.UID("sbx-" + name)},
		Spec: v1alpha1.SandboxSpec{PoolName: testPool, Image: "busybox", Command: []string{"sleep", "3600"}}}
	for _, m := range mutate {
		m(sbx)
	}
	sbx, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Create(context.Background(), sbx, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return sbx
}

func (e *env) get(name string) *v1alpha1.Sandbox {
	e.t.Helper()
	sbx, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return sbx
}

// wait waits up to timeout for cond on the Sandbox and fails the test with
// what it last saw.
func (e *env) wait(name, what string, timeout time.Duration, cond func(*v1alpha1.Sandbox) bool) *v1alpha1.Sandbox {
	e.t.Helper()
	var last *v1alpha1.Sandbox
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		sbx, err := e.client.SandboxV1alpha1().Sandboxes(testNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = sbx
		return cond(sbx), nil
	})
	if err != nil {
		e.t.Fatalf("sandbox %s: not %s within %s; last status: %s", name, what, timeout, describe(last))
	}
	return last
}

// waitUntil waits up to timeout for cond.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("not %s within %s", what, timeout)
	}
}

func describe(sbx *v1alpha1.Sandbox) string {
	if sbx == nil {
		return "<never read>"
	}
	return fmt.Sprintf("phase=%s reason=%s message=%q agent=%s restarts=%d", sbx.Status.Phase, sbx.Status.Reason, sbx.Status.Message, sbx.Status.Agent, sbx.Status.Restarts)
}

func phaseIs(p v1alpha1.SandboxPhase) func(*v1alpha1.Sandbox) bool {
	return func(s *v1alpha1.Sandbox) bool { return s.Status.Phase == p }
}

// withAPISemantics makes the fake clientset's Sandboxes behave as the
// apiserver's do where the scheduler depends on it: resourceVersion checks
// on update, status and patch (a stale write is a Conflict), status writes
// that change only status and spec writes that change no status, and
// deletion that waits for finalizers.
func withAPISemantics(c *sbxfake.Clientset) {
	gvr := v1alpha1.SchemeGroupVersion.WithResource("sandboxes")
	var (
		mu sync.Mutex
		rv int64 = 1000
	)
	stamp := func(s *v1alpha1.Sandbox) {
		rv++
		s.ResourceVersion = strconv.FormatInt(rv, 10)
	}
	current := func(ns, name string) (*v1alpha1.Sandbox, error) {
		obj, err := c.Tracker().Get(gvr, ns, name)
		if err != nil {
			return nil, err
		}
		return obj.(*v1alpha1.Sandbox).DeepCopy(), nil
	}
	// store writes the object, or removes it once it is deleted and has no
	// finalizers left.
	store := func(s *v1alpha1.Sandbox) (runtime.Object, error) {
		if s.DeletionTimestamp != nil && len(s.Finalizers) == 0 {
			return s, c.Tracker().Delete(gvr, s.Namespace, s.Name)
		}
		stamp(s)
		return s, c.Tracker().Update(gvr, s, s.Namespace)
	}
	conflict := func(name string) error {
		return apierrors.NewConflict(gvr.GroupResource(), name, fmt.Errorf("the object has been modified; please apply your changes to the latest version and try again"))
	}
	c.PrependReactor("create", "sandboxes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		s := action.(k8stesting.CreateAction).GetObject().(*v1alpha1.Sandbox).DeepCopy()
		stamp(s)
		return true, s, c.Tracker().Create(gvr, s, s.Namespace)
	})
	c.PrependReactor("update", "sandboxes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		in := action.(k8stesting.UpdateAction).GetObject().(*v1alpha1.Sandbox)
		cur, err := current(in.Namespace, in.Name)
		if err != nil {
			return true, nil, err
		}
		if in.ResourceVersion != "" && in.ResourceVersion != cur.ResourceVersion {
			return true, nil, conflict(in.Name)
		}
		if action.GetSubresource() == "status" {
			cur.Status = *in.Status.DeepCopy()
		} else {
			status := cur.Status
			cur = in.DeepCopy()
			cur.Status, cur.ResourceVersion = status, ""
			cur.DeletionTimestamp = nil
			if old, _ := current(in.Namespace, in.Name); old != nil {
				cur.DeletionTimestamp = old.DeletionTimestamp
			}
		}
		obj, err := store(cur)
		return true, obj, err
	})
	c.PrependReactor("patch", "sandboxes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		p := action.(k8stesting.PatchAction)
		cur, err := current(p.GetNamespace(), p.GetName())
		if err != nil {
			return true, nil, err
		}
		var pre struct {
			Metadata struct {
				ResourceVersion string `json:"resourceVersion"`
			} `json:"metadata"`
		}
		_ = json.Unmarshal(p.GetPatch(), &pre)
		if pre.Metadata.ResourceVersion != "" && pre.Metadata.ResourceVersion != cur.ResourceVersion {
			return true, nil, conflict(p.GetName())
		}
		orig, _ := json.Marshal(cur)
		patched, err := jsonpatch.MergePatch(orig, p.GetPatch())
		if err != nil {
			return true, nil, apierrors.NewBadRequest(err.Error())
		}
		out := &v1alpha1.Sandbox{}
		if err := json.Unmarshal(patched, out); err != nil {
			return true, nil, apierrors.NewBadRequest(err.Error())
		}
		obj, err := store(out)
		return true, obj, err
	})
	c.PrependReactor("delete", "sandboxes", func(action k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		d := action.(k8stesting.DeleteAction)
		cur, err := current(d.GetNamespace(), d.GetName())
		if err != nil {
			return true, nil, err
		}
		if len(cur.Finalizers) == 0 {
			return true, nil, c.Tracker().Delete(gvr, cur.Namespace, cur.Name)
		}
		if cur.DeletionTimestamp == nil {
			now := metav1.Now()
			cur.DeletionTimestamp = &now
		}
		obj, err := store(cur)
		return true, obj, err
	})
}

// startLeader runs a scheduler under leader election on the fake API's
// Lease, as cmd/scheduler does, until the returned stop (which releases the
// lease) or the test's end.
func (e *env) startLeader(id string, opts Options) (stop func()) {
	e.t.Helper()
	cfg, err := LoadConfig("")
	if err != nil {
		e.t.Fatal(err)
	}
	logger := testr.NewWithOptions(e.t, testr.Options{Verbosity: 2}).WithName(id)
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	s, err := New(ctx, e.kube, e.client, cfg, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta: metav1.ObjectMeta{Namespace: "fast-sandbox-system", Name: "fast-sandbox-scheduler"},
		Client:    e.kube.CoordinationV1(), LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock: lock, Name: "fast-sandbox-scheduler", ReleaseOnCancel: true,
			LeaseDuration: 2 * time.Second, RenewDeadline: time.Second, RetryPeriod: 100 * time.Millisecond,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					if err := s.Run(ctx); err != nil {
						e.t.Errorf("scheduler %s: %v", id, err)
					}
				},
				OnStoppedLeading: func() {},
			},
		})
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return stop
}
