package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

// harness runs the plugin against a fake clientset (the Sandbox objects)
// and a test server (the aggregated API), in namespace "default" unless -n.
type harness struct {
	t        *testing.T
	cs       *fake.Clientset
	handlers map[string]http.HandlerFunc
	in       *bytes.Buffer
	out, err *bytes.Buffer

	mu       sync.Mutex
	requests []*http.Request
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	// No kubeconfig of the machine running the tests.
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	return &harness{t: t, cs: fake.NewSimpleClientset(), handlers: map[string]http.HandlerFunc{},
		in: &bytes.Buffer{}, out: &bytes.Buffer{}, err: &bytes.Buffer{}}
}

// ServeHTTP answers /apis/subresources.fast-sandbox.io/v1alpha1/namespaces/NS/sandboxes/NAME/SUB
// with the handler of "METHOD SUB".
func (h *harness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.requests = append(h.requests, r)
	h.mu.Unlock()
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/apis/subresources.fast-sandbox.io/v1alpha1/namespaces/"), "/")
	if len(parts) != 4 || parts[1] != "sandboxes" {
		http.NotFound(w, r)
		return
	}
	hf, ok := h.handlers[r.Method+" "+parts[3]]
	if !ok {
		writeStatus(w, apierrors.NewMethodNotSupported(v1alpha1.Resource("sandboxes/"+parts[3]), r.Method))
		return
	}
	hf(w, r)
}

func (h *harness) run(args ...string) int {
	h.t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	o := newOptions(genericiooptions.IOStreams{In: h.in, Out: h.out, ErrOut: h.err})
	o.newClient = func() (*client.Client, error) {
		return client.NewWithClientset(&rest.Config{Host: srv.URL}, h.cs)
	}
	return run(args, o)
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.ErrStatus
	st.Kind, st.APIVersion = "Status", "v1"
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}

func (h *harness) create(sb *v1alpha1.Sandbox) {
	h.t.Helper()
	if _, err := h.cs.SandboxV1alpha1().Sandboxes(sb.Namespace).Create(context.Background(), sb, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) get(ns, name string) *v1alpha1.Sandbox {
	h.t.Helper()
	sb, err := h.cs.SandboxV1alpha1().Sandboxes(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return sb
}

// onCreate gives every Sandbox created through the plugin this status, as
// if it had been placed and run at once.
func (h *harness) onCreate(status v1alpha1.SandboxStatus) {
	h.cs.PrependReactor("create", "sandboxes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		a.(clienttesting.CreateAction).GetObject().(*v1alpha1.Sandbox).Status = status
		return false, nil, nil
	})
}

func TestCommandAfterDash(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		name    string
		command []string
		err     string
	}{
		{args: []string{"box", "--", "ls", "-l"}, name: "box", command: []string{"ls", "-l"}},
		{args: []string{"box", "--", "sh", "-c", "echo -n"}, name: "box", command: []string{"sh", "-c", "echo -n"}},
		{args: []string{"box"}, name: "box"},
		{args: []string{"box", "ls"}, err: "use x NAME -- CMD"},
		{args: []string{"--", "ls"}, err: "a sandbox name is required"},
		{args: []string{}, err: "a sandbox name is required"},
		{args: []string{"a", "b", "--", "ls"}, err: "one sandbox name before --"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var name string
			var command []string
			var err error
			cmd := &cobra.Command{Use: "x", RunE: func(cmd *cobra.Command, args []string) error {
				name, command, err = commandAfterDash(cmd, args)
				return nil
			}}
			cmd.Flags().BoolP("stdin", "i", false, "")
			cmd.SetArgs(tc.args)
			if e := cmd.Execute(); e != nil {
				t.Fatal(e)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || name != tc.name || !reflect.DeepEqual(command, tc.command) {
				t.Errorf("got %q %q %v, want %q %q", name, command, err, tc.name, tc.command)
			}
		})
	}
}

