package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	agentclient "github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// Environment variables that make a run of TestSchedulerConvergesUnderAPIFaults
// reproducible (as far as goroutine interleaving allows: the seed fixes the
// sequence of fault decisions, not which request meets which decision).
const (
	envFaultSeed = "FAST_SANDBOX_FAULT_SEED"
	envFaultRate = "FAST_SANDBOX_FAULT_RATE"
)

// faultKind is one way a write to the API fails.
type faultKind string

const (
	// Not sent: the apiserver never sees the write.
	faultRefused       faultKind = "before/connection-refused"
	faultInternalError faultKind = "before/500"
	faultThrottled     faultKind = "before/429"
	faultTimeoutBefore faultKind = "before/timeout"
	// Sent and answered by the apiserver (committed when it succeeded), then
	// the answer is dropped and the client sees an error.
	faultLostTimeout faultKind = "after/timeout-awaiting-headers"
	faultLostEOF     faultKind = "after/unexpected-EOF"
)

var faultKinds = []faultKind{faultRefused, faultInternalError, faultThrottled, faultTimeoutBefore, faultLostTimeout, faultLostEOF}

func (k faultKind) sends() bool { return strings.HasPrefix(string(k), "after/") }

// faultInjector decides, for a fraction of the write requests (POST, PUT,
// PATCH, DELETE) other than Leases, to fail them before or after sending.
// Reads, lists and watches always pass.
type faultInjector struct {
	rate float64

	mu  sync.Mutex
	rng *rand.Rand
	// writes counts the write requests seen, by "VERB resource".
	writes map[string]int
	// faults counts the injected faults by kind, and by "kind resource".
	faults      map[faultKind]int
	faultsByRes map[string]int
	// committed counts "after" faults whose write the apiserver accepted
	// (2xx) — the write happened, the client was told it failed — by resource.
	committed map[string]int
}

func newFaultInjector(seed uint64, rate float64) *faultInjector {
	return &faultInjector{
		rate: rate, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		writes: map[string]int{}, faults: map[faultKind]int{}, faultsByRes: map[string]int{}, committed: map[string]int{},
	}
}

// wrap is a rest.Config WrapTransport.
func (f *faultInjector) wrap(rt http.RoundTripper) http.RoundTripper {
	return &faultRoundTripper{f: f, next: rt}
}

// apiResource names the resource (and subresource) of an API path:
// "sandboxes", "sandboxes/status", "events", "leases", ...
func apiResource(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	// /api/v1/... or /apis/group/version/...
	i := 2
	if len(parts) > 0 && parts[0] == "apis" {
		i = 3
	}
	if len(parts) > i+1 && parts[i] == "namespaces" && len(parts) > i+2 {
		i += 2
	}
	if len(parts) <= i {
		return path
	}
	res := parts[i]
	if len(parts) > i+2 {
		res += "/" + parts[i+2]
	}
	return res
}

func (f *faultInjector) decide(req *http.Request) (faultKind, string) {
	switch req.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
	default:
		return "", ""
	}
	res := apiResource(req.URL.Path)
	if strings.HasPrefix(res, "leases") {
		return "", res
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes[req.Method+" "+res]++
	if f.rng.Float64() >= f.rate {
		return "", res
	}
	k := faultKinds[f.rng.IntN(len(faultKinds))]
	f.faults[k]++
	f.faultsByRes[string(k)+" "+res]++
	return k, res
}

type faultRoundTripper struct {
	f    *faultInjector
	next http.RoundTripper
}

// injectedTimeout looks like the errors of net/http's own timeouts.
type injectedTimeout struct{ msg string }

func (e *injectedTimeout) Error() string   { return e.msg }
func (e *injectedTimeout) Timeout() bool   { return true }
func (e *injectedTimeout) Temporary() bool { return true }

