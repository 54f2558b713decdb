package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

const basePath = "/apis/subresources.fast-sandbox.io/v1alpha1/namespaces/team/sandboxes/box/"

// request is what the test server saw of one request.
type request struct {
	method, path, contentType string
	query                     url.Values
	body                      []byte
}

// recorder is an http.Handler that records requests and answers them with
// a handler per "METHOD subresource".
type recorder struct {
	t        *testing.T
	mu       sync.Mutex
	requests []request
	handlers map[string]http.HandlerFunc
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.t.Errorf("reading the body: %v", err)
	}
	r.mu.Lock()
	r.requests = append(r.requests, request{
		method: req.Method, path: req.URL.Path, query: req.URL.Query(),
		contentType: req.Header.Get("Content-Type"), body: body,
	})
	r.mu.Unlock()
	sub := strings.TrimPrefix(req.URL.Path, basePath)
	h, ok := r.handlers[req.Method+" "+sub]
	if !ok || !strings.HasPrefix(req.URL.Path, basePath) {
		writeStatus(w, apierrors.NewNotFound(v1alpha1.Resource("sandboxes"), req.URL.Path))
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	h(w, req)
}

func (r *recorder) last() request {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.requests) == 0 {
		r.t.Fatal("no request")
	}
	return r.requests[len(r.requests)-1]
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.ErrStatus
	st.Kind, st.APIVersion = "Status", "v1"
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}

func newTestClient(t *testing.T, handlers map[string]http.HandlerFunc) (*Client, *recorder) {
	t.Helper()
	rec := &recorder{t: t, handlers: handlers}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	c, err := NewWithClientset(&rest.Config{Host: srv.URL}, fake.NewSimpleClientset())
	if err != nil {
		t.Fatal(err)
	}
	return c, rec
}

func ptr[T any](v T) *T { return &v }

func TestExecURL(t *testing.T) {
	c, err := New(&rest.Config{Host: "https://kube.example:6443"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    ExecOptions
		want url.Values
	}{
		{
			name: "all streams",
			o:    ExecOptions{Command: []string{"sh", "-c", "echo hi"}, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard},
			want: url.Values{"command": {"sh", "-c", "echo hi"}, "stdin": {"true"}, "stdout": {"true"}, "stderr": {"true"}},
		},
		{
			name: "tty has no stderr",
			o:    ExecOptions{Command: []string{"bash"}, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard, TTY: true},
			want: url.Values{"command": {"bash"}, "stdin": {"true"}, "stdout": {"true"}, "tty": {"true"}},
		},
		{
			name: "output only",
			o:    ExecOptions{Command: []string{"true"}, Stdout: io.Discard},
			want: url.Values{"command": {"true"}, "stdout": {"true"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := c.execURL("team", "box", tc.o)
			if u.Scheme != "https" || u.Host != "kube.example:6443" || u.Path != basePath+"exec" {
				t.Errorf("URL %s, want https://kube.example:6443%sexec", u, basePath)
			}
			if got := u.Query(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("query %v, want %v", got, tc.want)
			}
		})
	}
	u := c.attachURL("team", "box", AttachOptions{Stdout: io.Discard, Stderr: io.Discard})
	if u.Path != basePath+"attach" {
		t.Errorf("attach path %s", u.Path)
	}
	if got, want := u.Query(), (url.Values{"stdout": {"true"}, "stderr": {"true"}}); !reflect.DeepEqual(got, want) {
		t.Errorf("attach query %v, want %v", got, want)
	}
}

func TestLogs(t *testing.T) {
	since := metav1.NewTime(time.Date(2026, 5, 4, 3, 2, 1, 0, time.UTC))
	for _, tc := range []struct {
		name string
		o    LogOptions
		want url.Values
	}{
		{name: "whole log", want: url.Values{}},
		{
			name: "follow tail",
			o:    LogOptions{Follow: true, TailLines: ptr[int64](10), SinceSeconds: ptr[int64](30), Timestamps: true, LimitBytes: ptr[int64](4096)},
			want: url.Values{"follow": {"true"}, "tailLines": {"10"}, "sinceSeconds": {"30"}, "timestamps": {"true"}, "limitBytes": {"4096"}},
		},
		{
			name: "since time",
			o:    LogOptions{SinceTime: &since},
			want: url.Values{"sinceTime": {"2026-05-04T03:02:01Z"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, rec := newTestClient(t, map[string]http.HandlerFunc{
				"GET log": func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Content-Type", "text/plain")
					_, _ = io.WriteString(w, "line 1\nline 2\n")
				},
			})
			var out bytes.Buffer
			if err := c.Logs(context.Background(), "team", "box", tc.o, &out); err != nil {
				t.Fatal(err)
			}
			if out.String() != "line 1\nline 2\n" {
				t.Errorf("log %q", out.String())
			}
			req := rec.last()
			if req.method != http.MethodGet || req.path != basePath+"log" {
				t.Errorf("request %s %s", req.method, req.path)
			}
			if !reflect.DeepEqual(req.query, tc.want) {
				t.Errorf("query %v, want %v", req.query, tc.want)
			}
		})
	}
}

// fileServer serves the files subresource from a map, as the agent would.
type fileServer struct {
	mu    sync.Mutex
	files map[string][]byte
	modes map[string]uint32
}

func (fs *fileServer) handlers() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"PUT files": func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			var mode uint32
			if _, err := fmtSscanOctal(q.Get("mode"), &mode); err != nil {
				writeStatus(w, apierrors.NewBadRequest("bad mode "+q.Get("mode")))
				return
			}
			body, _ := io.ReadAll(r.Body)
			fs.mu.Lock()
			fs.files[q.Get("path")] = body
			fs.modes[q.Get("path")] = mode
			fs.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		},
		"GET files": func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			p := q.Get("path")
			fs.mu.Lock()
			defer fs.mu.Unlock()
			mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			switch q.Get("op") {
			case "", "read":
				b, ok := fs.files[p]
				if !ok {
					writeStatus(w, apierrors.NewNotFound(v1alpha1.Resource("sandboxes/files"), p))
					return
				}
				w.Header().Set("Content-Type", "application/octet-stream")
				_, _ = w.Write(b)
			case "stat":
				b, ok := fs.files[p]
				if !ok {
					writeStatus(w, apierrors.NewNotFound(v1alpha1.Resource("sandboxes/files"), p))
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(FileInfo{Name: p[strings.LastIndex(p, "/")+1:], Size: int64(len(b)), Mode: fs.modes[p], ModTime: mtime, Type: FileTypeFile})
			case "list":
				var entries []FileInfo
				for name, b := range fs.files {
					if strings.HasPrefix(name, strings.TrimSuffix(p, "/")+"/") {
						entries = append(entries, FileInfo{Name: name[strings.LastIndex(name, "/")+1:], Size: int64(len(b)), Mode: fs.modes[name], ModTime: mtime, Type: FileTypeFile})
					}
				}
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(entries)
			default:
				writeStatus(w, apierrors.NewBadRequest("bad op"))
			}
		},
	}
}

