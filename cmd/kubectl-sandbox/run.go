package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

// holdCommand is the command of a sandbox run with -i or -t: it only
// keeps the sandbox alive while the session runs in it through exec.
var holdCommand = []string{"sleep", "infinity"}

// defaultShell is what run -i/-t execs when no command follows --.
var defaultShell = []string{"sh"}

// logGrace is how long run --rm still reads the log once the sandbox
// finished.
const logGrace = 5 * time.Second

type runFlags struct {
	filename     string
	image        string
	pool         string
	command      bool
	env          []string
	workdir      string
	network      string
	idleTimeout  time.Duration
	idlePolicy   string
	rm           bool
	stdin        bool
	tty          bool
	startTimeout time.Duration
}

func newRunCommand(o *options) *cobra.Command {
	f := &runFlags{}
	cmd := &cobra.Command{
		Use:   "run NAME --image IMAGE [--pool POOL] [--rm] [-i] [-t] [-f FILE] [-- COMMAND [ARGS...]]",
		Short: "Create a sandbox and wait until it runs",
		Long: `Create a sandbox and wait until it runs.

Without -i and -t, the arguments after -- are the sandbox's command: its
image's entrypoint gets them as arguments, or, with --command, they replace
the entrypoint. run prints the sandbox's name once it runs. With --rm it
stays: it prints the sandbox's log until the command finishes, deletes the
sandbox and exits with the command's exit status.

With -i or -t, the sandbox is a long-lived one and the arguments after --
(default: sh) run in it through exec, with stdin (-i) and a terminal (-t):
the sandbox's own command is "sleep infinity" (unless -f gives one), since
its main process cannot take input. When the session ends, --rm deletes the
sandbox and run exits with the session's exit status; without --rm the
sandbox keeps running for more exec, cp or logs calls (see --idle-timeout).

-f reads a Sandbox (YAML or JSON; - for stdin); the flags given override
its fields.`,
		Example: `  # Run a command to completion and print its output.
  kubectl sandbox run hello --image busybox --rm -- echo hello

  # An interactive shell in a throw-away sandbox.
  kubectl sandbox run scratch --image python:3.12 --rm -it -- bash

  # A long-lived sandbox that pauses after 10 idle minutes.
  kubectl sandbox run dev --image python:3.12 -it --idle-timeout 10m`,
		RunE: func(cmd *cobra.Command, args []string) error {
			name, dashArgs, err := runArgs(cmd, args)
			if err != nil {
				return err
			}
			ns, explicit, err := o.namespace()
			if err != nil {
				return err
			}
			sb, command, err := buildSandbox(f, cmd.Flags().Changed, name, dashArgs, ns, explicit, readManifest(o.streams.In))
			if err != nil {
				return usage(cmd, "%v", err)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			return runSandbox(cmd.Context(), o, c, f, sb, command)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&f.filename, "filename", "f", "", "a Sandbox manifest (YAML or JSON) to start from; - reads stdin")
	fs.StringVar(&f.image, "image", "", "the container image")
	fs.StringVar(&f.pool, "pool", "default", "the SandboxPool to run in")
	fs.BoolVar(&f.command, "command", false, "the arguments after -- replace the image's entrypoint instead of being its arguments")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "an environment variable, NAME=VALUE (repeatable)")
	fs.StringVarP(&f.workdir, "workdir", "w", "", "the working directory (the image's by default)")
	fs.StringVar(&f.network, "network", "", "the network mode: None (loopback only; the default) or Egress")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 0, "make the sandbox idle after this long without exec, attach, log follow or files calls (whole seconds)")
	fs.StringVar(&f.idlePolicy, "idle-policy", "", "what happens to an idle sandbox: Pause (the default) or Delete")
	fs.BoolVar(&f.rm, "rm", false, "delete the sandbox when its command (or the -i/-t session) ends, and exit with its status")
	fs.BoolVarP(&f.stdin, "stdin", "i", false, "run the command after -- through exec with stdin (see above)")
	fs.BoolVarP(&f.tty, "tty", "t", false, "with -i, give that command a terminal")
	fs.DurationVar(&f.startTimeout, "start-timeout", 5*time.Minute, "how long to wait for the sandbox to run; 0 waits forever")
	return cmd
}

// runArgs splits run's arguments: [NAME] [-- COMMAND ARGS...].
func runArgs(cmd *cobra.Command, args []string) (name string, command []string, err error) {
	dash := cmd.ArgsLenAtDash()
	before := args
	if dash >= 0 {
		before, command = args[:dash], args[dash:]
	}
	switch len(before) {
	case 0:
		return "", command, nil
	case 1:
		return before[0], command, nil
	}
	return "", nil, usage(cmd, "one sandbox name, then the command after --; got %q", before)
}

