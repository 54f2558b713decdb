// Package runtime defines what the agent needs of a container runtime to run
// sandboxes. The containerd backend lives in runtime/containerd; a VM backend
// (Kata, gVisor, Firecracker through containerd runtime handlers) or a Docker
// backend implements the same interface.
package runtime

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// ErrNotFound is returned for a sandbox the runtime does not have.
var ErrNotFound = errors.New("sandbox not found")

// Info describes a runtime once it is initialized.
type Info struct {
	// Name and version of the runtime, e.g. "containerd 1.6.20".
	Runtime string
	// CgroupParent is the cgroup under which every sandbox is placed.
	CgroupParent string
}

// Runtime runs sandbox containers. Implementations are safe for concurrent
// use; every method is idempotent for one sandbox UID, and the runtime's own
// records (e.g. container labels) are the source of truth, so a restarted
// agent finds every sandbox again with ListSandboxes.
type Runtime interface {
	// Initialize connects to the runtime and prepares it; it is called once
	// before anything else.
	Initialize(ctx context.Context) (Info, error)
	// CreateSandbox creates and starts the sandbox's container and returns its
	// status: Running, or Failed with a reason (e.g. ImageNotPresent). A
	// sandbox that already exists is not created again; its status is returned.
	CreateSandbox(ctx context.Context, spec api.SandboxSpec) api.SandboxStatus
	// StopSandbox kills the sandbox's process if it runs and keeps its
	// container and logs; its exit is reported as any other. Stopping a
	// sandbox that does not run, or does not exist, succeeds.
	StopSandbox(ctx context.Context, uid string) error
	// DeleteSandbox kills the sandbox's process and removes its container,
	// snapshot and logs. Deleting a sandbox that does not exist succeeds.
	DeleteSandbox(ctx context.Context, uid string) error
	// ListSandboxes returns every sandbox the runtime has, with its state.
	ListSandboxes(ctx context.Context) ([]api.SandboxStatus, error)
	// ListImages returns the images available to sandboxes.
	ListImages(ctx context.Context) ([]api.Image, error)
	// Logs returns the sandbox's combined stdout and stderr so far.
	Logs(ctx context.Context, uid string) (io.ReadCloser, error)
	// Exits delivers the final status of each sandbox whose process ended.
	Exits() <-chan api.SandboxStatus
	// Close releases the runtime's connections; sandboxes keep running.
	Close() error
}

// WarmLister is a runtime that keeps warm containers (created ahead of time
// so that sandboxes start in them without a container creation).
type WarmLister interface {
	// WarmContainers counts the warm containers waiting for a sandbox.
	WarmContainers() []api.WarmImage
}

// Errors of the interactive operations.
var (
	// ErrPaused is returned by Exec and Root for a sandbox that is paused.
	ErrPaused = errors.New("sandbox is paused")
	// ErrFinished is returned by Exec, Root, Pause and Resume for a sandbox
	// whose process has ended.
	ErrFinished = errors.New("sandbox has finished")
)

// ExecServerCounter is a runtime whose execs may go through exec servers
// in the sandboxes (package containerd's execserver.go).
type ExecServerCounter interface {
	// ExecServers counts the exec servers running.
	ExecServers() int
}

// Exit codes of a command that Exec could not start, as a shell's.
const (
	ExitCommandNotFound      = 127
	ExitCommandNotExecutable = 126
)

// CommandError is Exec's error for a command that could not be started;
// Exec returns its Code as the exit code.
type CommandError struct {
	// Code is ExitCommandNotFound, ExitCommandNotExecutable, or -1 for
	// another cause.
	Code int
	// Cause is what the OCI runtime or the sandbox's exec server said, in
	// its words (e.g. `exec: "x": executable file not found in $PATH`).
	Cause string
}

func (e *CommandError) Error() string { return e.Problem() + ": " + e.Cause }

// Problem says what kept the command from starting, by its code.
func (e *CommandError) Problem() string {
	switch e.Code {
	case ExitCommandNotFound:
		return "the command was not found"
	case ExitCommandNotExecutable:
		return "the command cannot be run"
	}
	return "the command could not be started"
}

// Interactive is a runtime whose running sandboxes can be talked to: a
// process run in them, frozen and thawed, their files reached and their
// output followed (see docs/interactive.md).
type Interactive interface {
	// Exec runs a process in the sandbox with the sandbox's user, working
	// directory, environment, cgroup, namespaces, seccomp profile and
	// capabilities, and returns its exit code once it has exited and its
	// output is copied. Cancelling ctx kills the process.
	Exec(ctx context.Context, uid string, opts ExecOptions) (exitCode int, err error)
	// Pause freezes every process of the sandbox (cgroup freezer); pausing
	// a paused sandbox succeeds.
	Pause(ctx context.Context, uid string) error
	// Resume thaws a paused sandbox; resuming a running one succeeds.
	Resume(ctx context.Context, uid string) error
	// Root opens the root directory of the sandbox's filesystem as its
	// processes see it (O_PATH), for pkg/agent/sandboxfs; the caller
	// closes it. It also returns the host ids the sandbox's user maps to.
	Root(ctx context.Context, uid string) (root *os.File, owner Owner, err error)
	// FollowLogs writes the sandbox's output to w as LogOptions say and,
	// with Follow, keeps writing what it prints until ctx ends or the
	// sandbox finishes.
	FollowLogs(ctx context.Context, uid string, opts LogOptions, w io.Writer) error
}

// Owner is the host uid and gid that new files of a sandbox get: its
// user's, shifted when it runs in a user namespace.
type Owner struct {
	UID, GID int
}

// ExecOptions are a process run in a sandbox and its streams.
type ExecOptions struct {
	// Command is the program and its arguments; it must not be empty.
	Command []string
	// Stdin, when not nil, is copied to the process; its EOF closes the
	// process's stdin.
	Stdin io.Reader
	// Stdout and Stderr receive the process's output; nil discards it.
	// With TTY, Stdout receives both and Stderr is unused.
	Stdout, Stderr io.Writer
	// TTY runs the process on a terminal.
	TTY bool
	// Resize delivers terminal size changes (TTY only); may be nil.
	Resize <-chan TerminalSize
}

// TerminalSize is a terminal's width and height in characters.
type TerminalSize struct {
	Width, Height uint16
}

// LogOptions select what FollowLogs writes, as a Pod's log options do.
type LogOptions struct {
	// Follow keeps streaming new output.
	Follow bool
	// TailLines, if not negative, starts that many lines from the end.
	TailLines int64
	// Since, if not zero, skips lines written before it.
	Since time.Time
	// Timestamps prefixes each line with its RFC 3339 (nano) time.
	Timestamps bool
	// LimitBytes, if positive, stops after that many bytes.
	LimitBytes int64
}
