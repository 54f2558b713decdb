package containerd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxinit"
)

// Interactive sandboxes (runtime.Interactive; docs/interactive.md).
//
// Exec runs a process in a sandbox's container with containerd's task.Exec
// (runc exec): it joins the container's namespaces, cgroup (it counts
// against the sandbox's pids and memory limits), seccomp profile and
// AppArmor profile, and runs as the sandbox's process does. That process
// is the container's spec's for a container created for its sandbox; a
// warm container's spec is its init's (root, with CAP_SYS_ADMIN to set the
// hostname), so the claim records the sandbox's process on the container
// (processExtension: the init's start message, in the same update as the
// claim's labels), and an exec takes the user, environment and working
// directory from there, and the init's capabilities less CAP_SYS_ADMIN,
// which the init dropped before it ran the command. Supplementary groups
// are the spec's (none: the init clears them, runc sets the spec's). The
// exec's streams go through FIFOs in the agent's state directory (the
// default, /run/containerd/fifo, is read-only in an agent Pod), which the
// shim opens on the host at the same path.
//
// Pause and Resume freeze and thaw the container's cgroup (runc pause and
// resume); a paused sandbox is alive: it is reported StatePaused, watched
// for its exit, measured for its storage, adopted by a restarted agent as
// Paused, and killed (stopped, deleted) like a running one: a kill of a
// paused task thaws it afterwards, so that the kill lands.
//
// Root opens the container's root as its processes see it (their mount
// namespace: <HostProc>/<pid>/root), after checking that the pid is still
// the task's process (it is in the container's cgroup), through a handle on
// the process's /proc directory, so that a pid reused meanwhile is never
// taken for the sandbox's.
//
// FollowLogs reads the sandbox's log (package sandboxlog) and, following
// it, ends once the task has exited and the logger had the time to write
// what was left in its pipes.

// processExtension is the container extension that records, on a warm
// container given to a sandbox, the process its init started: a
// sandboxinit.Start, as JSON.
const processExtension = "fast-sandbox.io/process"

// processTypeURL is the type of processExtension's value.
const processTypeURL = "fast-sandbox.io/sandboxinit.Start"

// claimWarm gives warm container id to a sandbox: its labels and its
// process, in one update.
func (r *Runtime) claimWarm(ctx context.Context, id string, labels map[string]string, start sandboxinit.Start) error {
	data, err := json.Marshal(start)
	if err != nil {
		return err
	}
	paths := []string{"extensions." + processExtension}
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	_, err = r.client.ContainerService().Update(ctx, containers.Container{
		ID:         id,
		Labels:     labels,
		Extensions: map[string]typeurl.Any{processExtension: &anypb.Any{TypeUrl: processTypeURL, Value: data}},
	}, paths...)
	return err
}

// warmDroppedCaps are the capabilities a warm container's init holds and
// drops before it runs the sandbox's command (warmSpecOpts).
var warmDroppedCaps = []string{"CAP_SYS_ADMIN"}

// sandboxProcess is the process a sandbox's command runs as (see above),
// read from the container's metadata as loaded.
func (r *Runtime) sandboxProcess(ctx context.Context, c client.Container) (*specs.Process, map[string]string, error) {
	info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil {
		return nil, nil, fmt.Errorf("reading container %s: %w", c.ID(), err)
	}
	if info.Spec == nil {
		return nil, nil, fmt.Errorf("container %s has no spec", c.ID())
	}
	var spec specs.Spec
	if err := json.Unmarshal(info.Spec.GetValue(), &spec); err != nil {
		return nil, nil, fmt.Errorf("reading the spec of container %s: %w", c.ID(), err)
	}
	if spec.Process == nil {
		return nil, nil, fmt.Errorf("the spec of container %s has no process", c.ID())
	}
	p := spec.Process
	if info.Labels[LabelWarm] != "true" {
		return p, info.Labels, nil
	}
	ext, ok := info.Extensions[processExtension]
	if !ok {
		return nil, nil, fmt.Errorf("container %s does not record its sandbox's process (it was given its sandbox by an older agent)", c.ID())
	}
	var s sandboxinit.Start
	if err := json.Unmarshal(ext.GetValue(), &s); err != nil {
		return nil, nil, fmt.Errorf("reading the process of container %s: %w", c.ID(), err)
	}
	p.Args, p.Env, p.Cwd = s.Args, s.Env, s.Cwd
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	p.User = specs.User{UID: s.UID, GID: s.GID}
	if caps := p.Capabilities; caps != nil {
		drop := func(set []string) []string {
			return slices.DeleteFunc(set, func(c string) bool { return slices.Contains(warmDroppedCaps, c) })
		}
		caps.Bounding, caps.Effective, caps.Permitted = drop(caps.Bounding), drop(caps.Effective), drop(caps.Permitted)
		caps.Inheritable, caps.Ambient = drop(caps.Inheritable), drop(caps.Ambient)
	}
	return p, info.Labels, nil
}