func TestParseCpArgs(t *testing.T) {
	for _, tc := range []struct {
		src, dst string
		from, to location
		err      string
	}{
		{src: "box:/etc/hosts", dst: "hosts", from: location{Name: "box", Path: "/etc/hosts"}, to: location{Path: "hosts"}},
		{src: "./main.py", dst: "box:/work/", from: location{Path: "./main.py"}, to: location{Name: "box", Path: "/work/"}},
		{src: "team/box:/a", dst: "-", from: location{Namespace: "team", Name: "box", Path: "/a"}, to: location{Path: "-"}},
		{src: "-", dst: "box.v2:/in", from: location{Path: "-"}, to: location{Name: "box.v2", Path: "/in"}},
		{src: "/tmp/a:b", dst: "box:/b", from: location{Path: "/tmp/a:b"}, to: location{Name: "box", Path: "/b"}},
		{src: "./a:b", dst: "box:/b", from: location{Path: "./a:b"}, to: location{Name: "box", Path: "/b"}},
		{src: "box:relative", dst: "x", err: "must be absolute"},
		{src: "box:", dst: "x", err: "a path is required"},
		{src: "Box_1:/a", dst: "x", err: "sandbox name"},
		{src: "Team/box:/a", dst: "x", err: "namespace"},
		{src: "a", dst: "b", err: "one of SRC and DST must be in a sandbox"},
		{src: "a:/x", dst: "b:/y", err: "from one sandbox to another"},
		{src: "", dst: "b:/y", err: "empty"},
	} {
		t.Run(tc.src+" "+tc.dst, func(t *testing.T) {
			from, to, err := parseCpArgs(tc.src, tc.dst)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || from != tc.from || to != tc.to {
				t.Errorf("got %+v %+v %v, want %+v %+v", from, to, err, tc.from, tc.to)
			}
		})
	}
}

