package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/remotecommand"
	criremotecommand "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxapiserver"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// srExecutor is the fake agent's exec: "echo ARGS" writes them to stdout,
// "cat" copies stdin to stdout, "fail N" exits with N.
type srExecutor struct{}

func (srExecutor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, _ io.WriteCloser,
	_ bool, _ <-chan criremotecommand.TerminalSize, _ time.Duration) error {
	switch cmd[0] {
	case "echo":
		_, err := io.WriteString(out, strings.Join(cmd[1:], " ")+"\n")
		return err
	case "cat":
		_, err := io.Copy(out, in)
		return err
	case "fail":
		return utilexec.CodeExitError{Err: errors.New("failed"), Code: 3}
	}
	return fmt.Errorf("unknown command %q", cmd[0])
}

// srFakeAgent serves the interactive routes of one agent Pod over the
// agent's mutual TLS and records the client identities it sees.
func srFakeAgent(t *testing.T, creds *framework.AgentCredentials, podName string) (port int, peers func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	files := map[string][]byte{"/etc/motd": []byte("welcome\n")}
	mux := http.NewServeMux()
	exec := func(w http.ResponseWriter, r *http.Request) {
		opts, err := criremotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		criremotecommand.ServeExec(w, r, srExecutor{}, "sandbox", r.PathValue("uid"), "main", r.URL.Query()["command"], opts,
			time.Minute, criremotecommand.DefaultStreamCreationTimeout, criremotecommand.SupportedStreamingProtocols)
	}
	mux.HandleFunc("GET "+api.PathExec, exec)
	mux.HandleFunc("POST "+api.PathExec, exec)
	mux.HandleFunc("GET "+api.PathLogs, func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "log of %s tailLines=%s\n", r.PathValue("uid"), r.URL.Query().Get("tailLines"))
	})
	mux.HandleFunc("GET "+api.PathFiles, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		data, ok := files[r.URL.Query().Get("path")]
		mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(api.Error{Code: http.StatusNotFound, Message: "no such file"})
			return
		}
		_, _ = w.Write(data)
	})
	mux.HandleFunc("PUT "+api.PathFiles, func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		mu.Lock()
		files[r.URL.Query().Get("path")] = data
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := agentpki.PeerIdentity(r.TLS)
		mu.Lock()
		seen = append(seen, id)
		mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	srv.TLS = creds.ServerTLS(t, podName)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// srRuntime is the runtime of a real agent (pkg/agent) with one running
// sandbox: exec runs "echo", finds the sandbox finished for "vanish" (as
// when it ends meanwhile) and fails to start any other command as
// containerd's runc does (code 127 and its error), the runtime contract the
// agent words for the user.
type srRuntime struct {
	sandbox api.SandboxStatus
	exits   chan api.SandboxStatus
}

var _ runtime.Interactive = &srRuntime{}

func (r *srRuntime) Initialize(context.Context) (runtime.Info, error) {
	return runtime.Info{Runtime: "fake"}, nil
}
func (r *srRuntime) CreateSandbox(context.Context, api.SandboxSpec) api.SandboxStatus {
	return r.sandbox
}
func (r *srRuntime) StopSandbox(context.Context, string) error   { return nil }
func (r *srRuntime) DeleteSandbox(context.Context, string) error { return nil }
func (r *srRuntime) ListSandboxes(context.Context) ([]api.SandboxStatus, error) {
	return []api.SandboxStatus{r.sandbox}, nil
}
func (r *srRuntime) ListImages(context.Context) ([]api.Image, error) { return nil, nil }
func (r *srRuntime) Logs(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("")), nil
}
func (r *srRuntime) Exits() <-chan api.SandboxStatus      { return r.exits }
func (r *srRuntime) Close() error                         { return nil }
func (r *srRuntime) Pause(context.Context, string) error  { return nil }
func (r *srRuntime) Resume(context.Context, string) error { return nil }
func (r *srRuntime) Root(context.Context, string) (*os.File, runtime.Owner, error) {
	return nil, runtime.Owner{}, errors.New("no files here")
}
func (r *srRuntime) FollowLogs(context.Context, string, runtime.LogOptions, io.Writer) error {
	return nil
}