func fmtSscanOctal(s string, into *uint32) (int, error) {
	if s == "" || s[0] != '0' {
		return 0, errors.New("not octal")
	}
	var v uint32
	for _, ch := range s {
		if ch < '0' || ch > '7' {
			return 0, errors.New("not octal")
		}
		v = v*8 + uint32(ch-'0')
	}
	*into = v
	return 1, nil
}

func TestFilesRoundTrip(t *testing.T) {
	fs := &fileServer{files: map[string][]byte{}, modes: map[string]uint32{}}
	c, rec := newTestClient(t, fs.handlers())
	ctx := context.Background()

	content := bytes.Repeat([]byte("fast-sandbox\x00\xff"), 1000)
	if err := c.WriteFile(ctx, "team", "box", "/work/run.sh", bytes.NewReader(content), 0o755); err != nil {
		t.Fatal(err)
	}
	put := rec.last()
	if put.method != http.MethodPut || put.path != basePath+"files" {
		t.Errorf("write: %s %s", put.method, put.path)
	}
	if want := (url.Values{"path": {"/work/run.sh"}, "mode": {"0755"}}); !reflect.DeepEqual(put.query, want) {
		t.Errorf("write query %v, want %v", put.query, want)
	}
	if put.contentType != "application/octet-stream" || !bytes.Equal(put.body, content) {
		t.Errorf("write body: content type %q, %d bytes", put.contentType, len(put.body))
	}

	var got bytes.Buffer
	if err := c.ReadFile(ctx, "team", "box", "/work/run.sh", &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), content) {
		t.Errorf("read back %d bytes, wrote %d", got.Len(), len(content))
	}
	if want := (url.Values{"path": {"/work/run.sh"}, "op": {"read"}}); !reflect.DeepEqual(rec.last().query, want) {
		t.Errorf("read query %v, want %v", rec.last().query, want)
	}

	fi, err := c.Stat(ctx, "team", "box", "/work/run.sh")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "run.sh" || fi.Size != int64(len(content)) || fi.Mode != 0o755 || fi.Type != FileTypeFile || !fi.ModTime.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("stat %+v", fi)
	}
	if want := (url.Values{"path": {"/work/run.sh"}, "op": {"stat"}}); !reflect.DeepEqual(rec.last().query, want) {
		t.Errorf("stat query %v, want %v", rec.last().query, want)
	}

	entries, err := c.List(ctx, "team", "box", "/work")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name != "run.sh" {
		t.Errorf("list %+v", entries)
	}
	if want := (url.Values{"path": {"/work"}, "op": {"list"}}); !reflect.DeepEqual(rec.last().query, want) {
		t.Errorf("list query %v, want %v", rec.last().query, want)
	}

	// A missing file is the server's NotFound.
	_, err = c.Stat(ctx, "team", "box", "/nope")
	if !apierrors.IsNotFound(err) {
		t.Errorf("stat of a missing file: %v, want NotFound", err)
	}
	err = c.ReadFile(ctx, "team", "box", "/nope", io.Discard)
	if !apierrors.IsNotFound(err) {
		t.Errorf("read of a missing file: %v, want NotFound", err)
	}
}

