package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/httpstream" //nolint:staticcheck // client-go's spdy.Upgrader still returns this package's Connection
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
	streamhttp "k8s.io/streaming/pkg/httpstream"
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
// only then (it is -1 with an error). A command that cannot be started
// exits as in a shell, 127 when it is not found and 126 when it cannot be
// run, and the sandbox says why on Stderr (on Stdout with TTY), e.g.
// `exec "x" in sandbox NS/NAME: the command was not found: exec: "x":
// executable file not found in $PATH`.
//
// What the API server refuses before the stream starts is returned as the
// *apierrors.StatusError it answered, over WebSocket and SPDY alike: a
// missing sandbox (NotFound), one paused by spec or finished (Conflict), a
// caller without create on sandboxes/exec (Forbidden). A failure after the
// stream started says once what failed, e.g. `exec "sh" in sandbox NS/NAME:
// sandbox has finished`.
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
	}, fmt.Sprintf("exec %q in sandbox %s/%s", o.Command[0], namespace, name))
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
// exits (or ctx ends). Its errors are as Exec's.
func (c *Client) Attach(ctx context.Context, namespace, name string, o AttachOptions) error {
	if o.Stdout == nil && o.Stderr == nil {
		return errors.New("attach: neither stdout nor stderr")
	}
	err := c.stream(ctx, c.attachURL(namespace, name, o), remotecommand.StreamOptions{
		Stdout: o.Stdout,
		Stderr: o.Stderr,
	}, fmt.Sprintf("attach to sandbox %s/%s", namespace, name))
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
// would be told as well. A Status the server answered either upgrade with is
// returned as the *apierrors.StatusError it is, and an exit code as the
// exec.ExitError it is; any other error is said once, after what (e.g.
// `exec "sh" in sandbox NS/NAME`).
func (c *Client) stream(ctx context.Context, u *url.URL, opts remotecommand.StreamOptions, what string) error {
	ex, err := newExecutor(c.config, u)
	if err != nil {
		return err
	}
	err = ex.StreamWithContext(ctx, opts)
	if err == nil {
		return nil
	}
	if status := upgradeStatus(err); status != nil {
		return status
	}
	var status *apierrors.StatusError
	var exitErr exec.ExitError
	if errors.As(err, &status) || errors.As(err, &exitErr) {
		return err
	}
	return sessionError(what, err)
}

func newExecutor(config *rest.Config, u *url.URL) (remotecommand.Executor, error) {
	wrapper, upgrader, err := spdy.RoundTripperFor(config)
	if err != nil {
		return nil, err
	}
	spdyEx, err := remotecommand.NewSPDYExecutorForTransports(wrapper, statusUpgrader{upgrader}, http.MethodPost, u)
	if err != nil {
		return nil, err
	}
	// RFC 6455 (4.1): the opening handshake is a GET.
	ws, err := remotecommand.NewWebSocketExecutor(config, http.MethodGet, u.String())
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdyEx, shouldFallBack)
}

func shouldFallBack(err error) bool {
	if upgradeStatus(err) != nil {
		return false
	}
	return streamhttp.IsUpgradeFailure(err) || streamhttp.IsHTTPSProxyError(err)
}

// upgradeStatus is the Status of a failed WebSocket upgrade that is about
// the sandbox rather than the protocol (NotFound, Conflict), or nil.
func upgradeStatus(err error) *apierrors.StatusError {
	var upgrade *streamhttp.UpgradeFailureError
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

// maxStatusBytes bounds the body of a refused upgrade that is read.
const maxStatusBytes = 64 << 10

// statusUpgrader returns the Status a server refused a SPDY upgrade with as
// the *apierrors.StatusError it is (client-go's upgrader keeps only its
// message: "unable to upgrade connection: ...").
type statusUpgrader struct {
	spdy.Upgrader
}

func (u statusUpgrader) NewConnection(resp *http.Response) (httpstream.Connection, error) {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return u.Upgrader.NewConnection(resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes))
	if err == nil {
		obj, err := runtime.Decode(scheme.Codecs.UniversalDeserializer(), body)
		if err == nil {
			if status, ok := apierrors.FromObject(obj).(*apierrors.StatusError); ok {
				return nil, status
			}
		}
	}
	// Not a Status: client-go's upgrader says what the body says.
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return u.Upgrader.NewConnection(resp)
}

// The wrapping of a failure after the upgrade, outermost first: the
// sandbox-apiserver's WebSocket translation reports what its SPDY client
// was told as an Internal error, which cri-streaming's status already was.
var sessionErrorPrefixes = []string{
	"Internal error occurred: ",
	"error executing command in container: ",
	"error attaching to container: ",
}

// sessionError says err once, after what: the servers' wrapping of the
// agent's own words is removed.
func sessionError(what string, err error) error {
	msg := err.Error()
	trimmed := msg
	for _, p := range sessionErrorPrefixes {
		for strings.HasPrefix(trimmed, p) {
			trimmed = strings.TrimPrefix(trimmed, p)
		}
	}
	if trimmed != msg {
		// The error is the stream's status, a message only.
		return fmt.Errorf("%s: %s", what, trimmed)
	}
	return fmt.Errorf("%s: %w", what, err)
}
