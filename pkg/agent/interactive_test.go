package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream/spdy" //nolint:staticcheck // client-go's NewSPDYExecutorForTransports still takes this package's Upgrader
	"k8s.io/client-go/tools/remotecommand"
	clientexec "k8s.io/client-go/util/exec"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
)

// syncAs sends the desired set as the scheduler.
func syncAs(t *testing.T, srv *httptest.Server, rev int64, specs ...api.SandboxSpec) *api.SyncResponse {
	t.Helper()
	resp, err := client.New(srv.URL, timeoutClient).Sync(context.Background(), &api.SyncRequest{Epoch: 1, Revision: rev, Sandboxes: specs})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// routeURL is the URL of route for uid with query q.
func routeURL(srv *httptest.Server, route, uid string, q url.Values) string {
	return srv.URL + strings.Replace(route, "{uid}", uid, 1) + "?" + q.Encode()
}

// stream runs an exec or attach through client-go's SPDY executor, as the
// sandbox-apiserver does it, with id's certificate. The query asks the
// streams opts has, as the sandbox-apiserver's does.
func stream(t *testing.T, srv *httptest.Server, id identity, route, uid string, q url.Values, opts remotecommand.StreamOptions) error {
	t.Helper()
	for p, on := range map[string]bool{paramStdin: opts.Stdin != nil, paramStdout: opts.Stdout != nil, paramStderr: opts.Stderr != nil, paramTTY: opts.Tty} {
		if on {
			q.Set(p, "1")
		} else {
			q.Del(p)
		}
	}
	u, err := url.Parse(routeURL(srv, route, uid, q))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := spdy.NewRoundTripperWithConfig(spdy.RoundTripperConfig{TLS: testPKI.tlsConfig(id)})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutorForTransports(tr, tr, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return ex.StreamWithContext(ctx, opts)
}

func execQuery(cmd ...string) url.Values {
	return url.Values{paramCommand: cmd, paramStdout: {"1"}}
}

// do sends a request as id and returns the status code and body.
func do(t *testing.T, id identity, method, u string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := testPKI.client(id).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

type sizes struct{ q []remotecommand.TerminalSize }

func (s *sizes) Next() *remotecommand.TerminalSize {
	if len(s.q) == 0 {
		time.Sleep(50 * time.Millisecond) // until the stream ends
		return nil
	}
	sz := s.q[0]
	s.q = s.q[1:]
	return &sz
}

// Exec through client-go's SPDY executor with the sandbox-apiserver's
// certificate: stdin, stdout, stderr, exit code and terminal size reach the
// runtime and come back.
func TestExec(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	_, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))

	var out, errOut bytes.Buffer
	q := execQuery("cat")
	q.Set(paramStdin, "true")
	if err := stream(t, srv, identityAPIServer, api.PathExec, "a", q,
		remotecommand.StreamOptions{Stdin: strings.NewReader("hello"), Stdout: &out, Stderr: &errOut}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello" || errOut.Len() != 0 {
		t.Errorf("cat: stdout %q stderr %q", out.String(), errOut.String())
	}
	if o := rt.lastExec(); len(o.Command) != 1 || o.Command[0] != "cat" || o.TTY || o.Stdin == nil {
		t.Errorf("exec options %+v", o)
	}

	out.Reset()
	err := stream(t, srv, identityAPIServer, api.PathExec, "a", execQuery("fail"), remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	var exit clientexec.ExitError
	if !errors.As(err, &exit) || exit.ExitStatus() != 3 {
		t.Errorf("fail: error %v, want exit code 3", err)
	}
	if errOut.String() != "oops" {
		t.Errorf("fail: stderr %q", errOut.String())
	}
	if o := rt.lastExec(); o.Stdin != nil {
		t.Errorf("exec without stdin got one: %+v", o)
	}

	// A terminal: one output, its size from the client.
	out.Reset()
	q = url.Values{paramCommand: {"size"}, paramStdin: {"1"}, paramStdout: {"1"}, paramTTY: {"1"}}
	if err := stream(t, srv, identityAPIServer, api.PathExec, "a", q, remotecommand.StreamOptions{
		Stdin: strings.NewReader(""), Stdout: &out, Tty: true,
		TerminalSizeQueue: &sizes{q: []remotecommand.TerminalSize{{Width: 80, Height: 24}}}}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "80x24" || !rt.lastExec().TTY {
		t.Errorf("tty: stdout %q, options %+v", out.String(), rt.lastExec())
	}

	// The scheduler may exec too; the arguments arrive as given.
	out.Reset()
	if err := stream(t, srv, identityScheduler, api.PathExec, "a", execQuery("echo", "a b", "c"), remotecommand.StreamOptions{Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "a b c" {
		t.Errorf("echo: %q", out.String())
	}

	// Refusals come before the upgrade, with their message.
	if err := stream(t, srv, identityAPIServer, api.PathExec, "nope", execQuery("echo"), remotecommand.StreamOptions{Stdout: io.Discard}); err == nil ||
		!strings.Contains(err.Error(), "no sandbox") {
		t.Errorf("exec in an unknown sandbox: %v", err)
	}
	for name, tc := range map[string]struct {
		q    url.Values
		want string
	}{
		"no command":  {url.Values{paramStdout: {"1"}}, "command is required"},
		"no stream":   {url.Values{paramCommand: {"echo"}}, "at least one of"},
		"bad boolean": {url.Values{paramCommand: {"echo"}, paramStdout: {"yes please"}}, "want true or false"},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			code, body := do(t, identityAPIServer, method, routeURL(srv, api.PathExec, "a", tc.q), nil)
			if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
				t.Errorf("%s %s: %d %s, want 400 containing %q", method, name, code, body, tc.want)
			}
		}
	}
	// Another agent's certificate, though of the same CA, never gets a stream.
	execs := len(rt.execs)
	if err := stream(t, srv, identityOtherAgent, api.PathExec, "a", execQuery("echo"), remotecommand.StreamOptions{Stdout: io.Discard}); err == nil {
		t.Error("another agent's certificate could exec")
	}
	if len(rt.execs) != execs {
		t.Error("a refused exec reached the runtime")
	}
}

// A command that cannot be started exits as in a shell (127 not found, 126
// not executable) with one line on its stderr, or its terminal, naming the
// command and the sandbox in the OCI runtime's words: a remote command's
// exit code and output pass unchanged through the sandbox-apiserver's
// WebSocket translation, where an error would be wrapped twice. A sandbox
// that finished meanwhile stays an error.
func TestExecCommandNotStarted(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	_, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))

	for _, tc := range []struct {
		name, cmd       string
		tty             bool
		code            int
		stdout, stderr  string
		wantErrContains string
	}{
		{name: "not found", cmd: "nosuchcmd", code: 127,
			stderr: `exec "nosuchcmd" in sandbox ns/n-a: the command was not found: exec: "nosuchcmd": executable file not found in $PATH` + "\n"},
		{name: "not executable", cmd: "/etc/passwd", code: 126,
			stderr: `exec "/etc/passwd" in sandbox ns/n-a: the command cannot be run: exec /etc/passwd: permission denied` + "\n"},
		{name: "not found on a terminal", cmd: "nosuchcmd", tty: true, code: 127,
			stdout: `exec "nosuchcmd" in sandbox ns/n-a: the command was not found: exec: "nosuchcmd": executable file not found in $PATH` + "\r\n"},
		{name: "the sandbox finished meanwhile", cmd: "vanish", wantErrContains: "sandbox has finished"},
		{name: "no exit code for the cause", cmd: "unstartable", wantErrContains: "the command could not be started: no command to run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			opts := remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut}
			q := execQuery(tc.cmd)
			if tc.tty {
				opts = remotecommand.StreamOptions{Stdin: strings.NewReader(""), Stdout: &out, Tty: true}
			}
			err := stream(t, srv, identityAPIServer, api.PathExec, "a", q, opts)
			var exit clientexec.ExitError
			if tc.wantErrContains != "" {
				if err == nil || errors.As(err, &exit) || !strings.Contains(err.Error(), tc.wantErrContains) {
					t.Errorf("error %v, want one (not an exit) containing %q", err, tc.wantErrContains)
				}
				return
			}
			if !errors.As(err, &exit) || exit.ExitStatus() != tc.code {
				t.Errorf("error %v, want exit code %d", err, tc.code)
			}
			if out.String() != tc.stdout || errOut.String() != tc.stderr {
				t.Errorf("stdout %q, stderr %q; want %q, %q", out.String(), errOut.String(), tc.stdout, tc.stderr)
			}
		})
	}
}