// readManifest reads -f: a file, or in for "-".
func readManifest(in io.Reader) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if name == "-" {
			return io.ReadAll(in)
		}
		return os.ReadFile(name)
	}
}

// buildSandbox makes the Sandbox to create from -f and the flags (changed
// says which were given), and the command to exec for -i/-t.
func buildSandbox(f *runFlags, changed func(string) bool, name string, dashArgs []string, ns string, nsExplicit bool, read func(string) ([]byte, error)) (*v1alpha1.Sandbox, []string, error) {
	sb := &v1alpha1.Sandbox{}
	if f.filename != "" {
		data, err := read(f.filename)
		if err != nil {
			return nil, nil, err
		}
		if err := yaml.UnmarshalStrict(data, sb); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f.filename, err)
		}
		if sb.Kind != "" && sb.Kind != "Sandbox" {
			return nil, nil, fmt.Errorf("%s: kind %q, want Sandbox", f.filename, sb.Kind)
		}
		if sb.APIVersion != "" && sb.APIVersion != v1alpha1.SchemeGroupVersion.String() {
			return nil, nil, fmt.Errorf("%s: apiVersion %q, want %s", f.filename, sb.APIVersion, v1alpha1.SchemeGroupVersion)
		}
		// What the server owns is not the client's to send.
		sb.Status = v1alpha1.SandboxStatus{}
		sb.ResourceVersion, sb.UID = "", ""
	}
	sb.APIVersion, sb.Kind = v1alpha1.SchemeGroupVersion.String(), "Sandbox"

	if name != "" {
		sb.Name = name
	}
	if sb.Name == "" && sb.GenerateName == "" {
		return nil, nil, errors.New("a sandbox name is required (NAME, or metadata.name in -f)")
	}
	switch {
	case sb.Namespace == "":
		sb.Namespace = ns
	case nsExplicit && sb.Namespace != ns:
		return nil, nil, fmt.Errorf("the namespace of -f (%s) is not the one of --namespace (%s)", sb.Namespace, ns)
	}

	if changed("image") {
		sb.Spec.Image = f.image
	}
	if sb.Spec.Image == "" {
		return nil, nil, errors.New("--image is required")
	}
	if changed("pool") || sb.Spec.PoolName == "" {
		sb.Spec.PoolName = f.pool
	}
	for _, kv := range f.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, nil, fmt.Errorf("--env %q: want NAME=VALUE", kv)
		}
		sb.Spec.Env = setEnv(sb.Spec.Env, k, v)
	}
	if changed("workdir") {
		sb.Spec.WorkingDir = f.workdir
	}
	if changed("network") {
		switch m := v1alpha1.SandboxNetworkMode(f.network); m {
		case v1alpha1.NetworkModeNone, v1alpha1.NetworkModeEgress:
			sb.Spec.NetworkMode = m
		default:
			return nil, nil, fmt.Errorf("--network %q: want None or Egress", f.network)
		}
	}
	if changed("idle-timeout") {
		if f.idleTimeout < time.Second {
			return nil, nil, fmt.Errorf("--idle-timeout %s: at least 1s", f.idleTimeout)
		}
		secs := math.Ceil(f.idleTimeout.Seconds())
		if secs > math.MaxInt32 {
			return nil, nil, fmt.Errorf("--idle-timeout %s: too long", f.idleTimeout)
		}
		t := int32(secs)
		sb.Spec.IdleTimeoutSeconds = &t
	}
	if changed("idle-policy") {
		switch p := v1alpha1.SandboxIdlePolicy(f.idlePolicy); p {
		case v1alpha1.IdlePolicyPause, v1alpha1.IdlePolicyDelete:
			sb.Spec.IdlePolicy = p
		default:
			return nil, nil, fmt.Errorf("--idle-policy %q: want Pause or Delete", f.idlePolicy)
		}
	}

	if f.tty && !f.stdin {
		return nil, nil, errors.New("-t needs -i: the terminal is the session's stdin")
	}
	if f.stdin {
		if f.command {
			return nil, nil, errors.New("--command does not go with -i: the command after -- runs through exec")
		}
		if len(sb.Spec.Command) == 0 && len(sb.Spec.Args) == 0 {
			sb.Spec.Command = append([]string(nil), holdCommand...)
		}
		command := dashArgs
		if len(command) == 0 {
			command = append([]string(nil), defaultShell...)
		}
		return sb, command, nil
	}
	if len(dashArgs) > 0 {
		if f.command {
			sb.Spec.Command, sb.Spec.Args = dashArgs, nil
		} else {
			sb.Spec.Args = dashArgs
		}
	} else if f.command {
		return nil, nil, errors.New("--command needs the command after --")
	}
	return sb, nil, nil
}

