package sandboxapiserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/handlers/responsewriters"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	clientremotecommand "k8s.io/client-go/tools/remotecommand"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	subv1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/subresources/v1alpha1"
	sandboxlisters "github.com/fast-sandbox/fast-sandbox/pkg/generated/listers/sandbox/v1alpha1"
)

const (
	sysNS    = "fast-sandbox-system"
	agentPod = "agent-1"
	agentUID = "agent-uid-1"
	sbxUID   = "sbx-uid-1"
)

// pki is a CA with the apiserver's client credentials.
type pki struct {
	ca    *agentpki.CA
	creds *agentpki.ClientCredentials
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	now := time.Now()
	caPEM, caKey, err := agentpki.NewCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := agentpki.ParseCA(caPEM, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueAPIServer(now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := agentpki.NewClient(cert, key, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &pki{ca: ca, creds: creds}
}

// serverTLS is the agent podName's server configuration, as the agent makes it.
func (p *pki) serverTLS(t *testing.T, podName string) *tls.Config {
	t.Helper()
	cert, key, err := p.ca.IssueAgent(sysNS, podName, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{agentpki.KeyCert: cert, agentpki.KeyKey: key, agentpki.KeyCACert: p.ca.CertPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := agentpki.ServerConfig(filepath.Join(dir, agentpki.KeyCert), filepath.Join(dir, agentpki.KeyKey), filepath.Join(dir, agentpki.KeyCACert))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeAgent serves the agent's files and logs routes for sandbox sbxUID.
type fakeAgent struct {
	mu     sync.Mutex
	files  map[string]string
	modes  map[string]string
	peers  []string
	logGo  chan struct{} // closed: the followed log writes its second line
	server *httptest.Server
}

func startFakeAgent(t *testing.T, p *pki, podName string) *fakeAgent {
	t.Helper()
	a := &fakeAgent{files: map[string]string{"/etc/hello": "hello world"}, modes: map[string]string{}, logGo: make(chan struct{})}
	mux := http.NewServeMux()
	fail := func(w http.ResponseWriter, code int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg})
	}
	mux.HandleFunc("GET "+api.PathFiles, func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("uid") != sbxUID {
			fail(w, http.StatusNotFound, "no such sandbox")
			return
		}
		a.mu.Lock()
		content, ok := a.files[r.URL.Query().Get("path")]
		a.mu.Unlock()
		if !ok {
			fail(w, http.StatusNotFound, "no such file")
			return
		}
		if op := r.URL.Query().Get("op"); op == api.FileOpStat {
			_ = json.NewEncoder(w).Encode(api.FileInfo{Name: filepath.Base(r.URL.Query().Get("path")), Size: int64(len(content)), Type: api.FileTypeFile})
			return
		}
		_, _ = io.WriteString(w, content)
	})
	mux.HandleFunc("PUT "+api.PathFiles, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		}
		a.mu.Lock()
		a.files[r.URL.Query().Get("path")] = string(body)
		a.modes[r.URL.Query().Get("path")] = r.URL.Query().Get("mode")
		a.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+api.PathExec, func(w http.ResponseWriter, r *http.Request) {
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		}
		remotecommand.ServeExec(w, r, echoExecutor{}, "sb", r.PathValue("uid"), "", r.URL.Query()["command"], opts,
			time.Minute, remotecommand.DefaultStreamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	})
	mux.HandleFunc("GET "+api.PathLogs, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "line 1 tail="+r.URL.Query().Get("tailLines")+"\n")
		if r.URL.Query().Get("follow") != "true" {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-a.logGo:
			_, _ = io.WriteString(w, "line 2\n")
		case <-r.Context().Done():
		}
	})
	a.server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := agentpki.PeerIdentity(r.TLS)
		a.mu.Lock()
		a.peers = append(a.peers, id)
		a.mu.Unlock()
		if err != nil {
			fail(w, http.StatusForbidden, err.Error())
			return
		}
		mux.ServeHTTP(w, r)
	}))
	a.server.TLS = p.serverTLS(t, podName)
	a.server.StartTLS()
	t.Cleanup(a.server.Close)
	return a
}

// echoExecutor writes the command's arguments to stdout.
type echoExecutor struct{}

func (echoExecutor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, _ io.Reader, out, _ io.WriteCloser,
	_ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	_, err := io.WriteString(out, strings.Join(cmd[1:], " ")+"\n")
	return err
}