// TestExecMetrics: each exec is counted once, by outcome.
func TestExecMetrics(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))
	for _, cmd := range []string{"echo", "fail", "nosuchcmd", "vanish"} {
		_ = stream(t, srv, identityAPIServer, api.PathExec, "a", execQuery(cmd), remotecommand.StreamOptions{Stdout: io.Discard, Stderr: io.Discard})
	}
	families, err := a.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, f := range families {
		if f.GetName() != "fast_sandbox_agent_exec_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
		}
	}
	// echo and fail ran (exit codes 0 and 1), nosuchcmd did not start,
	// vanish's sandbox finished.
	if want := map[string]uint64{execExited: 2, execNotStarted: 1, execFailed: 1}; !maps.Equal(got, want) {
		t.Errorf("execs by outcome: %v, want %v", got, want)
	}
}

// A client that leaves ends its command: the hijacked connection's end
// cancels the exec's context.
func TestExecEndsWithItsClient(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))
	stop := startBlocking(t, srv, rt, "a")
	if active(a, "a") != 1 {
		t.Errorf("%d calls in progress, want 1", active(a, "a"))
	}
	stop()
	if !eventually(func() bool { return active(a, "a") == 0 }) {
		t.Fatal("the exec did not end when its client left")
	}
}

// startBlocking runs the "block" command in uid until stop is called, which
// drops the client's connection.
func startBlocking(t *testing.T, srv *httptest.Server, rt *fakeInteractive, uid string) (stop func()) {
	t.Helper()
	u, _ := url.Parse(routeURL(srv, api.PathExec, uid, execQuery("block")))
	tr, err := spdy.NewRoundTripperWithConfig(spdy.RoundTripperConfig{TLS: testPKI.tlsConfig(identityAPIServer)})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := remotecommand.NewSPDYExecutorForTransports(tr, tr, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard}) }()
	select {
	case <-rt.blocking:
	case err := <-done:
		t.Fatalf("the command never started: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the command never started")
	}
	return func() {
		cancel()
		<-done
	}
}