func (r *srRuntime) Exec(_ context.Context, uid string, o runtime.ExecOptions) (int, error) {
	switch o.Command[0] {
	case "echo":
		_, err := io.WriteString(o.Stdout, strings.Join(o.Command[1:], " ")+"\n")
		return 0, err
	case "vanish":
		return -1, fmt.Errorf("sandbox %s: %w", uid, runtime.ErrFinished)
	}
	return 127, fmt.Errorf("starting %q in sandbox %s: %w", o.Command[0], uid,
		&runtime.CommandError{Code: 127, Cause: fmt.Sprintf(`exec: %q: executable file not found in $PATH`, o.Command[0])})
}

// srRealAgent runs pkg/agent over srRuntime with sandbox sbx, serving the
// agent API over its mutual TLS as podName, and returns its port.
func srRealAgent(t *testing.T, creds *framework.AgentCredentials, podName string, sbx *v1alpha1.Sandbox) int {
	t.Helper()
	rt := &srRuntime{exits: make(chan api.SandboxStatus),
		sandbox: api.SandboxStatus{UID: string(sbx.UID), Namespace: sbx.Namespace, Name: sbx.Name, State: api.StateRunning}}
	a := agent.New(agent.Config{Info: api.AgentInfo{PodName: podName}, Capacity: api.Resources{Slots: 1}}, rt, testr.New(t).WithName(podName))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(a.Handler())
	srv.TLS = creds.ServerTLS(t, podName)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().(*net.TCPAddr).Port
}

