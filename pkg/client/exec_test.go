package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/client-go/rest"
	clientremotecommand "k8s.io/client-go/tools/remotecommand"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream/wsstream"
	utilexec "k8s.io/utils/exec"

	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned/fake"
)

// fakeExecutor runs a few made-up commands:
//
//	cat        copies stdin to stdout
//	fail N     writes "oops" to stderr and exits with N
//	tty        writes whether it has a TTY and the first terminal size
//	nosuchcmd  cannot be started, as the agent says it: a line on stderr, 127
//	vanish     fails as the agent's exec in a sandbox that just finished
type fakeExecutor struct{}

// notFound is the agent's line for nosuchcmd.
const notFound = `exec "nosuchcmd" in sandbox team/box: the command was not found: exec: "nosuchcmd": executable file not found in $PATH`

func (fakeExecutor) ExecInContainer(_ context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	switch cmd[0] {
	case "cat":
		_, err := io.Copy(out, in)
		return err
	case "fail":
		code, _ := strconv.Atoi(cmd[1])
		_, _ = io.WriteString(errOut, "oops")
		return utilexec.CodeExitError{Err: errors.New("failed"), Code: code}
	case "tty":
		size := <-resize
		_, err := fmt.Fprintf(out, "tty=%t %dx%d", tty, size.Width, size.Height)
		return err
	case "nosuchcmd":
		_, _ = io.WriteString(errOut, notFound+"\n")
		return utilexec.CodeExitError{Err: errors.New(notFound), Code: 127}
	case "vanish":
		return errors.New("sandbox has finished")
	}
	return fmt.Errorf("unknown command %q", cmd[0])
}

// execServer serves exec as the aggregated API would: SPDY (POST) straight
// from cri-streaming, WebSocket (GET) through the apiserver's stream
// translator to that same SPDY endpoint, unless noWebSocket.
type execServer struct {
	noWebSocket bool
	srv         *httptest.Server

	mu      sync.Mutex
	methods []string
}