// active is the count of interactive calls in progress on uid.
func active(a *Agent, uid string) int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if c := a.controls[uid]; c != nil {
		return c.active
	}
	return 0
}

// Attach streams the sandbox's output from now on; stdin and tty are refused.
func TestAttach(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	_, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))

	for _, q := range []url.Values{
		{paramStdin: {"1"}, paramStdout: {"1"}},
		{paramTTY: {"true"}, paramStdout: {"1"}},
		{paramStdout: {"0"}},
	} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			code, body := do(t, identityAPIServer, method, routeURL(srv, api.PathAttach, "a", q), nil)
			if code != http.StatusBadRequest {
				t.Errorf("%s attach %v: %d %s, want 400", method, q, code, body)
			}
		}
	}

	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- stream(t, srv, identityAPIServer, api.PathAttach, "a", url.Values{},
			remotecommand.StreamOptions{Stdout: &out, Stderr: io.Discard})
	}()
	rt.logs <- "one"
	rt.logs <- "two"
	close(rt.logs) // the sandbox finished
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\ntwo\n" {
		t.Errorf("attach output %q", out.String())
	}
	if o := rt.lastLogOptions(); !o.Follow || o.TailLines != 0 {
		t.Errorf("attach log options %+v, want follow from now", o)
	}
}