func (t *faultRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	kind, res := t.f.decide(req)
	if kind == "" {
		return t.next.RoundTrip(req)
	}
	if !kind.sends() {
		if req.Body != nil {
			req.Body.Close()
		}
	}
	switch kind {
	case faultRefused:
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	case faultInternalError:
		return statusResponse(req, http.StatusInternalServerError, metav1.StatusReasonInternalError, "injected fault: etcdserver: request timed out"), nil
	case faultThrottled:
		// No Retry-After: client-go hands a 429 without it to the caller.
		return statusResponse(req, http.StatusTooManyRequests, metav1.StatusReasonTooManyRequests, "injected fault: too many requests"), nil
	case faultTimeoutBefore:
		return nil, &injectedTimeout{msg: "injected fault: dial tcp: i/o timeout"}
	}
	// Send it, let the apiserver do it, lose the answer.
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		t.f.mu.Lock()
		t.f.committed[res]++
		t.f.mu.Unlock()
	}
	if kind == faultLostTimeout {
		return nil, &injectedTimeout{msg: "net/http: timeout awaiting response headers (injected after the write was sent)"}
	}
	return nil, io.ErrUnexpectedEOF
}

func statusResponse(req *http.Request, code int, reason metav1.StatusReason, msg string) *http.Response {
	body, _ := json.Marshal(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg})
	return &http.Response{
		StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": []string{"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: req,
	}
}

func (f *faultInjector) report(t *testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for _, n := range f.faults {
		total += n
	}
	writes := 0
	for _, n := range f.writes {
		writes += n
	}
	t.Logf("API writes seen: %d (%s)", writes, sortedCounts(f.writes))
	t.Logf("faults injected: %d (rate %.2f)", total, f.rate)
	for _, k := range faultKinds {
		t.Logf("  %-34s %d", k, f.faults[k])
	}
	t.Logf("faults by kind and resource: %s", sortedCounts(f.faultsByRes))
	t.Logf("writes committed whose response was lost, by resource: %s", sortedCounts(f.committed))
}

func sortedCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// startSchedulerThrough runs the scheduler with its own clients, built from a
// copy of the control plane's config whose transport is wrapped.
func (e *schedEnv) startSchedulerThrough(wrap func(http.RoundTripper) http.RoundTripper) {
	e.t.Helper()
	cfg := rest.CopyConfig(e.cp.Config)
	cfg.WrapTransport = wrap
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	client, err := versioned.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.runScheduler(kube, client)
}

// containerTracker follows containerd's container events and remembers, for
// every sandbox UID, every container that ever carried it (created with the
// label, or a warm container relabelled for it), even one removed since.
type containerTracker struct {
	mu    sync.Mutex
	byUID map[string]map[string]bool
	errs  []string
}

