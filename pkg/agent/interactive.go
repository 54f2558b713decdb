package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	rcmd "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// The interactive routes: exec, attach and log follow (docs/interactive.md;
// files are in files.go).

// streamIdleTimeout closes an exec or attach stream on which nothing moved
// for so long, as kubelet's default --streaming-connection-idle-timeout.
const streamIdleTimeout = 4 * time.Hour

// Query parameters, named as kubelet's.
const (
	paramCommand = "command"
	paramStdin   = "input"
	paramStdout  = "output"
	paramStderr  = "error"
	paramTTY     = "tty"
)

// interactiveRuntime is the runtime's interactive side, or 501.
func (a *Agent) interactiveRuntime() (runtime.Interactive, error) {
	rt, ok := a.rt.(runtime.Interactive)
	if !ok {
		return nil, errNotInteractive
	}
	return rt, nil
}

// boolParam reads a boolean query parameter ("1", "true", "0", "false", …);
// absent is false.
func boolParam(q url.Values, name string) (bool, error) {
	v := q.Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, refuse(http.StatusBadRequest, "parameter %s=%q: want true or false", name, short(v))
	}
	return b, nil
}

// streamOptions reads which streams an exec or attach asks.
func streamOptions(q url.Values) (*rcmd.Options, error) {
	var o rcmd.Options
	for name, p := range map[string]*bool{paramStdin: &o.Stdin, paramStdout: &o.Stdout, paramStderr: &o.Stderr, paramTTY: &o.TTY} {
		v, err := boolParam(q, name)
		if err != nil {
			return nil, err
		}
		*p = v
	}
	if o.TTY {
		o.Stderr = false // a terminal has one output, as kubelet
	}
	if !o.Stdin && !o.Stdout && !o.Stderr {
		return nil, refuse(http.StatusBadRequest, "at least one of %s, %s and %s must be true", paramStdin, paramStdout, paramStderr)
	}
	return &o, nil
}

// serveExec runs a command in a sandbox over the Kubernetes remote command
// protocol (SPDY, or the legacy WebSocket ones).
func (a *Agent) serveExec(w http.ResponseWriter, r *http.Request) error {
	uid := r.PathValue("uid")
	q := r.URL.Query()
	cmd := q[paramCommand]
	if len(cmd) == 0 || cmd[0] == "" {
		return refuse(http.StatusBadRequest, "parameter %s is required", paramCommand)
	}
	return a.serveStream(w, r, uid, func(w http.ResponseWriter, r *http.Request, rt runtime.Interactive, opts *rcmd.Options) {
		e := &executor{rt: rt, uid: uid, sandbox: a.sandboxName(uid), log: a.log, metrics: a.metrics}
		rcmd.ServeExec(w, r, e, uid, uid, "", cmd, opts,
			streamIdleTimeout, rcmd.DefaultStreamCreationTimeout, rcmd.SupportedStreamingProtocols)
	})
}

// serveAttach streams a sandbox's output from now on until it finishes or
// the client leaves. The main process's stdin is not open to anybody (its
// output belongs to the log), so stdin and tty are refused.
func (a *Agent) serveAttach(w http.ResponseWriter, r *http.Request) error {
	uid := r.PathValue("uid")
	q := r.URL.Query()
	for _, p := range []string{paramStdin, paramTTY} {
		if v, err := boolParam(q, p); err != nil || v {
			return refuse(http.StatusBadRequest, "attach takes no %s=true: a sandbox's main process has no stdin or terminal to attach to; use exec", p)
		}
	}
	return a.serveStream(w, r, uid, func(w http.ResponseWriter, r *http.Request, rt runtime.Interactive, opts *rcmd.Options) {
		rcmd.ServeAttach(w, r, &attacher{rt: rt, uid: uid}, uid, uid, "", opts,
			streamIdleTimeout, rcmd.DefaultStreamCreationTimeout, rcmd.SupportedStreamingProtocols)
	})
}

// serveStream is what exec and attach share: their stream options, the
// runtime, an activity session that resumes an idle-paused sandbox (and
// refuses one paused by spec), and a request context that ends when the
// client's connection does, also once it is hijacked.
func (a *Agent) serveStream(w http.ResponseWriter, r *http.Request, uid string,
	serve func(http.ResponseWriter, *http.Request, runtime.Interactive, *rcmd.Options)) error {
	opts, err := streamOptions(r.URL.Query())
	if err != nil {
		return err
	}
	rt, err := a.interactiveRuntime()
	if err != nil {
		return err
	}
	s, err := a.beginSession(uid, sessionThaw)
	if err != nil {
		return err
	}
	defer s.end()
	w, r, cancel := watchConnection(w, r)
	defer cancel()
	serve(w, r, rt, opts)
	return nil
}