// logs: without parameters the newest output as before; with follow each
// line as it comes; parameters reach the runtime.
func TestLogs(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	_, srv, clk := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))

	if code, body := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", nil), nil); code != 200 || body != "output" {
		t.Errorf("logs: %d %q", code, body)
	}
	q := url.Values{"tailLines": {"5"}, "timestamps": {"true"}, "limitBytes": {"100"}, "sinceSeconds": {"10"}}
	if code, body := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", q), nil); code != 200 || body != "output\n" {
		t.Errorf("logs %v: %d %q", q, code, body)
	}
	if o := rt.lastLogOptions(); o.Follow || o.TailLines != 5 || !o.Timestamps || o.LimitBytes != 100 || !o.Since.Equal(clk.Now().Add(-10*time.Second)) {
		t.Errorf("log options %+v", o)
	}
	since := "2026-01-01T00:00:00.5Z"
	if code, _ := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", url.Values{"sinceTime": {since}}), nil); code != 200 {
		t.Errorf("sinceTime: %d", code)
	}
	if o := rt.lastLogOptions(); o.TailLines != -1 || o.Since.Format(time.RFC3339Nano) != since {
		t.Errorf("log options %+v, want all lines since %s", o, since)
	}
	for _, bad := range []url.Values{
		{"tailLines": {"-1"}}, {"limitBytes": {"0"}}, {"sinceSeconds": {"x"}}, {"sinceTime": {"yesterday"}},
		{"sinceSeconds": {"1"}, "sinceTime": {since}}, {"follow": {"maybe"}},
	} {
		if code, body := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", bad), nil); code != 400 {
			t.Errorf("logs %v: %d %s, want 400", bad, code, body)
		}
	}
	if code, _ := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "nope", url.Values{"follow": {"1"}}), nil); code != 404 {
		t.Errorf("follow of an unknown sandbox: %d, want 404", code)
	}

	// follow: every line is flushed as it comes.
	req, _ := http.NewRequest(http.MethodGet, routeURL(srv, api.PathLogs, "a", url.Values{"follow": {"true"}}), nil)
	resp, err := testPKI.client(identityAPIServer).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("follow: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewReader(resp.Body)
	for _, want := range []string{"output", "one", "two"} {
		if want != "output" {
			rt.logs <- want
		}
		line, err := lines.ReadString('\n')
		if err != nil || line != want+"\n" {
			t.Fatalf("follow: read %q %v, want %q", line, err, want)
		}
	}
	close(rt.logs)
	if rest, err := io.ReadAll(lines); err != nil || len(rest) != 0 {
		t.Errorf("after the sandbox finished: %q %v", rest, err)
	}
}