func TestStatusErrorsSurface(t *testing.T) {
	const msg = `sandbox "box" is paused (spec.paused); resume it first`
	conflict := func(w http.ResponseWriter, _ *http.Request) {
		writeStatus(w, apierrors.NewConflict(v1alpha1.Resource("sandboxes"), "box", errors.New(msg)))
	}
	c, rec := newTestClient(t, map[string]http.HandlerFunc{
		"GET files": conflict, "PUT files": conflict, "GET log": conflict,
		"GET exec": conflict, "POST exec": conflict,
	})
	ctx := context.Background()
	check := func(what string, err error) {
		t.Helper()
		var status *apierrors.StatusError
		if !errors.As(err, &status) || !apierrors.IsConflict(err) {
			t.Errorf("%s: %T %v, want a Conflict *StatusError", what, err, err)
			return
		}
		if !strings.Contains(status.ErrStatus.Message, msg) {
			t.Errorf("%s: message %q, want it to hold %q", what, status.ErrStatus.Message, msg)
		}
	}
	check("read", c.ReadFile(ctx, "team", "box", "/a", io.Discard))
	check("write", c.WriteFile(ctx, "team", "box", "/a", strings.NewReader("x"), 0o644))
	_, err := c.Stat(ctx, "team", "box", "/a")
	check("stat", err)
	_, err = c.List(ctx, "team", "box", "/")
	check("list", err)
	check("logs", c.Logs(ctx, "team", "box", LogOptions{Follow: true}, io.Discard))

	// exec: the WebSocket upgrade is refused with a Conflict about the
	// sandbox; it is returned as is, without a SPDY attempt.
	n := len(rec.requests)
	code, err := c.Exec(ctx, "team", "box", ExecOptions{Command: []string{"true"}, Stdout: io.Discard})
	check("exec", err)
	if code != -1 {
		t.Errorf("exec code %d with an error, want -1", code)
	}
	rec.mu.Lock()
	var methods []string
	for _, r := range rec.requests[n:] {
		methods = append(methods, r.method)
	}
	rec.mu.Unlock()
	if !reflect.DeepEqual(methods, []string{http.MethodGet}) {
		t.Errorf("exec made requests %v, want only the WebSocket GET", methods)
	}
}

