package main

import (
	"context"
	"fmt"
	"io"

	dockerterm "github.com/moby/term"
	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubectl/pkg/util/term"

	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

type execFlags struct {
	stdin bool
	tty   bool
}

func newExecCommand(o *options) *cobra.Command {
	f := &execFlags{}
	cmd := &cobra.Command{
		Use:   "exec NAME [-i] [-t] -- COMMAND [ARGS...]",
		Short: "Run a command in a running sandbox",
		Long: `Run a command in a running sandbox, with the sandbox's user, working
directory and environment. The plugin exits with the command's exit status;
a command that cannot be started exits 127 (not found) or 126 (not
executable), as in a shell, and the sandbox says why on stderr.

-i passes the plugin's stdin to the command; -t (with -i) gives it a
terminal: the local one is put in raw mode and its size follows resizes.
A sandbox paused by spec.paused is refused (resume it first); one paused
because it was idle is resumed.`,
		Example: `  kubectl sandbox exec box -- ls -l /
  kubectl sandbox exec -it box -- sh`,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, command, err := commandAfterDash(cmd, args)
			if err != nil {
				return err
			}
			if len(command) == 0 {
				return usage(cmd, "a command is required after --")
			}
			ns, _, err := o.namespace()
			if err != nil {
				return err
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return execInSandbox(cmd.Context(), c, o, ns, name, command, f.stdin, f.tty)
		},
	}
	cmd.Flags().BoolVarP(&f.stdin, "stdin", "i", false, "pass stdin to the command")
	cmd.Flags().BoolVarP(&f.tty, "tty", "t", false, "give the command a terminal (with -i)")
	return cmd
}

// execInSandbox runs command in the sandbox with the plugin's streams and
// returns an *exitError with the command's exit status when it is not 0.
func execInSandbox(ctx context.Context, c *client.Client, o *options, ns, name string, command []string, stdin, tty bool) error {
	s := setupTTY(o, stdin, tty)
	var sizes remotecommand.TerminalSizeQueue
	if s.tty.Raw {
		if q := s.tty.MonitorSize(s.tty.GetSize()); q != nil {
			sizes = sizeQueue{q}
		}
	}
	var code int
	err := s.tty.Safe(func() error {
		var err error
		code, err = c.Exec(ctx, ns, name, client.ExecOptions{
			Command:           command,
			Stdin:             s.in,
			Stdout:            s.out,
			Stderr:            s.errOut,
			TTY:               s.tty.Raw,
			TerminalSizeQueue: sizes,
		})
		return err
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return &exitError{code: code}
	}
	return nil
}

// streams are the streams of one exec and its terminal.
type streams struct {
	tty         term.TTY
	in          io.Reader
	out, errOut io.Writer
}

// setupTTY decides the streams as kubectl exec does: no stdin without -i; a
// terminal only with -i, -t and a terminal on stdin (else a warning), then
// raw and without a separate stderr.
func setupTTY(o *options, stdin, tty bool) streams {
	s := streams{tty: term.TTY{Out: o.streams.Out}, out: o.streams.Out, errOut: o.streams.ErrOut}
	if !stdin {
		return s
	}
	s.in = o.streams.In
	s.tty.In = o.streams.In
	if !tty {
		return s
	}
	if !s.tty.IsTerminalIn() {
		_, _ = fmt.Fprintln(o.streams.ErrOut, "Unable to use a TTY - input is not a terminal or the right kind of file")
		return s
	}
	s.tty.Raw = true
	// The standard streams as the terminal wants them (they differ on
	// Windows).
	in, out, _ := dockerterm.StdStreams()
	s.in, s.tty.In = in, in
	s.out, s.tty.Out = out, out
	s.errOut = nil
	return s
}

// sizeQueue hands kubectl's terminal sizes to client-go.
type sizeQueue struct{ q term.TerminalSizeQueue }

func (s sizeQueue) Next() *remotecommand.TerminalSize {
	size := s.q.Next()
	if size == nil {
		return nil
	}
	return &remotecommand.TerminalSize{Width: size.Width, Height: size.Height}
}