func (a *fakeAgent) port(t *testing.T) int {
	_, port, err := net.SplitHostPort(a.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return n
}

func (a *fakeAgent) peerIDs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.peers...)
}

func sandbox(ns, name, agent string, phase v1alpha1.SandboxPhase) *v1alpha1.Sandbox {
	return &v1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: sbxUID},
		Status:     v1alpha1.SandboxStatus{Phase: phase, Agent: agent, AgentUID: agentUID},
	}
}

func agentPodObj(name, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: sysNS, Name: name, UID: types.UID(agentUID)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent",
			Ports: []corev1.ContainerPort{{Name: v1alpha1.AgentAPIPortName, ContainerPort: 9443}}}}},
		Status: corev1.PodStatus{PodIP: ip},
	}
}

func newResolver(t *testing.T, creds *agentpki.ClientCredentials, port int, objs ...runtime.Object) *resolver {
	t.Helper()
	sbxIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	podIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, o := range objs {
		idx := sbxIdx
		if _, ok := o.(*corev1.Pod); ok {
			idx = podIdx
		}
		if err := idx.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	return &resolver{sandboxes: sandboxlisters.NewSandboxLister(sbxIdx), pods: corelisters.NewPodLister(podIdx),
		systemNamespace: sysNS, port: port, creds: creds}
}

func reqCtx(ns, verb, sub, name string) context.Context {
	ctx := genericapirequest.WithNamespace(context.Background(), ns)
	ctx = genericapirequest.WithUser(ctx, &user.DefaultInfo{Name: "alice"})
	return genericapirequest.WithRequestInfo(ctx, &genericapirequest.RequestInfo{
		IsResourceRequest: true, Verb: verb, APIGroup: subv1alpha1.GroupName, APIVersion: "v1alpha1",
		Namespace: ns, Resource: "sandboxes", Subresource: sub, Name: name,
	})
}

func TestResolve(t *testing.T) {
	p := newPKI(t)
	r := newResolver(t, p.creds, 0,
		sandbox("ns1", "running", agentPod, v1alpha1.SandboxRunning),
		sandbox("ns1", "pending", "", ""),
		sandbox("ns1", "failed", "", v1alpha1.SandboxFailed),
		sandbox("ns1", "lost", "agent-gone", v1alpha1.SandboxRunning),
		func() *v1alpha1.Sandbox {
			s := sandbox("ns1", "agentlost", "agent-gone", v1alpha1.SandboxFailed)
			s.Status.Reason = "AgentLost"
			return s
		}(),
		sandbox("ns1", "noip", "agent-noip", v1alpha1.SandboxRunning),
		sandbox("ns1", "replaced", "agent-new", v1alpha1.SandboxRunning),
		agentPodObj(agentPod, "10.0.0.7"),
		agentPodObj("agent-noip", ""),
		func() *corev1.Pod { p := agentPodObj("agent-new", "10.0.0.8"); p.UID = "other"; return p }(),
	)
	tg, err := r.resolve(reqCtx("ns1", "get", "log", "running"), "running")
	if err != nil {
		t.Fatal(err)
	}
	if got := tg.location(api.PathLogs, url.Values{"follow": {"true"}}).String(); got != "https://10.0.0.7:9443/v1/sandboxes/"+sbxUID+"/logs?follow=true" {
		t.Errorf("location %s", got)
	}
	if tg.transport == nil || tg.transport.TLSClientConfig == nil || tg.transport.TLSClientConfig.VerifyConnection == nil {
		t.Error("the transport does not verify the agent")
	}
	if again, _ := r.resolve(reqCtx("ns1", "get", "log", "running"), "running"); again.transport != tg.transport {
		t.Error("the agent's transport is not reused")
	}

	for _, tc := range []struct {
		ns, name string
		code     int32
		msg      string
	}{
		{"ns1", "missing", http.StatusNotFound, `sandboxes.fast-sandbox.io "missing" not found`},
		{"ns2", "running", http.StatusNotFound, "not found"},
		{"ns1", "pending", http.StatusConflict, "sandbox ns1/pending is not running on an agent yet (phase Pending)"},
		{"ns1", "failed", http.StatusConflict, "sandbox ns1/failed has finished (phase Failed)"},
		// Its agent went with it: that it has finished is what matters.
		{"ns1", "agentlost", http.StatusConflict, "sandbox ns1/agentlost has finished (phase Failed): AgentLost; its agent agent-gone is not reachable: its Pod is gone"},
		{"ns1", "lost", http.StatusServiceUnavailable, "agent agent-gone is not reachable: its Pod is gone"},
		{"ns1", "noip", http.StatusServiceUnavailable, "agent agent-noip is not reachable: its Pod has no IP address yet"},
		{"ns1", "replaced", http.StatusServiceUnavailable, "agent agent-new is not reachable: its Pod was replaced"},
	} {
		_, err := r.resolve(reqCtx(tc.ns, "get", "log", tc.name), tc.name)
		var se apierrors.APIStatus
		if !errors.As(err, &se) || se.Status().Code != tc.code || !strings.Contains(se.Status().Message, tc.msg) {
			t.Errorf("%s/%s: error %v, want %d %q", tc.ns, tc.name, err, tc.code, tc.msg)
		}
	}
}

// The cache misses a sandbox just bound: the resolver asks the API server.
func TestResolveFallsBackToLiveRead(t *testing.T) {
	p := newPKI(t)
	r := newResolver(t, p.creds, 0, sandbox("ns1", "sb", "", v1alpha1.SandboxScheduled), agentPodObj(agentPod, "10.0.0.7"))
	r.getSandbox = func(_ context.Context, ns, name string) (*v1alpha1.Sandbox, error) {
		return sandbox(ns, name, agentPod, v1alpha1.SandboxRunning), nil
	}
	if _, err := r.resolve(reqCtx("ns1", "get", "log", "sb"), "sb"); err != nil {
		t.Fatal(err)
	}
}

func TestOptionsValidation(t *testing.T) {
	neg, zero := int64(-1), int64(0)
	for name, o := range map[string]*subv1alpha1.SandboxLogOptions{
		"negative tail": {TailLines: &neg}, "zero limit": {LimitBytes: &zero}, "zero since": {SinceSeconds: &zero},
		"both since": {SinceSeconds: new(int64(5)), SinceTime: &metav1.Time{Time: time.Now()}},
	} {
		if _, err := logQuery(o); !apierrors.IsBadRequest(err) {
			t.Errorf("%s: %v, want BadRequest", name, err)
		}
	}
	p := newPKI(t)
	r := newResolver(t, p.creds, 0)
	ex := &execREST{r: r, authz: authorizer.AuthorizerFunc(func(context.Context, authorizer.Attributes) (authorizer.Decision, string, error) {
		return authorizer.DecisionAllow, "", nil
	})}
	if _, err := ex.Connect(reqCtx("ns1", "create", "exec", "sb"), "sb", &subv1alpha1.SandboxExecOptions{Stdout: true}, nil); !apierrors.IsBadRequest(err) {
		t.Errorf("exec without a command: %v", err)
	}
	at := &attachREST{r: r, authz: ex.authz}
	if _, err := at.Connect(reqCtx("ns1", "create", "attach", "sb"), "sb", &subv1alpha1.SandboxAttachOptions{Stdin: true, Stdout: true}, nil); !apierrors.IsBadRequest(err) ||
		!strings.Contains(err.Error(), "stdin and tty cannot be attached") {
		t.Errorf("attach with stdin: %v", err)
	}
	f := &filesREST{r: r}
	if _, err := f.Connect(reqCtx("ns1", "update", "files", "sb"), "sb", &subv1alpha1.SandboxFilesOptions{Path: "/x", Mode: "0999"}, nil); !apierrors.IsBadRequest(err) {
		t.Errorf("mode 0999: %v", err)
	}
	if _, err := f.Connect(reqCtx("ns1", "get", "files", "sb"), "sb", &subv1alpha1.SandboxFilesOptions{Path: "/x", Op: "rm"}, nil); !apierrors.IsBadRequest(err) {
		t.Errorf("op rm: %v", err)
	}
}

// A WebSocket exec is a GET, which RBAC calls "get": exec also needs "create".
func TestExecRequiresCreate(t *testing.T) {
	p := newPKI(t)
	r := newResolver(t, p.creds, 0, sandbox("ns1", "sb", agentPod, v1alpha1.SandboxRunning), agentPodObj(agentPod, "10.0.0.7"))
	var asked []string
	ex := &execREST{r: r, authz: authorizer.AuthorizerFunc(func(_ context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
		asked = append(asked, a.GetVerb()+" "+a.GetResource()+"/"+a.GetSubresource()+" "+a.GetNamespace()+"/"+a.GetName())
		return authorizer.DecisionDeny, "no create for you", nil
	})}
	opts := &subv1alpha1.SandboxExecOptions{Stdout: true, Command: []string{"sh"}}
	_, err := ex.Connect(reqCtx("ns1", "get", "exec", "sb"), "sb", opts, nil)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "no create for you") {
		t.Errorf("exec with get only: %v", err)
	}
	if len(asked) != 1 || asked[0] != "create sandboxes/exec ns1/sb" {
		t.Errorf("authorizer asked %v", asked)
	}
	// A POST is already authorized for create.
	if _, err := ex.Connect(reqCtx("ns1", "create", "exec", "sb"), "sb", opts, nil); err != nil {
		t.Errorf("exec with create: %v", err)
	}
}