// setEnv sets one variable, replacing one of the same name.
func setEnv(env []v1alpha1.EnvVar, name, value string) []v1alpha1.EnvVar {
	for i := range env {
		if env[i].Name == name {
			env[i].Value = value
			return env
		}
	}
	return append(env, v1alpha1.EnvVar{Name: name, Value: value})
}

// runSandbox creates the sandbox and does what the flags ask (see run's help).
func runSandbox(ctx context.Context, o *options, c *client.Client, f *runFlags, sb *v1alpha1.Sandbox, command []string) (err error) {
	created, err := c.Run(ctx, sb)
	if err != nil {
		return err
	}
	ns, name := created.Namespace, created.Name
	if f.rm {
		defer func() {
			// Deleted even when interrupted: a context of its own.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if derr := c.Delete(dctx, ns, name); derr != nil {
				_, _ = fmt.Fprintf(o.streams.ErrOut, "deleting sandbox %q: %v\n", name, derr)
				if err == nil {
					err = derr
				}
				return
			}
			_, _ = fmt.Fprintf(o.streams.ErrOut, "sandbox %q deleted\n", name)
		}()
	}

	// wctx bounds the wait for the start, not what follows.
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if f.startTimeout > 0 {
		wctx, cancel = context.WithTimeout(ctx, f.startTimeout)
	}
	defer cancel()

	if f.stdin {
		if _, err := c.Wait(wctx, ns, name, client.Running); err != nil {
			return err
		}
		err := execInSandbox(ctx, c, o, ns, name, command, f.stdin, f.tty)
		if !f.rm {
			_, _ = fmt.Fprintf(o.streams.ErrOut, "Session ended; sandbox %q keeps running (kubectl sandbox exec -it %s -- sh to go back, kubectl sandbox rm %s to delete it)\n", name, name, name)
		}
		return err
	}

	started, err := c.Wait(wctx, ns, name, startedOrExited)
	if err != nil {
		return err
	}
	if !f.rm {
		_, _ = fmt.Fprintf(o.streams.Out, "sandbox/%s created\n", name)
		return nil
	}
	finished, err := followUntilFinished(ctx, o, c, started)
	if err != nil {
		return err
	}
	return exitStatus(finished)
}

// startedOrExited is true once the sandbox's command ran: it runs (or is
// paused) or exited with a status. A sandbox that failed without a status
// never ran its command: that is the error.
func startedOrExited(sb *v1alpha1.Sandbox) (bool, error) {
	if sb.Status.Phase == v1alpha1.SandboxFailed && sb.Status.ExitCode == nil {
		return false, &client.FinishedError{Sandbox: sb}
	}
	if client.IsFinished(sb) {
		return true, nil
	}
	return client.Running(sb)
}

// followUntilFinished prints the sandbox's log while it runs and returns
// it once finished.
func followUntilFinished(ctx context.Context, o *options, c *client.Client, sb *v1alpha1.Sandbox) (*v1alpha1.Sandbox, error) {
	lctx, stopLogs := context.WithCancel(ctx)
	defer stopLogs()
	logsDone := make(chan error, 1)
	go func() {
		logsDone <- c.Logs(lctx, sb.Namespace, sb.Name, client.LogOptions{Follow: true}, o.streams.Out)
	}()
	finished, err := c.Wait(ctx, sb.Namespace, sb.Name, client.Finished)
	if err != nil {
		return nil, err
	}
	select {
	case lerr := <-logsDone:
		if lerr != nil && !errors.Is(lerr, context.Canceled) {
			_, _ = fmt.Fprintf(o.streams.ErrOut, "reading the log: %v\n", lerr)
		}
	case <-time.After(logGrace):
	}
	return finished, nil
}

// exitStatus is nil for a sandbox whose command exited 0, an *exitError
// with its status for another, the failure for one without a status.
func exitStatus(sb *v1alpha1.Sandbox) error {
	if sb.Status.ExitCode == nil {
		if sb.Status.Phase == v1alpha1.SandboxSucceeded {
			return nil
		}
		return &client.FinishedError{Sandbox: sb}
	}
	if code := int(*sb.Status.ExitCode); code != 0 {
		return &exitError{code: code}
	}
	return nil
}