// sandboxTask finds a sandbox's container and its task, which must have
// started: ErrNotFound without a container, ErrFinished when its process
// ended (or it has no task).
func (r *Runtime) sandboxTask(ctx context.Context, uid string) (client.Container, client.Task, client.ProcessStatus, error) {
	c, err := r.findContainer(ctx, uid)
	if errdefs.IsNotFound(err) {
		return nil, nil, "", fmt.Errorf("sandbox %s: %w", uid, runtime.ErrNotFound)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("finding the container of sandbox %s: %w", uid, err)
	}
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil, nil, "", fmt.Errorf("sandbox %s: %w", uid, runtime.ErrFinished)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("loading the task of sandbox %s: %w", uid, err)
	}
	st, err := r.taskStatus(ctx, uid, task)
	if err != nil {
		return nil, nil, "", err
	}
	return c, task, st, nil
}

// taskStatus is a sandbox's task's status, which must be alive, created
// (not started yet) or paused.
func (r *Runtime) taskStatus(ctx context.Context, uid string, task client.Task) (client.ProcessStatus, error) {
	st, err := task.Status(ctx)
	if errdefs.IsNotFound(err) {
		return "", fmt.Errorf("sandbox %s: %w", uid, runtime.ErrFinished)
	}
	if err != nil {
		return "", fmt.Errorf("reading the task status of sandbox %s: %w", uid, err)
	}
	switch st.Status {
	case client.Running, client.Paused, client.Pausing:
		return st.Status, nil
	case client.Created:
		return "", fmt.Errorf("sandbox %s has not started yet", uid)
	default: // Stopped, or Unknown: its shim is gone
		return "", fmt.Errorf("sandbox %s: %w", uid, runtime.ErrFinished)
	}
}

// setState records that a live sandbox is now running or paused.
func (r *Runtime) setState(uid string, state api.SandboxState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.known[uid]; ok && alive(st.State) {
		st.State = state
		r.known[uid] = st
	}
}

// alive says whether a sandbox in state has its process: running or paused.
func alive(state api.SandboxState) bool {
	return state == api.StateRunning || state == api.StatePaused
}

// knownID is the container ID of a sandbox this runtime knows alive.
func (r *Runtime) knownID(uid string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.known[uid]
	return st.ContainerID, ok && alive(st.State) && st.ContainerID != ""
}

// Pause freezes the sandbox's processes; a paused sandbox stays paused.
// A sandbox the runtime knows alive takes one call (the freeze); the
// others, and a failed call, are looked at to say why.
func (r *Runtime) Pause(ctx context.Context, uid string) error {
	ctx = r.nsCtx(ctx)
	if id, ok := r.knownID(uid); ok {
		if _, err := r.client.TaskService().Pause(ctx, &tasks.PauseTaskRequest{ContainerID: id}); err == nil {
			r.setState(uid, api.StatePaused)
			return nil
		}
	}
	_, task, st, err := r.sandboxTask(ctx, uid)
	if err != nil {
		return err
	}
	if st == client.Running {
		if err := task.Pause(ctx); err != nil {
			// Paused meanwhile (by another call), or ended.
			if st, serr := r.taskStatus(ctx, uid, task); serr != nil {
				return serr
			} else if st == client.Running {
				return fmt.Errorf("pausing sandbox %s: %w", uid, err)
			}
		}
	}
	r.setState(uid, api.StatePaused)
	return nil
}

// Resume thaws a paused sandbox; a running sandbox runs on (as Pause).
func (r *Runtime) Resume(ctx context.Context, uid string) error {
	ctx = r.nsCtx(ctx)
	if id, ok := r.knownID(uid); ok {
		if _, err := r.client.TaskService().Resume(ctx, &tasks.ResumeTaskRequest{ContainerID: id}); err == nil {
			r.setState(uid, api.StateRunning)
			return nil
		}
	}
	_, task, st, err := r.sandboxTask(ctx, uid)
	if err != nil {
		return err
	}
	if st != client.Running {
		if err := task.Resume(ctx); err != nil {
			if st, serr := r.taskStatus(ctx, uid, task); serr != nil {
				return serr
			} else if st != client.Running {
				return fmt.Errorf("resuming sandbox %s: %w", uid, err)
			}
		}
	}
	r.setState(uid, api.StateRunning)
	return nil
}