func TestBuildSandbox(t *testing.T) {
	manifest := `apiVersion: fast-sandbox.io/v1alpha1
kind: Sandbox
metadata:
  name: from-file
  namespace: team
  labels: {app: demo}
spec:
  poolName: gpu
  image: python:3.12
  command: [python, -m, http.server]
  env:
  - {name: A, value: "1"}
status:
  phase: Running
`
	read := func(string) ([]byte, error) { return []byte(manifest), nil }
	for _, tc := range []struct {
		name     string
		flags    runFlags
		changed  []string
		arg      string
		dash     []string
		ns       string
		explicit bool
		check    func(t *testing.T, sb *v1alpha1.Sandbox, command []string)
		err      string
	}{
		{
			name: "flags", flags: runFlags{image: "busybox", pool: "default"}, changed: []string{"image"},
			arg: "box", dash: []string{"echo", "hi"}, ns: "default",
			check: func(t *testing.T, sb *v1alpha1.Sandbox, command []string) {
				want := v1alpha1.SandboxSpec{PoolName: "default", Image: "busybox", Args: []string{"echo", "hi"}}
				if sb.Name != "box" || sb.Namespace != "default" || !reflect.DeepEqual(sb.Spec, want) || command != nil {
					t.Errorf("got %s/%s %+v %q", sb.Namespace, sb.Name, sb.Spec, command)
				}
			},
		},
		{
			name: "command and the rest", arg: "box", dash: []string{"sh", "-c", "exit 3"}, ns: "default",
			flags:   runFlags{image: "busybox", pool: "p1", command: true, env: []string{"X=1=2"}, workdir: "/w", network: "Egress", idleTimeout: 90*time.Second + time.Millisecond, idlePolicy: "Delete"},
			changed: []string{"image", "pool", "command", "env", "workdir", "network", "idle-timeout", "idle-policy"},
			check: func(t *testing.T, sb *v1alpha1.Sandbox, _ []string) {
				s := sb.Spec
				if s.PoolName != "p1" || !reflect.DeepEqual(s.Command, []string{"sh", "-c", "exit 3"}) || s.Args != nil ||
					!reflect.DeepEqual(s.Env, []v1alpha1.EnvVar{{Name: "X", Value: "1=2"}}) || s.WorkingDir != "/w" ||
					s.NetworkMode != v1alpha1.NetworkModeEgress || s.IdleTimeoutSeconds == nil || *s.IdleTimeoutSeconds != 91 ||
					s.IdlePolicy != v1alpha1.IdlePolicyDelete {
					t.Errorf("spec %+v", s)
				}
			},
		},
		{
			name: "interactive holds the sandbox and execs sh", arg: "box", ns: "default",
			flags: runFlags{image: "busybox", pool: "default", stdin: true, tty: true}, changed: []string{"image"},
			check: func(t *testing.T, sb *v1alpha1.Sandbox, command []string) {
				if !reflect.DeepEqual(sb.Spec.Command, holdCommand) || sb.Spec.Args != nil || !reflect.DeepEqual(command, []string{"sh"}) {
					t.Errorf("command %q args %q exec %q", sb.Spec.Command, sb.Spec.Args, command)
				}
			},
		},
		{
			name: "interactive execs the command after --", arg: "box", ns: "default", dash: []string{"bash", "-l"},
			flags: runFlags{image: "busybox", pool: "default", stdin: true}, changed: []string{"image"},
			check: func(t *testing.T, sb *v1alpha1.Sandbox, command []string) {
				if !reflect.DeepEqual(sb.Spec.Command, holdCommand) || !reflect.DeepEqual(command, []string{"bash", "-l"}) {
					t.Errorf("command %q exec %q", sb.Spec.Command, command)
				}
			},
		},
		{
			name: "file, flags override", flags: runFlags{filename: "sb.yaml", image: "python:3.13", pool: "default", env: []string{"A=2", "B=3"}},
			changed: []string{"filename", "image", "env"}, ns: "default",
			check: func(t *testing.T, sb *v1alpha1.Sandbox, _ []string) {
				if sb.Name != "from-file" || sb.Namespace != "team" || sb.Labels["app"] != "demo" {
					t.Errorf("metadata %+v", sb.ObjectMeta)
				}
				// The pool of the file stays: --pool was not given.
				if sb.Spec.PoolName != "gpu" || sb.Spec.Image != "python:3.13" || len(sb.Spec.Command) != 3 {
					t.Errorf("spec %+v", sb.Spec)
				}
				if !reflect.DeepEqual(sb.Spec.Env, []v1alpha1.EnvVar{{Name: "A", Value: "2"}, {Name: "B", Value: "3"}}) {
					t.Errorf("env %+v", sb.Spec.Env)
				}
				if sb.Status.Phase != "" {
					t.Errorf("the file's status was kept: %+v", sb.Status)
				}
			},
		},
		{
			name: "file, name and -i", flags: runFlags{filename: "sb.yaml", pool: "default", stdin: true}, changed: []string{"filename"},
			arg: "other", ns: "team", explicit: true,
			check: func(t *testing.T, sb *v1alpha1.Sandbox, command []string) {
				// The file's command is the sandbox's; the session is sh.
				if sb.Name != "other" || sb.Spec.Command[0] != "python" || !reflect.DeepEqual(command, []string{"sh"}) {
					t.Errorf("got %s %q exec %q", sb.Name, sb.Spec.Command, command)
				}
			},
		},
		{name: "file in another namespace than -n", flags: runFlags{filename: "sb.yaml"}, changed: []string{"filename"}, ns: "dev", explicit: true, err: "namespace of -f"},
		{name: "no name", flags: runFlags{image: "busybox"}, changed: []string{"image"}, err: "a sandbox name is required"},
		{name: "no image", arg: "box", err: "--image is required"},
		{name: "bad env", arg: "box", flags: runFlags{image: "i", env: []string{"NOVALUE"}}, changed: []string{"image", "env"}, err: "NAME=VALUE"},
		{name: "bad network", arg: "box", flags: runFlags{image: "i", network: "Host"}, changed: []string{"image", "network"}, err: "None or Egress"},
		{name: "short idle timeout", arg: "box", flags: runFlags{image: "i", idleTimeout: time.Millisecond}, changed: []string{"image", "idle-timeout"}, err: "at least 1s"},
		{name: "bad idle policy", arg: "box", flags: runFlags{image: "i", idlePolicy: "Stop"}, changed: []string{"image", "idle-policy"}, err: "Pause or Delete"},
		{name: "tty without stdin", arg: "box", flags: runFlags{image: "i", tty: true}, changed: []string{"image"}, err: "-t needs -i"},
		{name: "command with -i", arg: "box", flags: runFlags{image: "i", stdin: true, command: true}, changed: []string{"image"}, err: "--command does not go with -i"},
		{name: "command without one", arg: "box", flags: runFlags{image: "i", command: true}, changed: []string{"image"}, err: "--command needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := func(name string) bool {
				for _, c := range tc.changed {
					if c == name {
						return true
					}
				}
				return false
			}
			sb, command, err := buildSandbox(&tc.flags, changed, tc.arg, tc.dash, tc.ns, tc.explicit, read)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, sb, command)
		})
	}
}