func trackContainers(t *testing.T, d *containerdtest.Daemon, ctrNamespaces ...string) *containerTracker {
	ct := &containerTracker{byUID: map[string]map[string]bool{}}
	watched := map[string]bool{}
	for _, ns := range ctrNamespaces {
		watched[ns] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	envelopes, errs := d.Client.Subscribe(ctx, `topic~="^/containers/"`)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-errs:
				if ctx.Err() == nil {
					ct.fail(fmt.Sprintf("containerd event stream: %v", err))
				}
				return
			case env := <-envelopes:
				if !watched[env.Namespace] {
					continue
				}
				ev, err := typeurl.UnmarshalAny(env.Event)
				if err != nil {
					ct.fail(fmt.Sprintf("decoding %s: %v", env.Topic, err))
					continue
				}
				switch ev := ev.(type) {
				case *eventsapi.ContainerCreate:
					c, err := d.Client.ContainerService().Get(containerdtest.WithNamespace(env.Namespace), ev.ID)
					if err != nil {
						// Gone already; its labels are unknown (a failed create is removed at once).
						ct.fail(fmt.Sprintf("container %s created and gone before it could be read: %v", ev.ID, err))
						continue
					}
					ct.record(c.Labels[containerd.LabelUID], ev.ID)
				case *eventsapi.ContainerUpdate:
					ct.record(ev.Labels[containerd.LabelUID], ev.ID)
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ct
}

func (ct *containerTracker) record(uid, id string) {
	if uid == "" {
		return
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if ct.byUID[uid] == nil {
		ct.byUID[uid] = map[string]bool{}
	}
	ct.byUID[uid][id] = true
}

func (ct *containerTracker) fail(msg string) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	ct.errs = append(ct.errs, msg)
}

func (ct *containerTracker) containers(uid string) []string {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var ids []string
	for id := range ct.byUID[uid] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// agentClient is an agent API client for an agent Pod started by startAgent:
// mutual TLS with the scheduler's certificate, talking only to a server
// whose certificate names that Pod (in the system namespace).
func (e *schedEnv) agentClient(name string) *agentclient.Client {
	e.t.Helper()
	pod, err := e.cp.Kube.CoreV1().Pods(e.sysNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == v1alpha1.AgentAPIPortName {
				return agentclient.New("https://127.0.0.1:"+strconv.Itoa(int(p.ContainerPort)), e.creds.ClientFor(name))
			}
		}
	}
	e.t.Fatalf("agent Pod %s has no %s port", name, v1alpha1.AgentAPIPortName)
	return nil
}

// faultCase is one sandbox of the batch and what it must end as.
type faultCase struct {
	name     string
	long     bool  // runs until deleted: must be Running
	exitCode int32 // otherwise: must have exited with this code, once
	uid      string
}

func (c *faultCase) marker() string { return "ran-once-" + c.name }

func (c *faultCase) converged(s *v1alpha1.Sandbox) bool {
	switch {
	case c.long:
		return s.Status.Phase == v1alpha1.SandboxRunning
	case c.exitCode == 0:
		return s.Status.Phase == v1alpha1.SandboxSucceeded
	default:
		return s.Status.Phase == v1alpha1.SandboxFailed
	}
}

// check says what is wrong with a converged (or final) sandbox, "" if nothing.
func (c *faultCase) check(s *v1alpha1.Sandbox, agents map[string]bool) string {
	st := s.Status
	var bad []string
	if !c.converged(s) {
		bad = append(bad, fmt.Sprintf("phase %s", st.Phase))
	}
	if !agents[st.Agent] || st.ContainerID == "" || st.StartTime == nil {
		bad = append(bad, fmt.Sprintf("agent %q container %q start %v", st.Agent, st.ContainerID, st.StartTime))
	}
	if !hasString(s.Finalizers, v1alpha1.FinalizerAgentCleanup) {
		bad = append(bad, "no cleanup finalizer")
	}
	switch {
	case c.long:
		if st.ExitCode != nil || st.FinishTime != nil || st.Reason != "" {
			bad = append(bad, fmt.Sprintf("a running sandbox with exit %v finish %v reason %q", st.ExitCode, st.FinishTime, st.Reason))
		}
	default:
		if st.ExitCode == nil || *st.ExitCode != c.exitCode {
			bad = append(bad, fmt.Sprintf("exit code %v, want %d", ptrString(st.ExitCode), c.exitCode))
		}
		if c.exitCode != 0 && st.Reason != v1alpha1.ReasonError {
			bad = append(bad, fmt.Sprintf("reason %q (%s), want %s: the command's own exit", st.Reason, st.Message, v1alpha1.ReasonError))
		}
		if st.FinishTime == nil {
			bad = append(bad, "no finish time")
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return fmt.Sprintf("%s: %s (status %+v)", c.name, strings.Join(bad, "; "), st)
}

func ptrString(p *int32) string {
	if p == nil {
		return "<nil>"
	}
	return strconv.Itoa(int(*p))
}

// TestSchedulerConvergesUnderAPIFaults runs the real scheduler against the
// real apiserver through a transport that fails a fraction of its writes —
// before they are sent, or after the apiserver committed them with the
// answer lost — with real agents over a real containerd, and checks that
// every sandbox still converges, that every sandbox got exactly one
// container and ran its command once, and that deleting them all, still
// under faults, removes every object and every container.
func TestSchedulerConvergesUnderAPIFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(envFaultSeed); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envFaultSeed, v, err)
		}
		seed = s
	}
	rate := 0.25
	if v := os.Getenv(envFaultRate); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || r >= 1 {
			t.Fatalf("%s=%q: want a fraction in [0, 1)", envFaultRate, v)
		}
		rate = r
	}
	t.Logf("fault seed %d, rate %.2f (reproduce with %s=%d %s=%v)", seed, rate, envFaultSeed, seed, envFaultRate, rate)
	faults := newFaultInjector(seed, rate)
	// What was injected is worth reading however the test ends.
	defer faults.report(t)

	e := newSchedEnv(t)
	const slots = 20
	e.createPool("pool", slots)
	// Both agents use the containerd namespace that has the test image.
	ctrNamespaces := []string{containerdtest.Namespace}
	tracker := trackContainers(t, e.d, ctrNamespaces...)
	agentNames := []string{"agent-a", "agent-b"}
	agents := map[string]bool{}
	for _, a := range agentNames {
		e.startAgent(a, "pool", containerdtest.Namespace, slots)
		agents[a] = true
	}
	e.startSchedulerThrough(faults.wrap)
	ctx := context.Background()
	sandboxes := e.cp.Sandbox.SandboxV1alpha1().Sandboxes(e.ns) // the test's own client: no faults

	// The batch: a third run until deleted, a third exit 0, a third exit non-zero.
	const n = 30
	cases := make([]*faultCase, n)
	byName := map[string]*faultCase{}
	start := time.Now()
	for i := 0; i < n; i++ {
		c := &faultCase{name: fmt.Sprintf("sbx-%02d", i)}
		var cmd []string
		switch i % 3 {
		case 0:
			c.long = true
			cmd = []string{"sleep", "300"}
		case 1:
			cmd = []string{"sh", "-c", fmt.Sprintf("echo %s; sleep %d", c.marker(), i%2)}
		case 2:
			c.exitCode = int32(1 + i%7)
			cmd = []string{"sh", "-c", fmt.Sprintf("echo %s; sleep %d; exit %d", c.marker(), i%2, c.exitCode)}
		}
		c.uid = string(e.sandbox(t, c.name, "pool", cmd...).UID)
		cases[i], byName[c.name] = c, c
	}

	// Every sandbox converges.
	// list maps the names of the test namespace's Sandboxes to them.
	list := func(ctx context.Context) (map[string]*v1alpha1.Sandbox, error) {
		l, err := sandboxes.List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		m := map[string]*v1alpha1.Sandbox{}
		for i := range l.Items {
			m[l.Items[i].Name] = &l.Items[i]
		}
		return m, nil
	}
	var last map[string]*v1alpha1.Sandbox
	err := kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 2 * time.Minute}.Until(ctx, func(ctx context.Context) (err error) {
		if last, err = list(ctx); err != nil {
			return err
		}
		waiting := 0
		for _, c := range cases {
			if s := last[c.name]; s == nil || !c.converged(s) || (!c.long && s.Status.ExitCode == nil) {
				waiting++
			}
		}
		if waiting > 0 {
			return fmt.Errorf("%d of %d sandboxes not converged", waiting, n)
		}
		return nil
	})
	converge := time.Since(start)
	if err != nil {
		for _, c := range cases {
			if s := last[c.name]; s == nil || !c.converged(s) {
				t.Errorf("%s did not converge (long=%v exit=%d): %s", c.name, c.long, c.exitCode, kubetest.DescribeSandbox(s))
			}
		}
		t.Fatalf("not every sandbox converged under API faults (seed %d): %v", seed, err)
	}
	t.Logf("%d sandboxes converged in %v under API faults", n, converge.Round(time.Millisecond))

	// Converged means final: through several polls and sweeps, nothing
	// moves, and every sandbox stays exactly what it should be.
	var final map[string]*v1alpha1.Sandbox
	kubetest.Consistently(t, kubetest.Poll{Interval: 250 * time.Millisecond, Timeout: 3 * time.Second}, "every converged sandbox stays as it should be",
		func(ctx context.Context) (err error) {
			if final, err = list(ctx); err != nil {
				return err
			}
			var wrong []error
			for _, c := range cases {
				switch s := final[c.name]; {
				case s == nil:
					wrong = append(wrong, fmt.Errorf("%s is gone", c.name))
				case string(s.UID) != c.uid:
					wrong = append(wrong, fmt.Errorf("%s was replaced", c.name))
				default:
					if msg := c.check(s, agents); msg != "" {
						wrong = append(wrong, fmt.Errorf("wrong final state: %s", msg))
					}
				}
			}
			return errors.Join(wrong...)
		})

	// Exactly once: one container per sandbox in containerd now, one ever
	// (by containerd's events), and the short commands' marker once in their log.
	clients := map[string]*agentclient.Client{}
	for _, a := range agentNames {
		clients[a] = e.agentClient(a)
	}
	for _, c := range cases {
		now := 0
		for _, ns := range ctrNamespaces {
			now += e.containersOf(ns, c.uid)
		}
		if now != 1 {
			t.Errorf("%s (uid %s) has %d containers, want exactly 1", c.name, c.uid, now)
		}
		if ever := tracker.containers(c.uid); len(ever) != 1 {
			t.Errorf("%s (uid %s) had containers %v over the test, want exactly 1", c.name, c.uid, ever)
		}
		s := final[c.name]
		if c.long || s == nil || clients[s.Status.Agent] == nil {
			continue
		}
		logs, err := clients[s.Status.Agent].Logs(ctx, c.uid)
		if err != nil {
			t.Errorf("logs of %s from %s: %v", c.name, s.Status.Agent, err)
			continue
		}
		if got := strings.Count("\n"+string(logs), "\n"+c.marker()+"\n"); got != 1 {
			t.Errorf("%s's command ran %d times by its log, want once; log %q", c.name, got, logs)
		}
	}
	tracker.mu.Lock()
	for _, msg := range tracker.errs {
		t.Errorf("tracking containerd: %s", msg)
	}
	tracker.mu.Unlock()

	// Delete them all, faults still on: every object goes (its finalizer
	// removed by the scheduler), and no container is left behind.
	deleteStart := time.Now()
	for _, c := range cases {
		if err := sandboxes.Delete(ctx, c.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	err = kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 2 * time.Minute}.Until(ctx, func(ctx context.Context) (err error) {
		if last, err = list(ctx); err != nil {
			return err
		}
		if len(last) > 0 {
			return fmt.Errorf("%d of %d deleted sandboxes still exist", len(last), n)
		}
		return nil
	})
	if err != nil {
		for name, s := range last {
			t.Errorf("%s never went away: %s", name, kubetest.DescribeSandbox(s))
		}
		t.Fatalf("deleting every sandbox under API faults (seed %d): %v", seed, err)
	}
	t.Logf("%d sandboxes deleted and their finalizers removed in %v under API faults", n, time.Since(deleteStart).Round(time.Millisecond))
	// The finalizer goes only once the agent removed the container.
	leftAtRemoval := map[string]int{}
	for _, c := range cases {
		for _, ns := range ctrNamespaces {
			if k := e.containersOf(ns, c.uid); k != 0 {
				leftAtRemoval[c.name] += k
			}
		}
	}
	if len(leftAtRemoval) > 0 {
		// Say whether they were only late or leaked for good.
		later := map[string]int{}
		_ = kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 5 * time.Second}.Until(ctx, func(context.Context) error {
			clear(later)
			for name := range leftAtRemoval {
				for _, ns := range ctrNamespaces {
					if k := e.containersOf(ns, byName[name].uid); k != 0 {
						later[name] += k
					}
				}
			}
			if len(later) > 0 {
				return fmt.Errorf("containers of %d deleted sandboxes remain", len(later))
			}
			return nil
		})
		for name, k := range leftAtRemoval {
			t.Errorf("%s: %d containers were left when its Sandbox object was gone (%d still there after up to 5s more)", name, k, later[name])
		}
	}

	// The test proves something only if faults of every kind happened, and
	// writes of both sandboxes and their status were committed with the
	// answer lost.
	faults.mu.Lock()
	defer faults.mu.Unlock()
	for _, k := range faultKinds {
		if faults.faults[k] == 0 {
			t.Errorf("no %s fault was injected (seed %d): the run proves less than it should", k, seed)
		}
	}
	for _, res := range []string{"sandboxes", "sandboxes/status"} {
		if faults.committed[res] == 0 {
			t.Errorf("no write to %s was committed with its answer lost (seed %d)", res, seed)
		}
	}
}