// thawKilled thaws a task just killed if it is paused: its processes die
// only once thawed (runc's kill of all the processes thaws them itself,
// crun's does not).
func thawKilled(ctx context.Context, task client.Task) {
	if st, err := task.Status(ctx); err == nil && (st.Status == client.Paused || st.Status == client.Pausing) {
		_ = task.Resume(ctx)
	}
}

// Exec timing.
const (
	// execDrainTimeout bounds the wait for an exec's output once it exited:
	// what it wrote is in its pipes already; a process it left behind may
	// keep them open.
	execDrainTimeout = 2 * time.Second
	// execKillTimeout bounds the wait for the exit of a killed exec.
	execKillTimeout = 10 * time.Second
)

// Exit codes of an exec whose command could not be started, as a shell's.
const (
	ExitCommandNotFound      = runtime.ExitCommandNotFound
	ExitCommandNotExecutable = runtime.ExitCommandNotExecutable
)

// Exec runs opts.Command in the sandbox (see above) and returns its exit
// code. A command that cannot be started is an error saying why (runc's
// words: `exec: "x": executable file not found in $PATH`, `stat /x: no
// such file or directory`, `permission denied`), with exit code
// ExitCommandNotFound or ExitCommandNotExecutable when that is the cause,
// -1 otherwise. Cancelling ctx kills the process (the process alone:
// processes it started stay, as with kubelet's exec) and returns ctx's
// error. Exec returns once the process exited and its output was copied
// (for at most execDrainTimeout after the exit); the process is then
// removed from containerd. Stdin is read in the background: a read still
// blocked when Exec returns ends when Stdin does.
func (r *Runtime) Exec(ctx context.Context, uid string, opts runtime.ExecOptions) (int, error) {
	if len(opts.Command) == 0 || opts.Command[0] == "" {
		return -1, errors.New("exec: no command")
	}
	// A running sandbox with an exec server takes no call to containerd.
	if id, ok := r.knownRunningID(uid); ok {
		if conn, release, ok := r.liveExecServer(id); ok {
			if code, sent, err := r.execVia(ctx, uid, id, conn, release, opts); sent {
				return code, err
			}
		}
	}
	ctx = r.nsCtx(ctx)
	c, task, st, err := r.sandboxTask(ctx, uid)
	if err != nil {
		return -1, err
	}
	if st != client.Running {
		return -1, fmt.Errorf("sandbox %s: %w", uid, runtime.ErrPaused)
	}
	proc, labels, err := r.sandboxProcess(ctx, c)
	if err != nil {
		return -1, err
	}
	if r.cfg.ExecServerIdleTimeout >= 0 && r.initPath != "" && roomForExecServer(labels) {
		conn, release, err := r.execServer(c, task, proc)
		if err == nil {
			if code, sent, err := r.execVia(ctx, uid, c.ID(), conn, release, opts); sent {
				return code, err
			}
		} else {
			r.log.V(1).Info("exec through the OCI runtime: no exec server", "sandbox", uid, "err", err)
		}
	}
	proc.Args, proc.CommandLine, proc.Terminal, proc.ConsoleSize = opts.Command, "", opts.TTY, nil
	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	if opts.TTY {
		stderr = nil // one stream: the terminal
		if !slices.ContainsFunc(proc.Env, func(e string) bool { return strings.HasPrefix(e, "TERM=") }) {
			proc.Env = append(proc.Env, "TERM=xterm")
		}
		// A size already given is the terminal's from the start.
		select {
		case size, ok := <-opts.Resize:
			if ok && size.Width > 0 && size.Height > 0 {
				proc.ConsoleSize = &specs.Box{Width: uint(size.Width), Height: uint(size.Height)}
			}
		default:
		}
	}
	var stdin io.Reader
	stdinEOF := make(chan struct{})
	if opts.Stdin != nil {
		stdin = &eofReader{r: opts.Stdin, eof: stdinEOF}
	}
	streams := []cio.Opt{cio.WithStreams(stdin, stdout, stderr), cio.WithFIFODir(r.fifoDir())}
	if opts.TTY {
		streams = append(streams, cio.WithTerminal)
	}
	// The calls that make, start and wait on the process outlive ctx: a
	// process is never left made or started behind a cancelled call; a
	// cancelled exec is killed, then waited for.
	wctx, cancel := context.WithCancel(r.nsCtx(r.ctx))
	defer cancel()
	p, err := task.Exec(wctx, newExecID(), proc, cio.NewCreator(streams...))
	if err != nil {
		return -1, r.execFailed(ctx, uid, task, "creating the process", err)
	}
	exited := false
	defer func() { r.deleteExec(p, exited) }()
	exitCh, err := p.Wait(wctx)
	if err != nil {
		return -1, fmt.Errorf("waiting on the exec process: %w", err)
	}
	if err := p.Start(wctx); err != nil {
		return startFailedCode(err), r.execFailed(ctx, uid, task, fmt.Sprintf("starting %q", opts.Command[0]), err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // ends the goroutines below
	if opts.TTY && opts.Resize != nil {
		wg.Go(func() {
			forwardResizes(wctx, opts.Resize, func(size runtime.TerminalSize) {
				if err := p.Resize(wctx, uint32(size.Width), uint32(size.Height)); err != nil && wctx.Err() == nil {
					r.log.V(1).Info("resizing an exec's terminal", "sandbox", uid, "err", err)
				}
			})
		})
	}
	if opts.Stdin != nil {
		wg.Go(func() {
			select {
			case <-wctx.Done():
			case <-stdinEOF:
				// The shim holds the stdin FIFO open too: only it can close
				// the process's stdin.
				if err := p.CloseIO(wctx, client.WithStdinCloser); err != nil && wctx.Err() == nil && !errdefs.IsNotFound(err) {
					r.log.V(1).Info("closing an exec's stdin", "sandbox", uid, "err", err)
				}
			}
		})
	}
	var es client.ExitStatus
	select {
	case es = <-exitCh:
	case <-ctx.Done():
		if err := p.Kill(wctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
			r.log.V(1).Info("killing a cancelled exec", "sandbox", uid, "err", err)
		}
		select {
		case es := <-exitCh:
			exited = es.Error() == nil
		case <-time.After(execKillTimeout):
		}
		return -1, ctx.Err()
	}
	code, _, err := es.Result()
	if err != nil {
		return -1, fmt.Errorf("waiting for the exec process: %w", err)
	}
	exited = true
	drained := make(chan struct{})
	go func() { p.IO().Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(execDrainTimeout):
	case <-ctx.Done():
	}
	return int(code), nil
}

// knownRunningID is the container ID of a sandbox this runtime knows
// running.
func (r *Runtime) knownRunningID(uid string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.known[uid]
	return st.ContainerID, ok && st.State == api.StateRunning && st.ContainerID != ""
}

// explainExecError explains an exec whose exec server went away: the
// sandbox was paused or ended meanwhile; other errors are as they are.
func (r *Runtime) explainExecError(ctx context.Context, uid string, err error) error {
	if err == nil || !errors.Is(err, errServerGone) || ctx.Err() != nil {
		return err
	}
	ctx = r.nsCtx(context.WithoutCancel(ctx))
	_, _, st, serr := r.sandboxTask(ctx, uid)
	switch {
	case serr != nil && (errors.Is(serr, runtime.ErrFinished) || errors.Is(serr, runtime.ErrNotFound)):
		return serr
	case serr == nil && st != client.Running:
		return fmt.Errorf("sandbox %s: %w", uid, runtime.ErrPaused)
	}
	return fmt.Errorf("exec in sandbox %s: %w", uid, err)
}

// forwardResizes applies each terminal size that sizes delivers until it
// closes or ctx ends.
func forwardResizes(ctx context.Context, sizes <-chan runtime.TerminalSize, apply func(runtime.TerminalSize)) {
	for {
		select {
		case <-ctx.Done():
			return
		case size, ok := <-sizes:
			if !ok {
				return
			}
			apply(size)
		}
	}
}

// eofReader closes eof once r reaches its end.
type eofReader struct {
	r    io.Reader
	eof  chan struct{}
	once sync.Once
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		e.once.Do(func() { close(e.eof) })
	}
	return n, err
}

// fifoDir is where exec processes' FIFOs are made.
func (r *Runtime) fifoDir() string {
	return filepath.Join(podStateDir(r.cfg.StateDir, r.cfg.PodUID), "fifo")
}

// newExecID is a unique exec ID (containerd: at most 76 of [A-Za-z0-9_.-]).
func newExecID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}