func TestBuildSandboxRefusesOtherKinds(t *testing.T) {
	for _, m := range []string{
		"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
		"apiVersion: fast-sandbox.io/v1alpha1\nkind: Sandbox\nmetadata: {name: x}\nspec: {image: i, imagee: typo}\n",
	} {
		_, _, err := buildSandbox(&runFlags{filename: "f", pool: "default"}, func(string) bool { return false }, "", nil, "default", false,
			func(string) ([]byte, error) { return []byte(m), nil })
		if err == nil {
			t.Errorf("%q was taken", m)
		}
	}
}

func TestRun(t *testing.T) {
	h := newHarness(t)
	h.onCreate(v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxRunning})
	if code := h.run("run", "box", "--image", "busybox", "-n", "team", "--idle-timeout", "10m", "--", "sleep", "60"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	if h.out.String() != "sandbox/box created\n" {
		t.Errorf("stdout %q", h.out)
	}
	sb := h.get("team", "box")
	if sb.Spec.Image != "busybox" || sb.Spec.PoolName != "default" || !reflect.DeepEqual(sb.Spec.Args, []string{"sleep", "60"}) ||
		sb.Spec.IdleTimeoutSeconds == nil || *sb.Spec.IdleTimeoutSeconds != 600 {
		t.Errorf("spec %+v", sb.Spec)
	}
}

func TestRunFailsWhenTheSandboxCannotStart(t *testing.T) {
	h := newHarness(t)
	h.onCreate(v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxFailed, Reason: v1alpha1.ReasonImageNotAllowed, Message: "not in allowedImages"})
	if code := h.run("run", "box", "--image", "evil", "--rm", "--", "true"); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(h.err.String(), "ImageNotAllowed") || !strings.Contains(h.err.String(), `sandbox "box" deleted`) {
		t.Errorf("stderr %q", h.err)
	}
}

func TestRunRmPrintsTheLogAndExitsWithTheStatus(t *testing.T) {
	h := newHarness(t)
	h.onCreate(v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxFailed, ExitCode: ptr[int32](3), Reason: v1alpha1.ReasonError})
	h.handlers["GET log"] = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") != "true" {
			t.Errorf("log query %v", r.URL.Query())
		}
		_, _ = io.WriteString(w, "hello\n")
	}
	if code := h.run("run", "box", "--image", "busybox", "--rm", "--", "sh", "-c", "echo hello; exit 3"); code != 3 {
		t.Fatalf("exit %d, want 3: %s", code, h.err)
	}
	if h.out.String() != "hello\n" {
		t.Errorf("stdout %q", h.out)
	}
	if _, err := h.cs.SandboxV1alpha1().Sandboxes("default").Get(context.Background(), "box", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the sandbox was not deleted: %v", err)
	}
}