func TestExecFallsBackToSPDYWhenWebSocketIsForbidden(t *testing.T) {
	c, rec := newTestClient(t, map[string]http.HandlerFunc{
		"GET exec": func(w http.ResponseWriter, _ *http.Request) {
			writeStatus(w, apierrors.NewForbidden(v1alpha1.Resource("sandboxes/exec"), "box", errors.New("get not allowed")))
		},
		"POST exec": func(w http.ResponseWriter, _ *http.Request) {
			writeStatus(w, apierrors.NewInternalError(errors.New("agent unreachable")))
		},
	})
	_, err := c.Exec(context.Background(), "team", "box", ExecOptions{Command: []string{"true"}, Stdout: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "agent unreachable") {
		t.Errorf("exec: %v, want the SPDY attempt's error", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.requests) != 2 || rec.requests[0].method != http.MethodGet || rec.requests[1].method != http.MethodPost {
		t.Errorf("requests %+v, want GET then POST", rec.requests)
	}
}

// What the API server refuses an exec with before the stream starts comes
// back as the *apierrors.StatusError it answered, whichever protocol was
// refused: WebSocket (client-go keeps the Status) or SPDY (client-go keeps
// only its message). A Forbidden WebSocket upgrade is tried again over SPDY,
// which needs another verb; NotFound and Conflict are final.
func TestExecRefusalsAreStatusErrors(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: SubresourcesGroupVersion.Group, Resource: "sandboxes"}, "box",
		errors.New(`User "x" cannot create resource "sandboxes/exec" in API group "subresources.fast-sandbox.io" in the namespace "team"`))
	notFound := apierrors.NewNotFound(v1alpha1.Resource("sandboxes"), "box")
	conflict := apierrors.NewConflict(v1alpha1.Resource("sandboxes"), "box", errors.New("sandbox team/box: sandbox is paused (spec.paused); resume it first"))
	noWebSocket := func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no websocket here", http.StatusBadRequest)
	}
	for _, tc := range []struct {
		name        string
		status      *apierrors.StatusError
		webSocket   bool // the WebSocket upgrade is answered with the Status, else refused as a plain 400
		wantMethods []string
	}{
		{"forbidden, websocket then spdy", forbidden, true, []string{http.MethodGet, http.MethodPost}},
		{"forbidden, spdy", forbidden, false, []string{http.MethodGet, http.MethodPost}},
		{"not found, websocket", notFound, true, []string{http.MethodGet}},
		{"not found, spdy", notFound, false, []string{http.MethodGet, http.MethodPost}},
		{"conflict, websocket", conflict, true, []string{http.MethodGet}},
		{"conflict, spdy", conflict, false, []string{http.MethodGet, http.MethodPost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer := func(w http.ResponseWriter, _ *http.Request) { writeStatus(w, tc.status) }
			get := noWebSocket
			if tc.webSocket {
				get = answer
			}
			c, rec := newTestClient(t, map[string]http.HandlerFunc{"GET exec": get, "POST exec": answer})
			code, err := c.Exec(context.Background(), "team", "box", ExecOptions{Command: []string{"sh"}, Stdout: io.Discard})
			status, ok := err.(*apierrors.StatusError)
			if !ok || code != -1 {
				t.Fatalf("exec: code %d, %T %v; want -1 and a *apierrors.StatusError", code, err, err)
			}
			want := tc.status.ErrStatus
			if got := status.ErrStatus; got.Code != want.Code || got.Reason != want.Reason || got.Message != want.Message {
				t.Errorf("status %d %s %q, want %d %s %q", got.Code, got.Reason, got.Message, want.Code, want.Reason, want.Message)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			var methods []string
			for _, r := range rec.requests {
				methods = append(methods, r.method)
			}
			if !reflect.DeepEqual(methods, tc.wantMethods) {
				t.Errorf("requests %v, want %v", methods, tc.wantMethods)
			}
		})
	}
}