// deleteExec removes an exec process from containerd, killing it first if
// it may run (a start that failed on the caller's side may have started
// it), and closes its streams, removing its FIFOs.
func (r *Runtime) deleteExec(p client.Process, exited bool) {
	ctx, cancel := context.WithTimeout(r.nsCtx(context.Background()), execKillTimeout)
	defer cancel()
	if !exited {
		wctx, wcancel := context.WithCancel(ctx)
		exitCh, err := p.Wait(wctx)
		// A process that never started cannot be killed (nor waited for).
		if err == nil && p.Kill(ctx, syscall.SIGKILL) == nil {
			select {
			case <-exitCh:
			case <-ctx.Done():
			}
		}
		wcancel()
	}
	if _, err := p.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		r.log.Error(err, "deleting an exec process", "exec", p.ID())
		// Delete closes the streams only when it succeeds.
		if pio := p.IO(); pio != nil {
			pio.Cancel()
			_ = pio.Close()
		}
	}
}

// execFailed explains an exec that containerd refused: the sandbox was
// paused or ended meanwhile, or the command could not be started (a
// runtime.CommandError in the OCI runtime's words).
func (r *Runtime) execFailed(ctx context.Context, uid string, task client.Task, what string, err error) error {
	st, serr := r.taskStatus(context.WithoutCancel(ctx), uid, task)
	switch {
	case serr != nil && (errors.Is(serr, runtime.ErrFinished) || errors.Is(serr, runtime.ErrNotFound)):
		return serr
	case serr == nil && st != client.Running:
		return fmt.Errorf("sandbox %s: %w", uid, runtime.ErrPaused)
	}
	if code := startFailedCode(err); code > 0 {
		return fmt.Errorf("%s in sandbox %s: %w", what, uid, &runtime.CommandError{Code: code, Cause: ociCause(err)})
	}
	return fmt.Errorf("%s in sandbox %s: %w", what, uid, err)
}