func TestLogsFlags(t *testing.T) {
	h := newHarness(t)
	var query url.Values
	h.handlers["GET log"] = func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.Query()
		_, _ = io.WriteString(w, "a\nb\n")
	}
	if code := h.run("logs", "box", "-f", "--tail", "5", "--since", "90s", "--timestamps", "--limit-bytes", "10"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	want := url.Values{"follow": {"true"}, "tailLines": {"5"}, "sinceSeconds": {"90"}, "timestamps": {"true"}, "limitBytes": {"10"}}
	if !reflect.DeepEqual(query, want) || h.out.String() != "a\nb\n" {
		t.Errorf("query %v (want %v), stdout %q", query, want, h.out)
	}

	query = nil
	if code := h.run("logs", "box", "--since-time", "2026-01-02T03:04:05Z"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	if want := (url.Values{"sinceTime": {"2026-01-02T03:04:05Z"}}); !reflect.DeepEqual(query, want) {
		t.Errorf("query %v, want %v", query, want)
	}

	for _, args := range [][]string{
		{"logs", "box", "--since", "1s", "--since-time", "2026-01-02T03:04:05Z"},
		{"logs", "box", "--since-time", "yesterday"},
		{"logs", "box", "--tail", "-2"},
		{"logs"},
		{"logs", "box", "--nope"},
	} {
		h.err.Reset()
		if code := h.run(args...); code != 1 || !strings.HasPrefix(h.err.String(), "error: ") {
			t.Errorf("%q: exit %d, stderr %q", args, code, h.err)
		}
	}
}

func TestServerErrorsPrintedAsKubectl(t *testing.T) {
	h := newHarness(t)
	h.handlers["GET log"] = func(w http.ResponseWriter, _ *http.Request) {
		writeStatus(w, apierrors.NewConflict(v1alpha1.Resource("sandboxes"), "box", errors.New("sandbox is paused (spec.paused); resume it first")))
	}
	if code := h.run("logs", "box"); code != 1 {
		t.Fatalf("exit %d", code)
	}
	want := `Error from server (Conflict): Operation cannot be fulfilled on sandboxes.fast-sandbox.io "box": sandbox is paused (spec.paused); resume it first` + "\n"
	if h.err.String() != want {
		t.Errorf("stderr %q, want %q", h.err, want)
	}
}

// TestExecExitStatus runs exec against an SPDY exec endpoint (the
// WebSocket attempt is refused, so the fallback is used): the plugin exits
// with the remote command's status.
func TestExecExitStatus(t *testing.T) {
	h := newHarness(t)
	h.spdyExec()
	h.in.WriteString("input")
	if code := h.run("exec", "-i", "box", "--", "exit", "7"); code != 7 {
		t.Fatalf("exit %d, want 7: %s", code, h.err)
	}
	if h.out.String() != "input" || h.err.String() != "bye\n" {
		t.Errorf("stdout %q, stderr %q", h.out, h.err)
	}
	h.out.Reset()
	h.err.Reset()
	if code := h.run("exec", "box", "--", "exit", "0"); code != 0 || h.err.String() != "bye\n" || h.out.Len() != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, h.out, h.err)
	}
}

// spdyExec serves exec over SPDY as the agent (through the aggregated API)
// does, with exitExecutor; the WebSocket attempt is refused.
func (h *harness) spdyExec() {
	h.handlers["GET exec"] = func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no websocket", http.StatusBadRequest)
	}
	h.handlers["POST exec"] = func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		for from, to := range map[string]string{"stdin": "input", "stdout": "output", "stderr": "error"} {
			if q.Get(from) == "true" {
				q.Del(from)
				q.Set(to, "1")
			}
		}
		r.URL.RawQuery = q.Encode()
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		remotecommand.ServeExec(w, r, exitExecutor{}, "box", "uid", "sandbox", q["command"], opts,
			time.Minute, 10*time.Second, remotecommand.SupportedStreamingProtocols)
	}
}