// testResponder writes errors as the API server does (roughly).
type testResponder struct{ w http.ResponseWriter }

func (r testResponder) Object(code int, obj runtime.Object) {
	r.w.WriteHeader(code)
	_ = json.NewEncoder(r.w).Encode(obj)
}

func (r testResponder) Error(err error) {
	st := responsewriters.ErrorToAPIStatus(err)
	r.w.Header().Set("Content-Type", "application/json")
	r.w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(r.w).Encode(st)
}

// front serves Connecter c for sandbox "sb" in ns1, as the installer would.
func front(t *testing.T, sub string, newOpts func(*http.Request) runtime.Object, connect func(ctx context.Context, opts runtime.Object, rs testResponder) (http.Handler, error)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		verb := map[string]string{http.MethodGet: "get", http.MethodPut: "update", http.MethodPost: "create"}[req.Method]
		ctx := reqCtx("ns1", verb, sub, "sb")
		rs := testResponder{w}
		h, err := connect(ctx, newOpts(req), rs)
		if err != nil {
			rs.Error(err)
			return
		}
		h.ServeHTTP(w, req.WithContext(ctx))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFilesAndLogProxy(t *testing.T) {
	p := newPKI(t)
	agent := startFakeAgent(t, p, agentPod)
	r := newResolver(t, p.creds, agent.port(t), sandbox("ns1", "sb", agentPod, v1alpha1.SandboxRunning), agentPodObj(agentPod, "127.0.0.1"))
	files := &filesREST{r: r}
	fsrv := front(t, "files", func(req *http.Request) runtime.Object {
		q := req.URL.Query()
		return &subv1alpha1.SandboxFilesOptions{Path: q.Get("path"), Op: q.Get("op"), Mode: q.Get("mode")}
	}, func(ctx context.Context, o runtime.Object, rs testResponder) (http.Handler, error) {
		return files.Connect(ctx, "sb", o, rs)
	})

	// GET read.
	resp, err := http.Get(fsrv.URL + "?path=/etc/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello world" {
		t.Errorf("read: %d %q", resp.StatusCode, body)
	}
	// PUT, streamed to the agent with its mode; a bearer token is not passed on.
	req, _ := http.NewRequest(http.MethodPut, fsrv.URL+"?path=/tmp/new&mode=0600", strings.NewReader("new content"))
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set("X-Remote-User", "mallory")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	agent.mu.Lock()
	written, mode := agent.files["/tmp/new"], agent.modes["/tmp/new"]
	agent.mu.Unlock()
	if resp.StatusCode != http.StatusNoContent || written != "new content" || mode != "0600" {
		t.Errorf("write: %d, agent has %q mode %q", resp.StatusCode, written, mode)
	}
	// stat answers JSON.
	resp, err = http.Get(fsrv.URL + "?path=/tmp/new&op=stat")
	if err != nil {
		t.Fatal(err)
	}
	var fi api.FileInfo
	_ = json.NewDecoder(resp.Body).Decode(&fi)
	_ = resp.Body.Close()
	if fi.Name != "new" || fi.Size != int64(len("new content")) {
		t.Errorf("stat: %+v", fi)
	}
	// The agent's error becomes an API Status.
	resp, err = http.Get(fsrv.URL + "?path=/nope")
	if err != nil {
		t.Fatal(err)
	}
	var st metav1.Status
	_ = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || st.Kind != "Status" || st.Reason != metav1.StatusReasonNotFound || st.Message != "agent agent-1: no such file" {
		t.Errorf("missing file: %d %+v", resp.StatusCode, st)
	}

	// log follow streams: the first line arrives before the agent writes the second.
	logs := &logREST{r: r}
	lsrv := front(t, "log", func(req *http.Request) runtime.Object {
		o := &subv1alpha1.SandboxLogOptions{Follow: req.URL.Query().Get("follow") == "true"}
		if v := req.URL.Query().Get("tailLines"); v != "" {
			n, _ := strconv.ParseInt(v, 10, 64)
			o.TailLines = &n
		}
		return o
	}, func(ctx context.Context, o runtime.Object, rs testResponder) (http.Handler, error) {
		return logs.Connect(ctx, "sb", o, rs)
	})
	resp, err = http.Get(lsrv.URL + "?follow=true&tailLines=5")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "line 1 tail=5\n" {
		t.Fatalf("first log line %q, %v", line, err)
	}
	close(agent.logGo)
	if line, err = br.ReadString('\n'); err != nil || line != "line 2\n" {
		t.Fatalf("second log line %q, %v", line, err)
	}

	for _, id := range agent.peerIDs() {
		if id != agentpki.APIServerIdentity {
			t.Errorf("the agent saw client identity %q", id)
		}
	}
	if len(agent.peerIDs()) == 0 {
		t.Error("the agent saw no request")
	}
}

// An agent Pod that presents another Pod's certificate is not called, and
// an agent that cannot be dialed is reported unreachable.
func TestAgentIdentityAndReachability(t *testing.T) {
	p := newPKI(t)
	impostor := startFakeAgent(t, p, "agent-2")
	r := newResolver(t, p.creds, impostor.port(t), sandbox("ns1", "sb", agentPod, v1alpha1.SandboxRunning), agentPodObj(agentPod, "127.0.0.1"))
	files := &filesREST{r: r}
	srv := front(t, "files", func(req *http.Request) runtime.Object {
		return &subv1alpha1.SandboxFilesOptions{Path: "/etc/hello"}
	}, func(ctx context.Context, o runtime.Object, rs testResponder) (http.Handler, error) {
		return files.Connect(ctx, "sb", o, rs)
	})
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var st metav1.Status
	_ = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(st.Message, "agent agent-1 is not reachable") ||
		!strings.Contains(st.Message, "expected agent") {
		t.Errorf("impostor: %d %q", resp.StatusCode, st.Message)
	}
	if len(impostor.peerIDs()) != 0 {
		t.Error("a request reached the impostor")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.port = ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	resp, err = http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&st)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(st.Message, "agent agent-1 is not reachable") {
		t.Errorf("closed port: %d %q", resp.StatusCode, st.Message)
	}
}

// exec and attach refuse a sandbox paused by spec or finished as a
// Conflict before any upgrade (a WebSocket client would otherwise get the
// agent's refusal as an Internal error), unless the API server says the
// cache is stale.
func TestStreamsRefusePausedAndFinished(t *testing.T) {
	p := newPKI(t)
	paused := sandbox("ns1", "paused", agentPod, v1alpha1.SandboxPaused)
	paused.Spec.Paused = true
	idle := sandbox("ns1", "idle", agentPod, v1alpha1.SandboxPaused) // paused as idle: exec resumes it
	resumed := sandbox("ns1", "resumed", agentPod, v1alpha1.SandboxPaused)
	resumed.Spec.Paused = true // the cache's view; the API server's is resumed
	r := newResolver(t, p.creds, 0, paused, idle, resumed,
		sandbox("ns1", "done", agentPod, v1alpha1.SandboxSucceeded), agentPodObj(agentPod, "10.0.0.7"))
	r.getSandbox = func(_ context.Context, ns, name string) (*v1alpha1.Sandbox, error) {
		s, err := r.sandboxes.Sandboxes(ns).Get(name)
		if err != nil {
			return nil, err
		}
		s = s.DeepCopy()
		if name == "resumed" {
			s.Spec.Paused, s.Status.Phase = false, v1alpha1.SandboxRunning
		}
		return s, nil
	}
	allow := authorizer.AuthorizerFunc(func(context.Context, authorizer.Attributes) (authorizer.Decision, string, error) {
		return authorizer.DecisionAllow, "", nil
	})
	ex := &execREST{r: r, authz: allow}
	at := &attachREST{r: r, authz: allow}
	for _, tc := range []struct{ name, msg string }{
		{"paused", "sandbox ns1/paused: sandbox is paused (spec.paused); resume it first"},
		{"done", "sandbox ns1/done: sandbox has finished"},
		{"idle", ""},
		{"resumed", ""},
	} {
		_, execErr := ex.Connect(reqCtx("ns1", "create", "exec", tc.name), tc.name, &subv1alpha1.SandboxExecOptions{Stdout: true, Command: []string{"sh"}}, nil)
		_, attachErr := at.Connect(reqCtx("ns1", "create", "attach", tc.name), tc.name, &subv1alpha1.SandboxAttachOptions{Stdout: true}, nil)
		for what, err := range map[string]error{"exec": execErr, "attach": attachErr} {
			if tc.msg == "" {
				if err != nil {
					t.Errorf("%s %s: %v, want it sent to the agent", what, tc.name, err)
				}
			} else if !apierrors.IsConflict(err) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("%s %s: %v, want a Conflict %q", what, tc.name, err, tc.msg)
			}
		}
	}
}

// logLines is a logger that keeps what it logs.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, prefix+" "+args)
	}, funcr.Options{Verbosity: 10})
}