// Where the OCI runtime's own words start in containerd's error for a
// process its shim could not start (runc's, then any runtime's), and the
// gRPC code containerd appends to them.
var (
	ociMarkers   = []string{"unable to start container process: ", "OCI runtime exec failed: "}
	grpcCodeTail = ": unknown"
)

// ociCause is the OCI runtime's words in containerd's error err.
func ociCause(err error) string {
	cause := err.Error()
	for _, m := range ociMarkers {
		if i := strings.LastIndex(cause, m); i >= 0 {
			return strings.TrimSuffix(cause[i+len(m):], grpcCodeTail)
		}
	}
	return cause
}

// startFailedCode is the exit code a shell gives a command that failed to
// start as err says (runc's and crun's words), -1 for another failure.
func startFailedCode(err error) int {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"),
		strings.Contains(msg, "No such file or directory"):
		return ExitCommandNotFound
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "Permission denied"):
		return ExitCommandNotExecutable
	}
	return -1
}

// Root opens the root of the sandbox's filesystem as its processes see it
// (O_PATH; the caller closes it) and returns the host ids of its user. A
// paused sandbox's opens too (refusing it is the caller's call).
func (r *Runtime) Root(ctx context.Context, uid string) (*os.File, runtime.Owner, error) {
	ctx = r.nsCtx(ctx)
	c, task, _, err := r.sandboxTask(ctx, uid)
	if err != nil {
		return nil, runtime.Owner{}, err
	}
	proc, labels, err := r.sandboxProcess(ctx, c)
	if err != nil {
		return nil, runtime.Owner{}, err
	}
	owner := runtime.Owner{UID: int(proc.User.UID), GID: int(proc.User.GID)}
	if v := labels[LabelUserNS]; v != "" {
		host, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, runtime.Owner{}, fmt.Errorf("container %s: label %s %q: %w", c.ID(), LabelUserNS, v, err)
		}
		owner.UID += int(host)
		owner.GID += int(host)
	}
	root, err := r.openRoot(c.ID(), task.Pid())
	if err != nil {
		return nil, runtime.Owner{}, fmt.Errorf("sandbox %s: %w", uid, err)
	}
	return root, owner, nil
}