// srAgentPod creates agent Pod name at 127.0.0.1 with its API on port.
func srAgentPod(t *testing.T, cp *framework.ControlPlane, name string, port int) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pod, err := cp.Kube.CoreV1().Pods(sysNS).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "agent",
			Ports: []corev1.ContainerPort{{Name: v1alpha1.AgentAPIPortName, ContainerPort: int32(port)}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.PodIP, pod.Status.PodIPs = "127.0.0.1", []corev1.PodIP{{IP: "127.0.0.1"}}
	if pod, err = cp.Kube.CoreV1().Pods(sysNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return pod
}

// srNoWebSocket is a proxy to the server at base that refuses WebSocket
// upgrades, as some proxies do, and passes everything else (SPDY upgrades
// included): clients behind it fall back to SPDY.
func srNoWebSocket(t *testing.T, base string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "no WebSocket here", http.StatusBadRequest)
			return
		}
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// srKubeconfig writes a kubeconfig of the test kube-apiserver's admin
// acting as ServiceAccount namespace/name (if name is not empty).
func srKubeconfig(t *testing.T, cfg *rest.Config, namespace, name string) string {
	t.Helper()
	ca := cfg.CAData
	if len(ca) == 0 && cfg.CAFile != "" {
		var err error
		if ca, err = os.ReadFile(cfg.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: ca, TLSServerName: cfg.ServerName,
		InsecureSkipTLSVerify: len(ca) == 0}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken,
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	if name != "" {
		kc.AuthInfos["admin"].Impersonate = "system:serviceaccount:" + namespace + ":" + name
		kc.AuthInfos["admin"].ImpersonateGroups = []string{"system:authenticated", "system:serviceaccounts", "system:serviceaccounts:" + namespace}
	}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// srUser is a ServiceAccount of ns with a token, bound to a Role of rules.
func srUser(t *testing.T, cp *framework.ControlPlane, ns, name string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	if _, err := cp.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kube.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Kube.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The binding takes effect a moment later: wait until its first rule
	// holds (the Role is read with the binding, so then all of them do).
	user, groups := kubetest.ServiceAccountUser(ns, name)
	resource, subresource, _ := strings.Cut(rules[0].Resources[0], "/")
	kubetest.WaitAllowed(t, cp.Kube, user, groups, authorizationv1.ResourceAttributes{Namespace: ns,
		Verb: rules[0].Verbs[0], Group: rules[0].APIGroups[0], Resource: resource, Subresource: subresource})
	tr, err := cp.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of %s/%s: %v", ns, name, err)
	}
	return tr.Status.Token
}

// TestSubresourcesServer runs the sandbox-apiserver against a real
// kube-apiserver with RBAC (delegated authentication and authorization)
// and a fake agent over the agent API's mutual TLS.
func TestSubresourcesServer(t *testing.T) {
	cp := framework.StartWithRBAC(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns1, ns2 := kubetest.CreateNamespace(t, cp.Kube, "sr-one"), kubetest.CreateNamespace(t, cp.Kube, "sr-two")

	// The agent credentials: the apiserver's client certificate in a
	// directory laid out as the mounted Secret.
	creds := cp.AgentCredentials(t)
	certPEM, keyPEM, err := creds.CA.IssueAPIServer(time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	for name, data := range map[string][]byte{agentpki.KeyCert: certPEM, agentpki.KeyKey: keyPEM, agentpki.KeyCACert: creds.CA.CertPEM} {
		if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	agentPort, agentPeers := srFakeAgent(t, creds, "sr-agent")

	// The agent Pods, at 127.0.0.1 (their API on the port named in their
	// spec), and the sandboxes: "real" runs on a real agent (pkg/agent, over
	// a fake runtime), the others on the fake one.
	pod := srAgentPod(t, cp, "sr-agent", agentPort)
	running := bindSandbox(t, cp, kubetest.CreateSandbox(t, cp.Sandbox, ns1, kubetest.Sandbox("sb", "shared", "busybox", "sleep", "1d")), pod, v1alpha1.SandboxRunning)
	kubetest.CreateSandbox(t, cp.Sandbox, ns1, kubetest.Sandbox("pending", "shared", "busybox", "true"))
	bindSandbox(t, cp, kubetest.CreateSandbox(t, cp.Sandbox, ns2, kubetest.Sandbox("sb", "shared", "busybox", "true")), pod, v1alpha1.SandboxRunning)
	pausedSpec := kubetest.Sandbox("paused", "shared", "busybox", "sleep", "1d")
	pausedSpec.Spec.Paused = true
	bindSandbox(t, cp, kubetest.CreateSandbox(t, cp.Sandbox, ns1, pausedSpec), pod, v1alpha1.SandboxPaused)
	bindSandbox(t, cp, kubetest.CreateSandbox(t, cp.Sandbox, ns1, kubetest.Sandbox("done", "shared", "busybox", "true")), pod, v1alpha1.SandboxSucceeded)
	realSbx := kubetest.CreateSandbox(t, cp.Sandbox, ns1, kubetest.Sandbox("real", "shared", "busybox", "sleep", "1d"))
	bindSandbox(t, cp, realSbx, srAgentPod(t, cp, "sr-real-agent", srRealAgent(t, creds, "sr-real-agent", realSbx)), v1alpha1.SandboxRunning)

	// Users: alice may do everything in ns1, bob only read logs, carol may
	// GET exec but not create it.
	group := []string{"subresources.fast-sandbox.io"}
	alice := srUser(t, cp, ns1, "alice", []rbacv1.PolicyRule{
		{APIGroups: group, Resources: []string{"sandboxes/exec", "sandboxes/attach"}, Verbs: []string{"get", "create"}},
		{APIGroups: group, Resources: []string{"sandboxes/log"}, Verbs: []string{"get"}},
		{APIGroups: group, Resources: []string{"sandboxes/files"}, Verbs: []string{"get", "update"}},
	})
	bob := srUser(t, cp, ns1, "bob", []rbacv1.PolicyRule{{APIGroups: group, Resources: []string{"sandboxes/log"}, Verbs: []string{"get"}}})
	carol := srUser(t, cp, ns1, "carol", []rbacv1.PolicyRule{{APIGroups: group, Resources: []string{"sandboxes/exec"}, Verbs: []string{"get"}}})

	// The sandbox-apiserver, delegating to the test kube-apiserver, as its
	// ServiceAccount with the RBAC of manifests/default/rbac.yaml.
	kubeconfig := srKubeconfig(t, cp.Config, sysNS, "fast-sandbox-apiserver")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srStartServer(ctx, t, cancel, ln, kubeconfig, sysNS, certDir, func(cert *genericoptions.GeneratableKeyCert) {
		cert.CertDirectory = t.TempDir() // self-signed
	})
	base := "https://" + ln.Addr().String()
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 30 * time.Second}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := insecure.Get(base + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sandbox-apiserver is not ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	do := func(token, method, ns, name, sub, query string, body []byte) (int, string) {
		t.Helper()
		u := fmt.Sprintf("%s/apis/subresources.fast-sandbox.io/v1alpha1/namespaces/%s/sandboxes/%s/%s?%s", base, ns, name, sub, query)
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := insecure.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, u, err)
		}
		defer func() { _ = resp.Body.Close() }()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	expect := func(what string, code int, body string, wantCode int, wantBody string) {
		t.Helper()
		if code != wantCode || !strings.Contains(body, wantBody) {
			t.Errorf("%s: %d %q, want %d containing %q", what, code, body, wantCode, wantBody)
		}
	}

	// Discovery lists the subresources.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/apis/subresources.fast-sandbox.io/v1alpha1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := insecure.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	body := string(data)
	for _, r := range []string{"sandboxes/exec", "sandboxes/attach", "sandboxes/log", "sandboxes/files"} {
		if !strings.Contains(body, `"`+r+`"`) {
			t.Errorf("discovery lacks %s: %s", r, body)
		}
	}

	// log: alice and bob; alice not in ns2; 404 and 409.
	code, body := do(alice, http.MethodGet, ns1, "sb", "log", "tailLines=3", nil)
	expect("alice log", code, body, http.StatusOK, "log of "+string(running.UID)+" tailLines=3")
	code, body = do(bob, http.MethodGet, ns1, "sb", "log", "", nil)
	expect("bob log", code, body, http.StatusOK, "log of "+string(running.UID))
	code, body = do(alice, http.MethodGet, ns2, "sb", "log", "", nil)
	expect("alice log in ns2", code, body, http.StatusForbidden, "forbidden")
	code, body = do(alice, http.MethodGet, ns1, "missing", "log", "", nil)
	expect("missing sandbox", code, body, http.StatusNotFound, `sandboxes.fast-sandbox.io \"missing\" not found`)
	code, body = do(alice, http.MethodGet, ns1, "pending", "log", "", nil)
	expect("pending sandbox", code, body, http.StatusConflict, "is not running on an agent yet (phase Pending)")

	// files: alice writes and reads; bob may neither.
	code, body = do(alice, http.MethodPut, ns1, "sb", "files", "path=/tmp/x&mode=0600", []byte("written"))
	expect("alice write", code, body, http.StatusNoContent, "")
	code, body = do(alice, http.MethodGet, ns1, "sb", "files", "path=/tmp/x", nil)
	expect("alice read", code, body, http.StatusOK, "written")
	code, body = do(alice, http.MethodGet, ns1, "sb", "files", "path=/nope", nil)
	expect("alice read missing", code, body, http.StatusNotFound, "agent sr-agent: no such file")
	code, body = do(bob, http.MethodGet, ns1, "sb", "files", "path=/etc/motd", nil)
	expect("bob read", code, body, http.StatusForbidden, "forbidden")
	code, body = do(bob, http.MethodPut, ns1, "sb", "files", "path=/etc/motd", []byte("x"))
	expect("bob write", code, body, http.StatusForbidden, "forbidden")

	// exec over SPDY (POST) and WebSocket v5 (GET, translated to SPDY).
	execURL := func(ns, cmd string, stdin bool) string {
		q := "command=" + strings.ReplaceAll(cmd, " ", "&command=") + "&stdout=true&stderr=true"
		if stdin {
			q += "&stdin=true"
		}
		return fmt.Sprintf("%s/apis/subresources.fast-sandbox.io/v1alpha1/namespaces/%s/sandboxes/sb/exec?%s", base, ns, q)
	}
	userConfig := func(token string) *rest.Config {
		return &rest.Config{Host: base, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	}
	run := func(token, method, u string, stdin string) (string, error) {
		t.Helper()
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		var ex remotecommand.Executor
		if method == http.MethodPost {
			ex, err = remotecommand.NewSPDYExecutor(userConfig(token), method, parsed)
		} else {
			ex, err = remotecommand.NewWebSocketExecutor(userConfig(token), method, u)
		}
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		opts := remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut}
		if stdin != "" {
			opts.Stdin = strings.NewReader(stdin)
		}
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		defer scancel()
		err = ex.StreamWithContext(sctx, opts)
		return out.String(), err
	}
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		out, err := run(alice, method, execURL(ns1, "echo hello there", false), "")
		if err != nil || out != "hello there\n" {
			t.Errorf("alice exec (%s): %q, %v", method, out, err)
		}
		out, err = run(alice, method, execURL(ns1, "cat", true), "from stdin")
		if err != nil || out != "from stdin" {
			t.Errorf("alice exec cat (%s): %q, %v", method, out, err)
		}
		var exitErr interface{ ExitStatus() int }
		if _, err := run(alice, method, execURL(ns1, "fail", false), ""); !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
			t.Errorf("alice exec fail (%s): %v, want exit code 3", method, err)
		}
		if _, err := run(bob, method, execURL(ns1, "echo x", false), ""); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("bob exec (%s): %v, want forbidden", method, err)
		}
		if _, err := run(alice, method, execURL(ns2, "echo x", false), ""); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("alice exec in ns2 (%s): %v, want forbidden", method, err)
		}
	}
	// carol may GET exec (what a WebSocket client does) but not create it.
	if _, err := run(carol, http.MethodGet, execURL(ns1, "echo x", false), ""); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("carol exec over WebSocket: %v, want forbidden", err)
	}

	// pkg/client (what kubectl sandbox runs) directly and behind a proxy
	// that refuses WebSocket: what the server refuses before the stream is
	// its *StatusError over both protocols, and a command that cannot start
	// exits 127 with one line naming it and the sandbox.
	for _, via := range []struct{ name, host string }{{"websocket", base}, {"spdy", srNoWebSocket(t, base)}} {
		as := func(token string) *client.Client {
			t.Helper()
			c, err := client.New(&rest.Config{Host: via.host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		execIn := func(c *client.Client, name string, command ...string) (int, string, error) {
			t.Helper()
			sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
			defer scancel()
			var out, errOut bytes.Buffer
			code, err := c.Exec(sctx, ns1, name, client.ExecOptions{Command: command, Stdout: &out, Stderr: &errOut})
			return code, out.String() + errOut.String(), err
		}
		if code, out, err := execIn(as(alice), "real", "echo", "hi"); err != nil || code != 0 || out != "hi\n" {
			t.Errorf("%s: alice exec echo hi: %d %q %v", via.name, code, out, err)
		}
		wantLine := fmt.Sprintf(`exec "nosuchcmd" in sandbox %s/real: the command was not found: exec: "nosuchcmd": executable file not found in $PATH`+"\n", ns1)
		if code, out, err := execIn(as(alice), "real", "nosuchcmd"); err != nil || code != 127 || out != wantLine {
			t.Errorf("%s: alice exec nosuchcmd: %d %q %v; want 127 and %q", via.name, code, out, err, wantLine)
		}
		wantErr := fmt.Sprintf(`exec "vanish" in sandbox %s/real: sandbox has finished`, ns1)
		if code, _, err := execIn(as(alice), "real", "vanish"); err == nil || err.Error() != wantErr || code != -1 {
			t.Errorf("%s: alice exec vanish: %d %v; want -1 and %q", via.name, code, err, wantErr)
		}
		for _, tc := range []struct {
			who, token, sandbox string
			code                int32
			reason              metav1.StatusReason
			message             string
		}{
			{"bob", bob, "sb", http.StatusForbidden, metav1.StatusReasonForbidden, fmt.Sprintf(
				`sandboxes.subresources.fast-sandbox.io "sb" is forbidden: User "system:serviceaccount:%s:bob" cannot create resource "sandboxes/exec" in API group "subresources.fast-sandbox.io" in the namespace %q`, ns1, ns1)},
			{"carol", carol, "sb", http.StatusForbidden, metav1.StatusReasonForbidden, fmt.Sprintf(
				`sandboxes.subresources.fast-sandbox.io "sb" is forbidden: User "system:serviceaccount:%s:carol" cannot create resource "sandboxes/exec" in API group "subresources.fast-sandbox.io" in the namespace %q`, ns1, ns1)},
			{"alice", alice, "missing", http.StatusNotFound, metav1.StatusReasonNotFound, `sandboxes.fast-sandbox.io "missing" not found`},
			{"alice", alice, "paused", http.StatusConflict, metav1.StatusReasonConflict, fmt.Sprintf(`sandbox %s/paused: sandbox is paused (spec.paused); resume it first`, ns1)},
			{"alice", alice, "done", http.StatusConflict, metav1.StatusReasonConflict, fmt.Sprintf(`sandbox %s/done: sandbox has finished`, ns1)},
		} {
			code, _, err := execIn(as(tc.token), tc.sandbox, "echo", "x")
			status, ok := err.(*apierrors.StatusError)
			if !ok || code != -1 {
				t.Errorf("%s: %s exec in %s: %d, %T %v; want a *apierrors.StatusError", via.name, tc.who, tc.sandbox, code, err, err)
				continue
			}
			t.Logf("%s: %s exec in %s: %v", via.name, tc.who, tc.sandbox, err)
			if st := status.ErrStatus; st.Code != tc.code || st.Reason != tc.reason || st.Message != tc.message {
				t.Errorf("%s: %s exec in %s: %d %s %q, want %d %s %q", via.name, tc.who, tc.sandbox, st.Code, st.Reason, st.Message, tc.code, tc.reason, tc.message)
			}
		}
	}

	for _, id := range agentPeers() {
		if id != agentpki.APIServerIdentity {
			t.Errorf("the agent saw client identity %q", id)
		}
	}
}

// srStartServer runs the sandbox-apiserver on ln until ctx ends (cancel
// ends it when the test is done), as the ServiceAccount of kubeconfig,
// reaching agents with the client certificate in clientDir; serving sets
// its serving certificate.
func srStartServer(ctx context.Context, t *testing.T, cancel context.CancelFunc, ln net.Listener, kubeconfig, sysNS, clientDir string,
	serving func(*genericoptions.GeneratableKeyCert)) {
	t.Helper()
	o := sandboxapiserver.NewOptions()
	o.Recommended.SecureServing.Listener = ln
	o.Recommended.SecureServing.BindPort = ln.Addr().(*net.TCPAddr).Port
	serving(&o.Recommended.SecureServing.ServerCert)
	o.Recommended.Authentication.RemoteKubeConfigFile = kubeconfig
	o.Recommended.Authorization.RemoteKubeConfigFile = kubeconfig
	o.Recommended.CoreAPI.CoreAPIKubeconfigPath = kubeconfig
	o.SystemNamespace = sysNS
	o.AgentClientCertDir = clientDir
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := cfg.New()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the sandbox-apiserver did not stop")
		}
	})
}