func (l *logLines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// A WebSocket exec that ends normally logs no error: the translation
// closes the client's connection after the status, and wsstream's reader
// logged "use of closed network connection" at each end.
func TestWebSocketStreamEndIsQuiet(t *testing.T) {
	p := newPKI(t)
	agent := startFakeAgent(t, p, agentPod)
	r := newResolver(t, p.creds, agent.port(t), sandbox("ns1", "sb", agentPod, v1alpha1.SandboxRunning), agentPodObj(agentPod, "127.0.0.1"))
	ex := &execREST{r: r, authz: authorizer.AuthorizerFunc(func(context.Context, authorizer.Attributes) (authorizer.Decision, string, error) {
		return authorizer.DecisionAllow, "", nil
	})}
	logs := &logLines{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ctx := klog.NewContext(reqCtx("ns1", "get", "exec", "sb"), logs.logger())
		q := req.URL.Query()
		h, err := ex.Connect(ctx, "sb", &subv1alpha1.SandboxExecOptions{Command: q["command"], Stdout: true}, testResponder{w})
		if err != nil {
			testResponder{w}.Error(err)
			return
		}
		h.ServeHTTP(w, req.WithContext(ctx))
	}))
	t.Cleanup(srv.Close)

	const execs = 5
	for i := range execs {
		ws, err := clientremotecommand.NewWebSocketExecutor(&rest.Config{Host: srv.URL}, http.MethodGet,
			srv.URL+"?command=echo&command=hello&command="+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var out strings.Builder
		err = ws.StreamWithContext(ctx, clientremotecommand.StreamOptions{Stdout: &out})
		cancel()
		if want := "hello " + strconv.Itoa(i) + "\n"; err != nil || out.String() != want {
			t.Fatalf("exec %d: %q, %v; want %q", i, out.String(), err, want)
		}
	}
	// The server's side of the last stream may end after its client's.
	time.Sleep(100 * time.Millisecond)
	for _, line := range logs.get() {
		if strings.Contains(line, `"error"=`) {
			t.Errorf("logged at the normal end of %d streams: %s", execs, line)
		}
	}
}

// Only errors of a closed connection are dropped, also by the loggers
// derived from the filtered one.
func TestClosedConnFilter(t *testing.T) {
	logs := &logLines{}
	base := logs.logger()
	logger := base.WithSink(withoutClosedConnErrors(base.GetSink())).WithName("n").WithValues("k", "v")
	closed := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	logger.Error(closed, "Error on socket receive")
	logger.Error(fmt.Errorf("reading: %w", closed), "wrapped")
	logger.Error(io.ErrUnexpectedEOF, "a real error")
	logger.Info("an info")
	got := logs.get()
	if len(got) != 2 || !strings.Contains(got[0], "a real error") || !strings.Contains(got[0], `"k"="v"`) ||
		!strings.HasPrefix(got[0], "n ") || !strings.Contains(got[1], "an info") {
		t.Errorf("logged %q, want the real error and the info, named and with values", got)
	}
}