func (s *execServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sub := strings.TrimPrefix(r.URL.Path, basePath)
	if strings.HasPrefix(r.URL.Path, "/agent/") {
		s.serveSPDY(w, r, strings.TrimPrefix(r.URL.Path, "/agent/"))
		return
	}
	if sub != "exec" && sub != "attach" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.methods = append(s.methods, r.Method)
	s.mu.Unlock()
	if r.Method == http.MethodPost {
		s.serveSPDY(w, r, sub)
		return
	}
	if s.noWebSocket || !wsstream.IsWebSocketRequest(r) {
		http.Error(w, "no websocket here", http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	location, _ := url.Parse(s.srv.URL + "/agent/" + sub + "?" + r.URL.RawQuery)
	proxy.NewStreamTranslatorHandler(location, nil, 0, proxy.Options{
		Stdin: q.Get("stdin") == "true", Stdout: q.Get("stdout") == "true",
		Stderr: q.Get("stderr") == "true", Tty: q.Get("tty") == "true",
	}).ServeHTTP(w, r)
}

func (s *execServer) serveSPDY(w http.ResponseWriter, r *http.Request, sub string) {
	// The agent's parameters are kubelet's (input=1); the aggregated
	// API's are PodExecOptions' (stdin=true).
	q := r.URL.Query()
	for from, to := range map[string]string{"stdin": "input", "stdout": "output", "stderr": "error", "tty": "tty"} {
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
	if sub == "attach" {
		remotecommand.ServeAttach(w, r, fakeExecutor{}, "box", "uid", "sandbox", opts,
			time.Minute, 10*time.Second, remotecommand.SupportedStreamingProtocols)
		return
	}
	remotecommand.ServeExec(w, r, fakeExecutor{}, "box", "uid", "sandbox", r.URL.Query()["command"], opts,
		time.Minute, 10*time.Second, remotecommand.SupportedStreamingProtocols)
}

// AttachContainer writes a line to each output, as a main process would.
func (fakeExecutor) AttachContainer(_ context.Context, _, _, _ string, in io.Reader, out, errOut io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize) error {
	if in != nil || tty {
		return errors.New("attach with stdin or a TTY")
	}
	_, _ = io.WriteString(out, "main out\n")
	_, _ = io.WriteString(errOut, "main err\n")
	return nil
}

// sizes is a TerminalSizeQueue with one size.
type sizes struct{ once sync.Once }

func (s *sizes) Next() *clientremotecommand.TerminalSize {
	var size *clientremotecommand.TerminalSize
	s.once.Do(func() { size = &clientremotecommand.TerminalSize{Width: 80, Height: 24} })
	return size
}

func TestExecStreams(t *testing.T) {
	for _, tc := range []struct {
		name        string
		noWebSocket bool
		wantMethods string
	}{
		{name: "websocket", wantMethods: "GET"},
		{name: "spdy fallback", noWebSocket: true, wantMethods: "GET POST"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es := &execServer{noWebSocket: tc.noWebSocket}
			es.srv = httptest.NewServer(es)
			defer es.srv.Close()
			c, err := NewWithClientset(&rest.Config{Host: es.srv.URL}, fake.NewSimpleClientset())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			var stdout, stderr bytes.Buffer
			code, err := c.Exec(ctx, "team", "box", ExecOptions{
				Command: []string{"cat"}, Stdin: strings.NewReader("hello sandbox"), Stdout: &stdout, Stderr: &stderr,
			})
			if err != nil || code != 0 || stdout.String() != "hello sandbox" {
				t.Errorf("cat: code %d, err %v, stdout %q", code, err, stdout.String())
			}

			stdout.Reset()
			code, err = c.Exec(ctx, "team", "box", ExecOptions{Command: []string{"fail", "3"}, Stdout: &stdout, Stderr: &stderr})
			if err != nil || code != 3 || stderr.String() != "oops" {
				t.Errorf("fail 3: code %d, err %v, stderr %q", code, err, stderr.String())
			}

			stdout.Reset()
			code, err = c.Exec(ctx, "team", "box", ExecOptions{
				Command: []string{"tty"}, Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr,
				TTY: true, TerminalSizeQueue: &sizes{},
			})
			if err != nil || code != 0 || stdout.String() != "tty=true 80x24" {
				t.Errorf("tty: code %d, err %v, stdout %q", code, err, stdout.String())
			}

			// A command that cannot start: its code and the agent's line
			// pass unchanged.
			stdout.Reset()
			stderr.Reset()
			code, err = c.Exec(ctx, "team", "box", ExecOptions{Command: []string{"nosuchcmd"}, Stdout: &stdout, Stderr: &stderr})
			if err != nil || code != 127 || stderr.String() != notFound+"\n" {
				t.Errorf("nosuchcmd: code %d, err %v, stderr %q", code, err, stderr.String())
			}

			// A failure after the upgrade is said once (WebSocket: not
			// wrapped twice as an Internal error).
			code, err = c.Exec(ctx, "team", "box", ExecOptions{Command: []string{"vanish"}, Stdout: &stdout})
			if want := `exec "vanish" in sandbox team/box: sandbox has finished`; err == nil || err.Error() != want || code != -1 {
				t.Errorf("vanish: code %d, err %v, want -1 and %q", code, err, want)
			}

			stdout.Reset()
			stderr.Reset()
			if err := c.Attach(ctx, "team", "box", AttachOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
				t.Errorf("attach: %v", err)
			}
			if stdout.String() != "main out\n" || stderr.String() != "main err\n" {
				t.Errorf("attach: stdout %q, stderr %q", stdout.String(), stderr.String())
			}

			es.mu.Lock()
			defer es.mu.Unlock()
			want := strings.Repeat(tc.wantMethods+" ", 6)
			if got := strings.Join(es.methods, " ") + " "; got != want {
				t.Errorf("methods %q, want %q", got, want)
			}
		})
	}
}