// sandboxName is a sandbox's "namespace/name" as its sync (or its runtime,
// once adopted) said, else its UID.
func (a *Agent) sandboxName(uid string) string {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if st, ok := a.sandboxes[uid]; ok && st.Name != "" {
		return st.Namespace + "/" + st.Name
	}
	return uid
}

// executor runs exec's command through the runtime.
type executor struct {
	rt  runtime.Interactive
	uid string
	// sandbox names the sandbox in messages ("namespace/name").
	sandbox string
	log     logr.Logger
	metrics *metrics
}

func (e *executor) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errOut io.WriteCloser,
	tty bool, resize <-chan rcmd.TerminalSize, _ time.Duration) error {
	opts := runtime.ExecOptions{Command: cmd, TTY: tty}
	// Nil streams stay nil interfaces: no stdin, output discarded.
	if in != nil {
		opts.Stdin = in
	}
	if out != nil {
		opts.Stdout = out
	}
	if errOut != nil {
		opts.Stderr = errOut
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	if resize != nil {
		sizes := make(chan runtime.TerminalSize)
		opts.Resize = sizes
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case sz, ok := <-resize:
					if !ok {
						return
					}
					select {
					case sizes <- runtime.TerminalSize{Width: sz.Width, Height: sz.Height}:
					case <-done:
						return
					}
				case <-done:
					return
				}
			}
		}()
	}
	start := time.Now()
	code, err := e.rt.Exec(ctx, e.uid, opts)
	took := time.Since(start)
	close(done)
	wg.Wait()
	var notStarted error
	var ce *runtime.CommandError
	switch {
	case err == nil:
		e.metrics.observeExec(execExited, took)
	case errors.As(err, &ce):
		e.metrics.observeExec(execNotStarted, took)
	default:
		e.metrics.observeExec(execFailed, took)
	}
	if errors.As(err, &ce) && ce.Code > 0 && ctx.Err() == nil {
		// The command could not be started: say so as a shell would, on
		// the command's stderr (its terminal with a TTY), and exit with
		// the shell's code. An error status would reach the client wrapped
		// twice (cri-streaming's Internal error, then the sandbox-apiserver's
		// WebSocket translation's) and without the code; output and exit
		// codes pass both unchanged.
		e.log.V(1).Info("exec could not start its command", "sandbox", e.sandbox, "uid", e.uid, "command", cmd[0], "code", code, "err", err)
		notStarted = fmt.Errorf("exec %q in sandbox %s: %w", cmd[0], e.sandbox, ce)
		switch {
		case errOut != nil:
			_, _ = fmt.Fprintf(errOut, "%v\n", notStarted)
		case tty && out != nil:
			_, _ = fmt.Fprintf(out, "%v\r\n", notStarted) // a raw terminal
		}
	}
	// The process and its output are done: end the output streams before
	// the status is written.
	for _, w := range []io.WriteCloser{out, errOut} {
		if w != nil {
			_ = w.Close()
		}
	}
	if notStarted != nil {
		return utilexec.CodeExitError{Err: notStarted, Code: code}
	}
	if err != nil {
		return execError(err)
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// execError words a runtime error for the remote command's status.
func execError(err error) error {
	switch {
	case errors.Is(err, runtime.ErrFinished):
		return errors.New(msgFinished)
	case errors.Is(err, runtime.ErrPaused):
		return errors.New("sandbox is paused")
	}
	return err
}

// attacher follows the sandbox's output for attach.
type attacher struct {
	rt  runtime.Interactive
	uid string
}

func (t *attacher) AttachContainer(ctx context.Context, _, _, _ string, _ io.Reader, out, errOut io.WriteCloser,
	_ bool, _ <-chan rcmd.TerminalSize) error {
	// The log combines stdout and stderr: it goes to stdout if asked, else
	// to stderr.
	w := io.Writer(io.Discard)
	if out != nil {
		w = out
	} else if errOut != nil {
		w = errOut
	}
	err := t.rt.FollowLogs(ctx, t.uid, runtime.LogOptions{Follow: true, TailLines: 0}, w)
	if err != nil && ctx.Err() != nil {
		return nil // the client left
	}
	if err != nil {
		return execError(err)
	}
	return nil
}

// watchConnection returns w and r such that r's context also ends once the
// connection w hijacks (for an upgrade to SPDY or WebSocket) fails or is
// closed: net/http ends a request's context when its connection fails only
// until the connection is hijacked, and a process whose client has gone
// must not be left running. cancel releases the context.
func watchConnection(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	return &hijackWatcher{ResponseWriter: w, cancel: cancel}, r.WithContext(ctx), cancel
}

// hijackWatcher deliberately has no Unwrap: the upgraders (SPDY, and
// cri-streaming's WebSocket, which unwraps writers) must hijack through it.
type hijackWatcher struct {
	http.ResponseWriter
	cancel context.CancelFunc
}

func (h *hijackWatcher) Flush() {
	if f, ok := h.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (h *hijackWatcher) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	// Every read of the upgraded connection goes through rw's reader (it
	// holds what was buffered already); an error there (EOF included) means
	// the client is gone.
	r := bufio.NewReader(&cancelOnError{r: rw.Reader, cancel: h.cancel})
	return &closeCancels{Conn: conn, cancel: h.cancel}, bufio.NewReadWriter(r, rw.Writer), nil
}

type cancelOnError struct {
	r      io.Reader
	cancel context.CancelFunc
}

func (c *cancelOnError) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil {
		c.cancel()
	}
	return n, err
}

