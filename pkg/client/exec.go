package client

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
)

// ExecOptions is a command to run in a sandbox and its streams. A nil
// stream is not opened: without Stdin the command reads EOF, and without
// Stdout or Stderr its output is discarded by the sandbox.
type ExecOptions struct {
	// Command is the program and its arguments; it runs with the
	// sandbox's user, working directory and environment.
	Command []string
	Stdin   io.Reader
	Stdout  io.Writer
	// Stderr is not used with TTY: a terminal has one output.
	Stderr io.Writer
	// TTY gives the command a terminal; Stdin should then be one in raw
	// mode.
	TTY bool
	// TerminalSizeQueue sends the terminal's size, first and at each
	// resize (with TTY).
	TerminalSizeQueue remotecommand.TerminalSizeQueue
}

// AttachOptions are the streams of the sandbox's main process to follow.
// Attach never takes stdin and never a TTY: the main process's stdio
// belongs to its log.
type AttachOptions struct {
	Stdout io.Writer
	Stderr io.Writer
}

// Exec runs a command in a running sandbox and returns its exit code. err is
// nil when the command ran, whatever its exit code; the code is meaningful
// only then (it is -1 with an error). A sandbox paused by spec, a finished
// one or a missing one is refused by the server (a Conflict or NotFound
// *apierrors.StatusError).
//
// It speaks WebSocket (v5.channel.k8s.io) first and falls back to SPDY when
// the WebSocket upgrade fails, as kubectl does.
func (c *Client) Exec(ctx context.Context, namespace, name string, o ExecOptions) (int, error) {
	if len(o.Command) == 0 {
		return -1, errors.New("exec: no command")
	}
	u := c.execURL(namespace, name, o)
	err := c.stream(ctx, u, remotecommand.StreamOptions{
		Stdin:             o.Stdin,
		Stdout:            o.Stdout,
		Stderr:            stderrUnlessTTY(o.Stderr, o.TTY),
		Tty:               o.TTY,
		TerminalSizeQueue: o.TerminalSizeQueue,
	})
	if err == nil {
		return 0, nil
	}
	var exitErr exec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		return exitErr.ExitStatus(), nil
	}
	return -1, err
}

// Attach streams the output of the sandbox's main process from now until it
// exits (or ctx ends).
func (c *Client) Attach(ctx context.Context, namespace, name string, o AttachOptions) error {
	if o.Stdout == nil && o.Stderr == nil {
		return errors.New("attach: neither stdout nor stderr")
	}
	err := c.stream(ctx, c.attachURL(namespace, name, o), remotecommand.StreamOptions{
		Stdout: o.Stdout,
		Stderr: o.Stderr,
	})
	var exitErr exec.ExitError
	if errors.As(err, &exitErr) {
		// The main process's status is the Sandbox's, not this stream's.
		return nil
	}
	return err
}

func stderrUnlessTTY(w io.Writer, tty bool) io.Writer {
	if tty {
		return nil
	}
	return w
}

// execURL is the exec subresource's URL with the options as
// core/v1.PodExecOptions encodes them (command repeated, stdin, stdout,
// stderr, tty).
func (c *Client) execURL(namespace, name string, o ExecOptions) *url.URL {
	return c.subresource(http.MethodPost, namespace, name, "exec").
		SpecificallyVersionedParams(&corev1.PodExecOptions{
			Command: o.Command,
			Stdin:   o.Stdin != nil,
			Stdout:  o.Stdout != nil,
			Stderr:  o.Stderr != nil && !o.TTY,
			TTY:     o.TTY,
		}, scheme.ParameterCodec, corev1.SchemeGroupVersion).
		URL()
}

// attachURL is the attach subresource's URL with stdout and stderr as
// core/v1.PodAttachOptions encodes them.
func (c *Client) attachURL(namespace, name string, o AttachOptions) *url.URL {
	return c.subresource(http.MethodPost, namespace, name, "attach").
		SpecificallyVersionedParams(&corev1.PodAttachOptions{
			Stdout: o.Stdout != nil,
			Stderr: o.Stderr != nil,
		}, scheme.ParameterCodec, corev1.SchemeGroupVersion).
		URL()
}

// stream runs a remote command session on u: WebSocket (GET) first, SPDY
// (POST) when the WebSocket upgrade fails, as kubectl's exec does. A server
// may refuse the WebSocket request alone (RBAC: WebSocket needs get, SPDY
// create), so any upgrade failure falls back, except a NotFound or Conflict
// Status: those are about the sandbox (missing, paused, finished), which SPDY
// would be told as well, and they are returned as the *apierrors.StatusError
// the server sent (SPDY's errors carry only its message).
func (c *Client) stream(ctx context.Context, u *url.URL, opts remotecommand.StreamOptions) error {
	ex, err := newExecutor(c.config, u)
	if err != nil {
		return err
	}
	err = ex.StreamWithContext(ctx, opts)
	if status := upgradeStatus(err); status != nil {
		return status
	}
	return err
}

func newExecutor(config *rest.Config, u *url.URL) (remotecommand.Executor, error) {
	spdy, err := remotecommand.NewSPDYExecutor(config, http.MethodPost, u)
	if err != nil {
		return nil, err
	}
	// RFC 6455 (4.1): the opening handshake is a GET.
	ws, err := remotecommand.NewWebSocketExecutor(config, http.MethodGet, u.String())
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdy, shouldFallBack)
}

func shouldFallBack(err error) bool {
	if upgradeStatus(err) != nil {
		return false
	}
	return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
}

// upgradeStatus is the Status of a failed WebSocket upgrade that is about
// the sandbox rather than the protocol (NotFound, Conflict), or nil.
func upgradeStatus(err error) *apierrors.StatusError {
	var upgrade *httpstream.UpgradeFailureError
	if !errors.As(err, &upgrade) {
		return nil
	}
	var status *apierrors.StatusError
	if !errors.As(upgrade.Cause, &status) {
		return nil
	}
	if apierrors.IsNotFound(status) || apierrors.IsConflict(status) {
		return status
	}
	return nil
}