// exec's errors: what the API server refuses before the stream (RBAC, a
// missing, paused or finished sandbox) is printed as kubectl prints a
// Pod's, over WebSocket or SPDY; a command that cannot be started exits 127
// with the agent's one line; a failure after the upgrade is said once.
func TestExecErrors(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "subresources.fast-sandbox.io", Resource: "sandboxes"}, "box",
		errors.New(`User "x" cannot create resource "sandboxes/exec" in API group "subresources.fast-sandbox.io" in the namespace "default"`))
	notFound := apierrors.NewNotFound(v1alpha1.Resource("sandboxes"), "box")
	conflict := &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: http.StatusConflict,
		Reason: metav1.StatusReasonConflict, Message: "sandbox default/box: sandbox is paused (spec.paused); resume it first"}}
	for _, tc := range []struct {
		name      string
		status    *apierrors.StatusError
		webSocket bool
		want      string
	}{
		{"forbidden", forbidden, true, `Error from server (Forbidden): sandboxes.subresources.fast-sandbox.io "box" is forbidden: ` +
			`User "x" cannot create resource "sandboxes/exec" in API group "subresources.fast-sandbox.io" in the namespace "default"`},
		{"not found over websocket", notFound, true, `Error from server (NotFound): sandboxes.fast-sandbox.io "box" not found`},
		{"not found over spdy", notFound, false, `Error from server (NotFound): sandboxes.fast-sandbox.io "box" not found`},
		{"paused over websocket", conflict, true, "Error from server (Conflict): sandbox default/box: sandbox is paused (spec.paused); resume it first"},
		{"paused over spdy", conflict, false, "Error from server (Conflict): sandbox default/box: sandbox is paused (spec.paused); resume it first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			answer := func(w http.ResponseWriter, _ *http.Request) { writeStatus(w, tc.status) }
			h.handlers["POST exec"] = answer
			h.handlers["GET exec"] = func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no websocket", http.StatusBadRequest) }
			if tc.webSocket {
				h.handlers["GET exec"] = answer
			}
			if code := h.run("exec", "box", "--", "sh"); code != 1 || h.err.String() != tc.want+"\n" || h.out.Len() != 0 {
				t.Errorf("exit %d, stdout %q, stderr %q; want 1 and stderr %q", code, h.out, h.err, tc.want+"\n")
			}
		})
	}

	t.Run("a missing command", func(t *testing.T) {
		h := newHarness(t)
		h.spdyExec()
		if code := h.run("exec", "box", "--", "nosuchcmd"); code != 127 || h.err.String() != notFoundLine+"\n" || h.out.Len() != 0 {
			t.Errorf("exit %d, stdout %q, stderr %q; want 127 and stderr %q", code, h.out, h.err, notFoundLine+"\n")
		}
	})
	t.Run("a failure after the upgrade", func(t *testing.T) {
		h := newHarness(t)
		h.spdyExec()
		want := `error: exec "vanish" in sandbox default/box: sandbox has finished` + "\n"
		if code := h.run("exec", "box", "--", "vanish"); code != 1 || h.err.String() != want {
			t.Errorf("exit %d, stderr %q; want 1 and %q", code, h.err, want)
		}
	})
}

// exitExecutor runs "exit N": it echoes stdin, says bye on stderr and
// exits with N. "nosuchcmd" cannot be started (the agent's line on stderr,
// 127); "vanish" fails as in a sandbox that just finished.
type exitExecutor struct{}

// notFoundLine is the agent's line for nosuchcmd.
const notFoundLine = `exec "nosuchcmd" in sandbox default/box: the command was not found: exec: "nosuchcmd": executable file not found in $PATH`

func (exitExecutor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	switch cmd[0] {
	case "nosuchcmd":
		_, _ = io.WriteString(errOut, notFoundLine+"\n")
		return utilexec.CodeExitError{Err: errors.New(notFoundLine), Code: 127}
	case "vanish":
		return errors.New("sandbox has finished")
	}
	if in != nil {
		if _, err := io.Copy(out, in); err != nil {
			return err
		}
	}
	_, _ = io.WriteString(errOut, "bye\n")
	if len(cmd) == 2 && cmd[0] == "exit" && cmd[1] != "0" {
		return utilexec.CodeExitError{Err: errors.New("exited"), Code: int(cmd[1][0] - '0')}
	}
	return nil
}