// files: a round trip through write, read, stat and list; errors map to
// their codes; writes are bounded.
func TestFiles(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))
	files := func(method string, q url.Values, body io.Reader) (int, string) {
		t.Helper()
		return do(t, identityAPIServer, method, routeURL(srv, api.PathFiles, "a", q), body)
	}

	if code, body := files(http.MethodPut, url.Values{"path": {"/etc/app.conf"}}, strings.NewReader("x")); code != 404 {
		t.Errorf("write into a missing directory: %d %s, want 404", code, body)
	}
	if code, body := files(http.MethodGet, url.Values{"path": {"/"}, "op": {"list"}}, nil); code != 200 || body != "[]\n" {
		t.Errorf("list of an empty root: %d %q", code, body)
	}
	if code, body := files(http.MethodPut, url.Values{"path": {"/run.sh"}, "mode": {"0750"}}, strings.NewReader("#!/bin/sh\n")); code != 204 {
		t.Fatalf("write: %d %s", code, body)
	}
	if code, body := files(http.MethodGet, url.Values{"path": {"run.sh"}}, nil); code != 200 || body != "#!/bin/sh\n" {
		t.Errorf("read: %d %q", code, body)
	}
	// ".." stays inside the root.
	if code, body := files(http.MethodGet, url.Values{"path": {"../../../run.sh"}}, nil); code != 200 || body != "#!/bin/sh\n" {
		t.Errorf("read through ..: %d %q", code, body)
	}
	code, body := files(http.MethodGet, url.Values{"path": {"/run.sh"}, "op": {"stat"}}, nil)
	var fi api.FileInfo
	if err := json.Unmarshal([]byte(body), &fi); code != 200 || err != nil {
		t.Fatalf("stat: %d %s %v", code, body, err)
	}
	if fi.Name != "run.sh" || fi.Size != 10 || fi.Mode != 0o750 || fi.Type != api.FileTypeFile {
		t.Errorf("stat: %+v", fi)
	}
	code, body = files(http.MethodGet, url.Values{"path": {"/"}, "op": {"list"}}, nil)
	var list []api.FileInfo
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list) != 1 || list[0].Name != "run.sh" {
		t.Errorf("list: %d %s %v", code, body, err)
	}
	if code, body := files(http.MethodPut, url.Values{"path": {"/run.sh"}}, strings.NewReader("new")); code != 204 {
		t.Errorf("overwrite: %d %s", code, body)
	}
	if code, body := files(http.MethodGet, url.Values{"path": {"/run.sh"}}, nil); body != "new" {
		t.Errorf("read after overwrite: %d %q", code, body)
	}

	for name, tc := range map[string]struct {
		method string
		q      url.Values
		code   int
	}{
		"missing":             {http.MethodGet, url.Values{"path": {"/nope"}}, 404},
		"stat missing":        {http.MethodGet, url.Values{"path": {"/nope"}, "op": {"stat"}}, 404},
		"read a directory":    {http.MethodGet, url.Values{"path": {"/"}}, 409},
		"list a file":         {http.MethodGet, url.Values{"path": {"/run.sh"}, "op": {"list"}}, 409},
		"write a directory":   {http.MethodPut, url.Values{"path": {"/"}}, 409},
		"no path":             {http.MethodGet, url.Values{}, 400},
		"unknown op":          {http.MethodGet, url.Values{"path": {"/"}, "op": {"delete"}}, 400},
		"bad mode":            {http.MethodPut, url.Values{"path": {"/x"}, "mode": {"0999"}}, 400},
		"mode too large":      {http.MethodPut, url.Values{"path": {"/x"}, "mode": {"17777"}}, 400},
		"mode on GET":         {http.MethodGet, url.Values{"path": {"/x"}, "mode": {"0644"}}, 400},
		"NUL in the path":     {http.MethodGet, url.Values{"path": {"/run\x00.sh"}}, 400},
		"unknown sandbox":     {http.MethodGet, url.Values{"path": {"/"}, "op": {"stat"}}, 0},
		"wrong method (POST)": {http.MethodPost, url.Values{"path": {"/x"}}, 405},
	} {
		u := routeURL(srv, api.PathFiles, "a", tc.q)
		want := tc.code
		if name == "unknown sandbox" {
			u, want = routeURL(srv, api.PathFiles, "nope", tc.q), 404
		}
		if code, body := do(t, identityAPIServer, tc.method, u, strings.NewReader("")); code != want {
			t.Errorf("%s: %d %s, want %d", name, code, body, want)
		}
	}

	// More than 64 MiB: refused by its declared length before it is read,
	// and, sent without one, once 64 MiB are read (the handler is called
	// directly: the content need not cross TLS).
	req, _ := http.NewRequest(http.MethodPut, routeURL(srv, api.PathFiles, "a", url.Values{"path": {"/big"}}), strings.NewReader("x"))
	req.ContentLength = api.MaxFileWriteBytes + 1
	resp, err := testPKI.client(identityAPIServer).Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("declared %d bytes: %d, want 413", req.ContentLength, resp.StatusCode)
		}
	} // else the client may fail to send a body shorter than declared after the answer: fine.
	big := httptest.NewRequest(http.MethodPut, api.PathFiles+"?path=/big", io.LimitReader(zeros{}, api.MaxFileWriteBytes+1))
	big.ContentLength = -1
	big.SetPathValue("uid", "a")
	big.URL.Path = strings.Replace(api.PathFiles, "{uid}", "a", 1)
	big.TLS = verifiedAs(t, identityAPIServer)
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, big)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("%d bytes streamed: %d %s, want 413", api.MaxFileWriteBytes+1, rec.Code, rec.Body)
	}
	if code, _ := files(http.MethodGet, url.Values{"path": {"/big"}, "op": {"stat"}}, nil); code != 404 {
		t.Errorf("a refused write left a file: stat %d", code)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// verifiedAs is the TLS state of a connection whose client certificate of
// id was verified, for requests served without a network.
func verifiedAs(t *testing.T, id identity) *tls.ConnectionState {
	t.Helper()
	cfg := testPKI.tlsConfig(id)
	cert, err := cfg.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf, testPKI.ca.Cert}}}
}