func TestPauseResume(t *testing.T) {
	sb := &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "box"}}
	cs := fake.NewSimpleClientset()
	var patches []string
	cs.PrependReactor("patch", "sandboxes", func(action clienttesting.Action) (bool, runtime.Object, error) {
		p := action.(clienttesting.PatchAction)
		if p.GetPatchType() != types.MergePatchType {
			t.Errorf("patch type %s, want a merge patch", p.GetPatchType())
		}
		patches = append(patches, p.GetNamespace()+"/"+p.GetName()+" "+string(p.GetPatch()))
		return true, sb.DeepCopy(), nil
	})
	c, err := NewWithClientset(&rest.Config{Host: "https://kube.example"}, cs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pause(context.Background(), "team", "box"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resume(context.Background(), "team", "box"); err != nil {
		t.Fatal(err)
	}
	want := []string{`team/box {"spec":{"paused":true}}`, `team/box {"spec":{"paused":false}}`}
	if !reflect.DeepEqual(patches, want) {
		t.Errorf("patches %q, want %q", patches, want)
	}
}

func TestRunAndDelete(t *testing.T) {
	cs := fake.NewSimpleClientset()
	c, err := NewWithClientset(&rest.Config{Host: "https://kube.example"}, cs)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	created, err := c.Run(ctx, &v1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: "box"},
		Spec:       v1alpha1.SandboxSpec{PoolName: "default", Image: "busybox"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if created.Namespace != metav1.NamespaceDefault {
		t.Errorf("created in %q, want the default namespace", created.Namespace)
	}
	if _, err := c.Get(ctx, "default", "box"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "default", "box"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "default", "box"); !apierrors.IsNotFound(err) {
		t.Errorf("after delete: %v, want NotFound", err)
	}
}

// waitFixture is a fake clientset with one Sandbox and a channel closed once
// a watch on sandboxes was opened.
func waitFixture(t *testing.T, phase v1alpha1.SandboxPhase) (*Client, *fake.Clientset, <-chan struct{}) {
	t.Helper()
	// Created through the clientset: the tracker of NewSimpleClientset
	// would guess the resource "sandboxs" for objects given to it.
	cs := fake.NewSimpleClientset()
	for _, sb := range []*v1alpha1.Sandbox{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "box"}, Status: v1alpha1.SandboxStatus{Phase: phase}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "other"}, Status: v1alpha1.SandboxStatus{Phase: v1alpha1.SandboxRunning}},
	} {
		if _, err := cs.SandboxV1alpha1().Sandboxes("team").Create(context.Background(), sb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	watching := make(chan struct{})
	var once sync.Once
	cs.PrependWatchReactor("sandboxes", func(clienttesting.Action) (bool, watch.Interface, error) {
		once.Do(func() { close(watching) })
		return false, nil, nil
	})
	c, err := NewWithClientset(&rest.Config{Host: "https://kube.example"}, cs)
	if err != nil {
		t.Fatal(err)
	}
	return c, cs, watching
}

func setPhase(t *testing.T, cs *fake.Clientset, phase v1alpha1.SandboxPhase, exitCode *int32) {
	t.Helper()
	sb, err := cs.SandboxV1alpha1().Sandboxes("team").Get(context.Background(), "box", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sb.Status.Phase, sb.Status.ExitCode = phase, exitCode
	if phase == v1alpha1.SandboxFailed {
		sb.Status.Reason = v1alpha1.ReasonImageNotAllowed
	}
	if _, err := cs.SandboxV1alpha1().Sandboxes("team").UpdateStatus(context.Background(), sb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("already there", func(t *testing.T) {
		c, _, _ := waitFixture(t, v1alpha1.SandboxRunning)
		sb, err := c.Wait(ctx, "team", "box", Running)
		if err != nil || sb.Name != "box" {
			t.Fatalf("Wait: %v, %v", sb, err)
		}
	})

	t.Run("running after an update", func(t *testing.T) {
		c, cs, watching := waitFixture(t, v1alpha1.SandboxPending)
		go func() {
			<-watching
			setPhase(t, cs, v1alpha1.SandboxScheduled, nil)
			setPhase(t, cs, v1alpha1.SandboxRunning, nil)
		}()
		sb, err := c.Wait(ctx, "team", "box", Running)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status.Phase != v1alpha1.SandboxRunning {
			t.Errorf("phase %s", sb.Status.Phase)
		}
	})

	t.Run("finished", func(t *testing.T) {
		c, cs, watching := waitFixture(t, v1alpha1.SandboxRunning)
		go func() {
			<-watching
			setPhase(t, cs, v1alpha1.SandboxSucceeded, ptr[int32](0))
		}()
		sb, err := c.Wait(ctx, "team", "box", Finished)
		if err != nil {
			t.Fatal(err)
		}
		if sb.Status.ExitCode == nil || *sb.Status.ExitCode != 0 {
			t.Errorf("exit code %v", sb.Status.ExitCode)
		}
	})

	t.Run("failed before running", func(t *testing.T) {
		c, cs, watching := waitFixture(t, v1alpha1.SandboxPending)
		go func() {
			<-watching
			setPhase(t, cs, v1alpha1.SandboxFailed, nil)
		}()
		_, err := c.Wait(ctx, "team", "box", Running)
		var fe *FinishedError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "ImageNotAllowed") {
			t.Errorf("Wait: %v, want a FinishedError with the reason", err)
		}
	})

	t.Run("deleted", func(t *testing.T) {
		c, cs, watching := waitFixture(t, v1alpha1.SandboxPending)
		go func() {
			<-watching
			if err := cs.SandboxV1alpha1().Sandboxes("team").Delete(ctx, "box", metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		}()
		if _, err := c.Wait(ctx, "team", "box", Running); !apierrors.IsNotFound(err) {
			t.Errorf("Wait: %v, want NotFound", err)
		}
	})

	t.Run("missing", func(t *testing.T) {
		c, _, _ := waitFixture(t, v1alpha1.SandboxPending)
		if _, err := c.Wait(ctx, "team", "nope", Running); !apierrors.IsNotFound(err) {
			t.Errorf("Wait: %v, want NotFound", err)
		}
	})

	t.Run("context ends", func(t *testing.T) {
		c, _, _ := waitFixture(t, v1alpha1.SandboxPending)
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err := c.Wait(short, "team", "box", Running)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last in phase Pending") {
			t.Errorf("Wait: %v, want the deadline and the last phase", err)
		}
	})
}