type closeCancels struct {
	net.Conn
	cancel context.CancelFunc
}

func (c *closeCancels) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.cancel()
	}
	return n, err
}

func (c *closeCancels) Close() error {
	c.cancel()
	return c.Conn.Close()
}

// logOptions reads the log parameters; set says whether any was given.
func (a *Agent) logOptions(q url.Values) (opts runtime.LogOptions, set bool, err error) {
	opts.TailLines = -1
	for _, p := range []string{"follow", "tailLines", "sinceSeconds", "sinceTime", "timestamps", "limitBytes"} {
		if q.Has(p) {
			set = true
		}
	}
	if opts.Follow, err = boolParam(q, "follow"); err != nil {
		return opts, set, err
	}
	if opts.Timestamps, err = boolParam(q, "timestamps"); err != nil {
		return opts, set, err
	}
	intParam := func(name string, min int64) (int64, bool, error) {
		v := q.Get(name)
		if v == "" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < min {
			return 0, false, refuse(http.StatusBadRequest, "parameter %s=%q: want an integer of at least %d", name, short(v), min)
		}
		return n, true, nil
	}
	if n, ok, err := intParam("tailLines", 0); err != nil {
		return opts, set, err
	} else if ok {
		opts.TailLines = n
	}
	if opts.LimitBytes, _, err = intParam("limitBytes", 1); err != nil {
		return opts, set, err
	}
	secs, hasSecs, err := intParam("sinceSeconds", 1)
	if err != nil {
		return opts, set, err
	}
	if v := q.Get("sinceTime"); v != "" {
		if hasSecs {
			return opts, set, refuse(http.StatusBadRequest, "at most one of sinceSeconds and sinceTime")
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return opts, set, refuse(http.StatusBadRequest, "parameter sinceTime=%q: want an RFC 3339 time", short(v))
		}
		opts.Since = t
	} else if hasSecs {
		opts.Since = a.clock.Now().Add(-time.Duration(secs) * time.Second)
	}
	return opts, set, nil
}

// serveLogs answers a sandbox's output. Without parameters it answers the
// newest maxLogBytes of it, as it always did; with any it streams what the
// parameters select, and with follow keeps streaming (each write flushed)
// until the sandbox finishes or the client leaves.
func (a *Agent) serveLogs(w http.ResponseWriter, r *http.Request) error {
	uid := r.PathValue("uid")
	opts, set, err := a.logOptions(r.URL.Query())
	if err != nil {
		return err
	}
	if !set {
		logs, err := a.Logs(r.Context(), uid)
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err = w.Write(logs)
		return err
	}
	rt, err := a.interactiveRuntime()
	if err != nil {
		return err
	}
	if opts.Follow {
		s, err := a.beginSession(uid, sessionFollow)
		if err != nil {
			return err
		}
		defer s.end()
	} else if !a.has(uid) {
		return refuse(http.StatusNotFound, "no sandbox %q on this agent", short(uid))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	out := io.Writer(w)
	if opts.Follow {
		// The client learns at once that the stream is open.
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		out = &flushWriter{w: w}
		flush(w)
	}
	err = rt.FollowLogs(r.Context(), uid, opts, out)
	if err != nil && r.Context().Err() != nil {
		return nil // the client left
	}
	if err != nil {
		return runtimeError(err)
	}
	return nil
}

// has says whether the agent has a sandbox (in any state).
func (a *Agent) has(uid string) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	_, ok := a.sandboxes[uid]
	return ok || a.creating[uid] != nil
}

// flushWriter flushes every write, so that a followed log reaches the
// client line by line.
type flushWriter struct {
	w http.ResponseWriter
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	flush(f.w)
	return n, err
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}