func TestLs(t *testing.T) {
	h := newHarness(t)
	old := metav1.NewTime(time.Now().Add(-3 * time.Hour))
	for _, sb := range []*v1alpha1.Sandbox{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "b", CreationTimestamp: old}, Spec: v1alpha1.SandboxSpec{PoolName: "default"}, Status: v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxPaused}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "a", CreationTimestamp: old}, Spec: v1alpha1.SandboxSpec{PoolName: "gpu"}, Status: v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxRunning}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "c", CreationTimestamp: old}, Spec: v1alpha1.SandboxSpec{PoolName: "default"}},
	} {
		h.create(sb)
	}
	if code := h.run("ls"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	want := "NAME   PHASE     POOL      AGE\na      Running   gpu       3h\nb      Paused    default   3h\n"
	if h.out.String() != want {
		t.Errorf("ls:\n%s\nwant:\n%s", h.out, want)
	}
	h.out.Reset()
	if code := h.run("ls", "-A"); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	want = "NAMESPACE   NAME   PHASE     POOL      AGE\ndefault     a      Running   gpu       3h\ndefault     b      Paused    default   3h\nteam        c      <none>    default   3h\n"
	if h.out.String() != want {
		t.Errorf("ls -A:\n%s\nwant:\n%s", h.out, want)
	}
	h.out.Reset()
	if code := h.run("ls", "-n", "empty"); code != 0 || h.out.Len() != 0 || h.err.String() != "No sandboxes found in empty namespace.\n" {
		t.Errorf("ls -n empty: exit %d, stdout %q, stderr %q", code, h.out, h.err)
	}
}

func TestPauseResumeRm(t *testing.T) {
	h := newHarness(t)
	var patches []string
	h.cs.PrependReactor("patch", "sandboxes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		p := a.(clienttesting.PatchAction)
		patches = append(patches, p.GetName()+" "+string(p.GetPatch()))
		return false, nil, nil
	})
	for _, name := range []string{"a", "b"} {
		h.create(&v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}})
	}
	if code := h.run("pause", "a", "b"); code != 0 {
		t.Fatalf("pause: exit %d: %s", code, h.err)
	}
	if !h.get("default", "a").Spec.Paused || !h.get("default", "b").Spec.Paused {
		t.Error("not paused")
	}
	if code := h.run("resume", "b"); code != 0 {
		t.Fatalf("resume: exit %d: %s", code, h.err)
	}
	if h.get("default", "b").Spec.Paused {
		t.Error("b still paused")
	}
	wantPatches := []string{`a {"spec":{"paused":true}}`, `b {"spec":{"paused":true}}`, `b {"spec":{"paused":false}}`}
	if !reflect.DeepEqual(patches, wantPatches) {
		t.Errorf("patches %q, want %q", patches, wantPatches)
	}
	if want := "sandbox/a paused\nsandbox/b paused\nsandbox/b resumed\n"; h.out.String() != want {
		t.Errorf("stdout %q, want %q", h.out, want)
	}

	h.out.Reset()
	// One missing name fails the command, not the others.
	if code := h.run("rm", "a", "missing", "b"); code != 1 {
		t.Fatalf("rm: exit %d", code)
	}
	if want := "sandbox \"a\" deleted\nsandbox \"b\" deleted\n"; h.out.String() != want {
		t.Errorf("stdout %q, want %q", h.out, want)
	}
	if !strings.Contains(h.err.String(), `Error from server (NotFound): sandboxes.fast-sandbox.io "missing" not found`) {
		t.Errorf("stderr %q", h.err)
	}
	list, _ := h.cs.SandboxV1alpha1().Sandboxes("default").List(context.Background(), metav1.ListOptions{})
	if len(list.Items) != 0 {
		t.Errorf("left %d sandboxes", len(list.Items))
	}
}

func ptr[T any](v T) *T { return &v }