// openRoot opens /proc/<pid>/root of container id's process pid, once the
// pid is known to be that process: in the container's cgroup, checked
// through the process's /proc directory, which goes with the process (a
// pid reused later has another).
func (r *Runtime) openRoot(id string, pid uint32) (*os.File, error) {
	dir := filepath.Join(r.hostProc, strconv.FormatUint(uint64(pid), 10))
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gone(fmt.Errorf("opening %s: %w", dir, err))
	}
	defer func() { _ = unix.Close(dfd) }()
	cg, err := readAt(dfd, "cgroup")
	if err != nil {
		return nil, gone(fmt.Errorf("reading %s/cgroup: %w", dir, err))
	}
	if !inCgroup(cg, r.cgroupLeaf(id)) {
		return nil, fmt.Errorf("process %d is no longer the container's: %w", pid, runtime.ErrFinished)
	}
	fd, err := unix.Openat(dfd, "root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gone(fmt.Errorf("opening %s/root: %w", dir, err))
	}
	return os.NewFile(uintptr(fd), dir+"/root"), nil
}

// gone is err, also ErrFinished when it says the process is gone.
func gone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%w: %w", runtime.ErrFinished, err)
	}
	return err
}

// readAt reads the file name of directory dfd.
func readAt(dfd int, name string) ([]byte, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer func() { _ = f.Close() }()
	return io.ReadAll(f)
}

// cgroupLeaf is the last element of a container's cgroup path (cgroupPath):
// the container ID, or the systemd scope runc makes.
func (r *Runtime) cgroupLeaf(id string) string {
	if r.systemd {
		return "fsbx-" + strings.TrimPrefix(id, idPrefix) + ".scope"
	}
	return id
}

// inCgroup says whether a /proc/<pid>/cgroup file puts the process in a
// cgroup whose path ends with leaf (the paths are relative to the reader's
// cgroup namespace, so only their end is compared).
func inCgroup(procCgroup []byte, leaf string) bool {
	for _, line := range bytes.Split(procCgroup, []byte("\n")) {
		parts := bytes.SplitN(line, []byte(":"), 3)
		if len(parts) == 3 && filepath.Base(string(parts[2])) == leaf {
			return true
		}
	}
	return false
}

// FollowLogs writes the sandbox's output (see sandboxlog.Copy); followed,
// until ctx ends or the sandbox's process has ended and everything it
// wrote was read.
func (r *Runtime) FollowLogs(ctx context.Context, uid string, opts runtime.LogOptions, w io.Writer) error {
	ctx = r.nsCtx(ctx)
	c, err := r.findContainer(ctx, uid)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("logs of sandbox %s: %w", uid, runtime.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("finding the container of sandbox %s: %w", uid, err)
	}
	lopts := sandboxlog.Options{Follow: opts.Follow, TailLines: opts.TailLines, Since: opts.Since,
		Timestamps: opts.Timestamps, LimitBytes: opts.LimitBytes}
	if opts.Follow {
		ended := make(chan time.Time, 1)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go r.watchEnd(wctx, c, ended)
		lopts.Ended = ended
	}
	err = sandboxlog.Copy(ctx, r.logPath(c.ID()), lopts, w)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("logs of sandbox %s: %w", uid, runtime.ErrNotFound)
	}
	return err
}

// watchEnd delivers on ended the time a container's task exited (now when
// it has none), unless ctx ends first. A broken wait (containerd
// restarted) is no exit: it waits again.
func (r *Runtime) watchEnd(ctx context.Context, c client.Container, ended chan<- time.Time) {
	for delay := reattachMin; ctx.Err() == nil; delay = min(2*delay, reattachMax) {
		if at, ok := r.taskEnd(ctx, c); ok {
			ended <- at
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
}

// taskEnd waits for the exit of a container's task; ok is false when the
// wait broke or ctx ended.
func (r *Runtime) taskEnd(ctx context.Context, c client.Container) (time.Time, bool) {
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return time.Now(), true
	}
	if err != nil {
		return time.Time{}, false
	}
	st, err := task.Status(ctx)
	switch {
	case errdefs.IsNotFound(err):
		return time.Now(), true
	case err != nil:
		return time.Time{}, false
	case st.Status == client.Stopped:
		return st.ExitTime, true
	case st.Status == client.Unknown:
		return time.Now(), true
	}
	ch, err := task.Wait(ctx)
	if err != nil {
		return time.Time{}, false
	}
	select {
	case es := <-ch:
		if es.Error() != nil {
			return time.Time{}, false
		}
		return es.ExitTime(), true
	case <-ctx.Done():
		return time.Time{}, false
	}
}

var _ runtime.Interactive = &Runtime{}
