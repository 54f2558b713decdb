// Command kubectl-sandbox is the kubectl plugin of fast-sandbox: with it on
// the PATH, `kubectl sandbox run|exec|logs|cp|pause|resume|ls|rm` creates
// Sandboxes and talks to them through the Kubernetes API server (see
// docs/interactive.md), with kubectl's flags for the cluster
// (--kubeconfig, --context, -n, ...).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

func main() {
	os.Exit(run(os.Args[1:], newOptions(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})))
}

// run runs the plugin with its arguments and returns the exit status: the
// remote command's for exec and run, 1 on an error, 130 when interrupted.
func run(args []string, o *options) int {
	// SIGINT or SIGTERM ends what runs (and --rm still deletes); a
	// second one kills the plugin.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()

	cmd := newRootCommand(o)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *exitError
	if errors.As(err, &exit) {
		return exit.code
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return 130
	}
	printError(o.streams.ErrOut, err)
	var usage *usageError
	if errors.As(err, &usage) && usage.cmd != "" {
		_, _ = fmt.Fprintf(o.streams.ErrOut, "See '%s -h' for help and examples.\n", usage.cmd)
	}
	return 1
}

// exitError carries a remote command's exit status to the plugin's own.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("command exited with status %d", e.code) }

// usageError is an error in the command line.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// printError prints an error as kubectl does: what the API server said as
// "Error from server (Reason): message", anything else as "error: ...".
func printError(w io.Writer, err error) {
	// Only the server's own answer, not one wrapped with context.
	if status, ok := err.(*apierrors.StatusError); ok {
		msg := status.ErrStatus.Message
		if msg == "" {
			msg = err.Error()
		}
		if reason := status.ErrStatus.Reason; reason != "" {
			_, _ = fmt.Fprintf(w, "Error from server (%s): %s\n", reason, msg)
		} else {
			_, _ = fmt.Fprintf(w, "Error from server: %s\n", msg)
		}
		return
	}
	_, _ = fmt.Fprintf(w, "error: %v\n", err)
}