// Each identity reaches its routes only; every refusal comes before the
// route is handled.
func TestAuthorizationPerRoute(t *testing.T) {
	rt := newFakeInteractive(t, newFakeRuntime())
	a, srv, _ := startInteractive(t, rt)
	syncAs(t, srv, 1, sbx("a"))
	status := func() *api.Status { return a.Status(context.Background()) }
	before := status()

	syncBody := `{"epoch":9,"revision":9,"sandboxes":[]}`
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, api.PathStatus}, {http.MethodPut, api.PathSync}, {http.MethodPost, api.PathSync},
	} {
		code, body := do(t, identityAPIServer, tc.method, srv.URL+tc.path, strings.NewReader(syncBody))
		if code != http.StatusForbidden || !strings.Contains(body, agentpki.APIServerIdentity) {
			t.Errorf("sandbox-apiserver %s %s: %d %s, want 403 naming it", tc.method, tc.path, code, body)
		}
	}
	if st := status(); st.Epoch != before.Epoch || st.Revision != before.Revision || len(st.Sandboxes) != 1 {
		t.Errorf("a refused sync changed the agent: %+v", st)
	}
	// The interactive routes admit it; the probes answer anyone.
	if code, body := do(t, identityAPIServer, http.MethodGet, routeURL(srv, api.PathLogs, "a", nil), nil); code != 200 {
		t.Errorf("sandbox-apiserver logs: %d %s", code, body)
	}
	for _, p := range []string{api.PathHealthz, api.PathReadyz, api.PathMetrics} {
		if code, _ := do(t, identityAPIServer, http.MethodGet, srv.URL+p, nil); code != 200 {
			t.Errorf("sandbox-apiserver %s: %d", p, code)
		}
	}

	// Without a verified client certificate (a handler served without TLS,
	// by mistake) every route of the API is refused, the probes are not.
	h := a.Handler()
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, api.PathStatus}, {http.MethodPut, api.PathSync}, {http.MethodPost, api.PathSync},
		{http.MethodGet, "/v1/sandboxes/a/logs"}, {http.MethodGet, "/v1/sandboxes/a/logs?follow=1"},
		{http.MethodPost, "/v1/sandboxes/a/exec?command=echo&output=1"}, {http.MethodGet, "/v1/sandboxes/a/exec?command=echo&output=1"},
		{http.MethodPost, "/v1/sandboxes/a/attach?output=1"}, {http.MethodGet, "/v1/sandboxes/a/attach?output=1"},
		{http.MethodGet, "/v1/sandboxes/a/files?path=/"}, {http.MethodPut, "/v1/sandboxes/a/files?path=/x"},
	} {
		for name, cs := range map[string]*tls.ConnectionState{
			"no TLS": nil,
			"unverified": func() *tls.ConnectionState {
				cs := verifiedAs(t, identityScheduler)
				cs.VerifiedChains = nil
				return cs
			}(),
			"another agent": verifiedAs(t, identityOtherAgent),
		} {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(syncBody))
			req.TLS = cs
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusForbidden {
				t.Errorf("%s %s %s: %d %s, want 403", name, tc.method, tc.path, rec.Code, rec.Body)
			}
		}
	}
	for _, p := range []string{api.PathHealthz, api.PathReadyz} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != 200 {
			t.Errorf("%s without TLS: %d", p, rec.Code)
		}
	}
	rt.imu.Lock()
	n := len(rt.execs) + len(rt.logOpts)
	rt.imu.Unlock()
	if n != 0 || active(a, "a") != 0 || status().Epoch != before.Epoch {
		t.Errorf("refused requests were handled: %d runtime calls", n)
	}
	if _, err := client.New(srv.URL, testPKI.client(identityScheduler)).Status(context.Background()); err != nil {
		t.Errorf("the scheduler was refused its status: %v", err)
	}
}

// An agent whose runtime has no interactive side answers 501.
func TestNotInteractive(t *testing.T) {
	_, srv := start(t, newFakeRuntime(), api.Resources{Slots: 1})
	syncAs(t, srv, 1, sbx("a"))
	for _, tc := range []struct{ method, u string }{
		{http.MethodGet, routeURL(srv, api.PathFiles, "a", url.Values{"path": {"/"}})},
		{http.MethodGet, routeURL(srv, api.PathLogs, "a", url.Values{"follow": {"1"}})},
		{http.MethodPost, routeURL(srv, api.PathExec, "a", execQuery("echo"))},
	} {
		if code, body := do(t, identityAPIServer, tc.method, tc.u, nil); code != http.StatusNotImplemented {
			t.Errorf("%s %s: %d %s, want 501", tc.method, tc.u, code, body)
		}
	}
	// The logs as the scheduler always read them still work.
	if code, body := do(t, identityScheduler, http.MethodGet, routeURL(srv, api.PathLogs, "a", nil), nil); code != 200 || body != "output" {
		t.Errorf("logs: %d %q", code, body)
	}
}
