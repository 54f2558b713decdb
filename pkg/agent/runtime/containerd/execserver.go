package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxinit"
)

// Exec servers (package sandboxinit's execserver.go).
//
// An exec through the OCI runtime (runc exec) compiles and loads the
// container's seccomp filter in a new runc init inside the sandbox's CPU
// quota: about 15 ms of CPU, so that a sandbox of 100m is throttled for the
// rest of a CFS period (100 ms) at each exec. A sandbox whose container has
// the init and its directory mounted (withInitMounts: a warm container, or
// a cold one when warm containers are enabled, which prepare the
// directories) therefore gets, at its first exec, an exec server: the init run with runc exec as
// the sandbox's process, once; each exec is then a fork and execve of the
// server's, which the command inherits everything from (user, groups,
// working directory, environment, capabilities, seccomp filter, AppArmor
// profile, rlimits, namespaces, cgroup). The server's containerd process is
// execServerID: one per container, so that one left by a previous agent is
// found and removed.
//
// The server stays while it is used, and ExecServerIdleTimeout after its
// last exec ended (a paused sandbox's until it runs again: frozen, it could
// not exit); its threads (4, whatever the commands running) count
// against the sandbox's pids limit and its memory against its memory
// limit. A sandbox without one (a container made without the mounts, one
// whose pids limit is below execServerMinPids, or one whose server failed
// to start in the last execServerRetry) is exec'd into through the OCI
// runtime, as is everything with ExecServerIdleTimeout < 0. The server runs in the sandbox, so the
// agent trusts nothing it says (sandboxinit's execclient.go); code in the
// sandbox can lie about, or fail, execs into that sandbox and nothing else.

// execServerID is the containerd exec ID of a container's exec server.
const execServerID = "fast-sandbox-exec-server"

// Exec server timing.
const (
	// DefaultExecServerIdleTimeout is Config.ExecServerIdleTimeout's
	// default.
	DefaultExecServerIdleTimeout = 5 * time.Minute
	// execServerStartTimeout bounds the start of a server, its connection
	// included.
	execServerStartTimeout = 5 * time.Second
	// execServerRetry is how long after a failed start execs go through the
	// OCI runtime before a server is tried again.
	execServerRetry = 30 * time.Second
	// execStartTimeout bounds a server's answer to an exec.
	execStartTimeout = 5 * time.Second
	// execServerStopTimeout bounds the removal of a server's process.
	execServerStopTimeout = 10 * time.Second
)

// execServerMinPids is the smallest pids limit of a sandbox given an exec
// server: its threads (4) would take too much of a smaller one.
const execServerMinPids = 32

// roomForExecServer says whether the pids limit of a sandbox (its
// container's labels) leaves room for an exec server.
func roomForExecServer(labels map[string]string) bool {
	limit, err := strconv.ParseInt(labels[LabelPids], 10, 64)
	return err != nil || limit <= 0 || limit >= execServerMinPids
}

// execServers are the exec servers of a runtime's containers.
type execServers struct {
	mu    sync.Mutex
	slots map[string]*execSlot // by container ID
	// live counts the slots with a server (conn set), read without their
	// locks: a slot's is held while its server starts or stops (seconds).
	live atomic.Int64
}

// execSlot is one container's exec server: its mutex orders the server's
// start, use and removal.
type execSlot struct {
	mu     sync.Mutex
	conn   *sandboxinit.ExecConn // nil without a server
	active int                   // execs in progress
	idle   *time.Timer           // removes the server, once idle
	failed time.Time             // of the last failed start
}

// execSlot is container id's slot, made if need be.
func (r *Runtime) execSlot(id string) *execSlot {
	s := &r.execServers
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots == nil {
		s.slots = map[string]*execSlot{}
	}
	sl, ok := s.slots[id]
	if !ok {
		sl = &execSlot{}
		s.slots[id] = sl
	}
	return sl
}

// liveExecServer returns container id's exec server if it has one
// running, marked in use until release is called.
func (r *Runtime) liveExecServer(id string) (conn *sandboxinit.ExecConn, release func(), ok bool) {
	if r.cfg.ExecServerIdleTimeout < 0 {
		return nil, nil, false
	}
	r.execServers.mu.Lock()
	sl := r.execServers.slots[id]
	r.execServers.mu.Unlock()
	if sl == nil {
		return nil, nil, false
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.conn == nil || isDone(sl.conn) {
		return nil, nil, false
	}
	return sl.conn, r.use(id, sl), true
}

// execServer returns the exec server of container c, starting one as proc
// if it has none, marked in use until release is called.
func (r *Runtime) execServer(c client.Container, task client.Task, proc *specs.Process) (*sandboxinit.ExecConn, func(), error) {
	id := c.ID()
	sl := r.execSlot(id)
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.conn != nil && !isDone(sl.conn) {
		return sl.conn, r.use(id, sl), nil
	}
	if sl.conn != nil {
		r.stopExecServer(id, sl)
	}
	if time.Since(sl.failed) < execServerRetry {
		return nil, nil, errors.New("its exec server failed to start a moment ago")
	}
	conn, err := r.startExecServer(id, task, proc)
	if err != nil {
		sl.failed = time.Now()
		r.log.Info("no exec server: execs go through the OCI runtime until it is tried again", "container", id, "retryAfter", execServerRetry, "err", err)
		return nil, nil, err
	}
	sl.conn = conn
	r.execServers.live.Add(1)
	go func() {
		<-conn.Done()
		// The server is gone (its sandbox ended, or something in the
		// sandbox killed it): its process is removed now.
		sl.mu.Lock()
		defer sl.mu.Unlock()
		if sl.conn == conn {
			r.stopExecServer(id, sl)
		}
	}()
	return conn, r.use(id, sl), nil
}

func isDone(conn *sandboxinit.ExecConn) bool {
	select {
	case <-conn.Done():
		return true
	default:
		return false
	}
}

// use marks sl's server in use (sl.mu held) and returns its release.
func (r *Runtime) use(id string, sl *execSlot) func() {
	sl.active++
	if sl.idle != nil {
		sl.idle.Stop()
		sl.idle = nil
	}
	conn := sl.conn
	return func() {
		sl.mu.Lock()
		defer sl.mu.Unlock()
		sl.active--
		if sl.active > 0 || sl.conn != conn {
			return
		}
		timeout := r.cfg.ExecServerIdleTimeout
		if timeout == 0 {
			timeout = DefaultExecServerIdleTimeout
		}
		var idle func()
		idle = func() {
			sl.mu.Lock()
			defer sl.mu.Unlock()
			if sl.conn != conn || sl.active > 0 {
				return
			}
			if r.pausedContainer(id) {
				// Frozen, the server could not exit: it is stopped once its
				// sandbox runs again.
				sl.idle = time.AfterFunc(timeout, idle)
				return
			}
			r.log.V(1).Info("stopping an idle exec server", "container", id)
			r.stopExecServer(id, sl)
		}
		sl.idle = time.AfterFunc(timeout, idle)
	}
}

// pausedContainer says whether container id is a sandbox's that this
// runtime paused.
func (r *Runtime) pausedContainer(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, st := range r.known {
		if st.ContainerID == id {
			return st.State == api.StatePaused
		}
	}
	return false
}

// startExecServer starts container id's exec server as proc and waits for
// it to call.
func (r *Runtime) startExecServer(id string, task client.Task, proc *specs.Process) (*sandboxinit.ExecConn, error) {
	dir := r.warmDir(id)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("the container has no socket directory: %w", err)
	}
	// The calls outlive the exec that asked for the server: a server is
	// never left half started behind a cancelled call, and it serves the
	// next exec.
	sctx, cancel := context.WithTimeout(r.nsCtx(r.ctx), execServerStartTimeout+execServerStopTimeout)
	defer cancel()
	// One a previous agent started: it ended with that agent's connection,
	// but containerd keeps its process until it is deleted.
	if p, err := task.LoadProcess(sctx, execServerID, nil); err == nil {
		r.deleteExec(p, false)
	}
	ln, err := listenIn(dir, sandboxinit.ExecSocketName, "unixpacket")
	if err != nil {
		return nil, fmt.Errorf("listening for the exec server: %w", err)
	}
	// Listened on only now: nothing in the sandbox can call later.
	defer func() { _ = ln.Close() }()
	sp := *proc
	sp.Args, sp.CommandLine, sp.Terminal, sp.ConsoleSize = []string{sandboxinit.Binary, sandboxinit.ExecServerArg}, "", false, nil
	p, err := task.Exec(sctx, execServerID, &sp, cio.NullIO)
	if err != nil {
		return nil, fmt.Errorf("creating the exec server: %w", err)
	}
	exitCh, err := p.Wait(sctx)
	if err != nil {
		r.deleteExec(p, false)
		return nil, fmt.Errorf("waiting on the exec server: %w", err)
	}
	deadline := time.Now().Add(execServerStartTimeout)
	if err := p.Start(sctx); err != nil {
		r.deleteExec(p, false)
		return nil, fmt.Errorf("starting the exec server: %w", err)
	}
	type accepted struct {
		conn *sandboxinit.ExecConn
		err  error
	}
	acceptCh := make(chan accepted, 1)
	go func() {
		conn, err := sandboxinit.AcceptExec(ln.UnixListener, deadline)
		acceptCh <- accepted{conn, err}
	}()
	var a accepted
	select {
	case a = <-acceptCh:
	case es := <-exitCh:
		// It could not start (e.g. the sandbox's pids limit left it no
		// thread), or exited at once.
		_ = ln.SetDeadline(time.Unix(1, 0))
		if a = <-acceptCh; a.conn != nil {
			_ = a.conn.Close()
		}
		r.deleteExec(p, true)
		return nil, fmt.Errorf("the exec server exited with status %d", es.ExitCode())
	}
	if a.err != nil {
		r.deleteExec(p, false)
		return nil, a.err
	}
	conn := a.conn
	r.log.V(1).Info("started an exec server", "container", id, "pid", conn.Pid())
	return conn, nil
}

// stopExecServer closes sl's server's connection (it kills its commands and
// exits) and removes its process (sl.mu held).
func (r *Runtime) stopExecServer(id string, sl *execSlot) {
	if sl.idle != nil {
		sl.idle.Stop()
		sl.idle = nil
	}
	if sl.conn == nil {
		return
	}
	_ = sl.conn.Close()
	sl.conn = nil
	r.execServers.live.Add(-1)
	ctx, cancel := context.WithTimeout(r.nsCtx(context.Background()), execServerStopTimeout)
	defer cancel()
	if err := r.deleteExecServerProcess(ctx, id); err != nil {
		r.log.V(1).Info("removing an exec server", "container", id, "err", err)
	}
}

// deleteExecServerProcess removes container id's exec server's process.
func (r *Runtime) deleteExecServerProcess(ctx context.Context, id string) error {
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return ignoreNotFound(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return ignoreNotFound(err)
	}
	p, err := task.LoadProcess(ctx, execServerID, nil)
	if err != nil {
		return ignoreNotFound(err)
	}
	r.deleteExec(p, false)
	return nil
}

func ignoreNotFound(err error) error {
	if errdefs.IsNotFound(err) {
		return nil
	}
	return err
}

// dropExecServer stops container id's exec server, if it has one, and
// forgets the container: it is being removed.
func (r *Runtime) dropExecServer(id string) {
	r.execServers.mu.Lock()
	sl := r.execServers.slots[id]
	delete(r.execServers.slots, id)
	r.execServers.mu.Unlock()
	if sl == nil {
		return
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	r.stopExecServer(id, sl)
}

// ExecServers counts the exec servers running (runtime.ExecServerCounter):
// started and not stopped yet (one that died is counted until its slot
// notices, at once).
func (r *Runtime) ExecServers() int { return int(r.execServers.live.Load()) }

// closeExecServers closes the connections of every exec server: they kill
// their commands and exit, as when the agent stops; their processes are
// left to the next agent to remove, as after a crash.
func (r *Runtime) closeExecServers() {
	r.execServers.mu.Lock()
	slots := r.execServers.slots
	r.execServers.slots = nil
	r.execServers.mu.Unlock()
	for _, sl := range slots {
		sl.mu.Lock()
		if sl.idle != nil {
			sl.idle.Stop()
		}
		if sl.conn != nil {
			_ = sl.conn.Close()
			sl.conn = nil
			r.execServers.live.Add(-1)
		}
		sl.mu.Unlock()
	}
}

// execVia runs opts through container id's exec server conn, whose use
// release ends. sent is false when the server could not be asked: nothing
// ran, the caller may run the command another way. A server that failed an
// exec it was asked (it died, or was stopped: something in the sandbox can
// do both) is discarded, so that the next exec starts another.
func (r *Runtime) execVia(ctx context.Context, uid, id string, conn *sandboxinit.ExecConn, release func(), opts runtime.ExecOptions) (code int, sent bool, err error) {
	code, err = r.execThrough(ctx, uid, conn, opts)
	release()
	if errors.Is(err, sandboxinit.ErrNotSent) {
		return code, false, err
	}
	if errors.Is(err, errServerGone) {
		r.discardExecServer(id, conn)
	}
	return code, true, r.explainExecError(ctx, uid, err)
}

// discardExecServer stops container id's exec server if it is still conn.
func (r *Runtime) discardExecServer(id string, conn *sandboxinit.ExecConn) {
	r.execServers.mu.Lock()
	sl := r.execServers.slots[id]
	r.execServers.mu.Unlock()
	if sl == nil {
		return
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.conn == conn {
		r.stopExecServer(id, sl)
	}
}

// errServerGone is an exec the exec server could not take: it is gone.
var errServerGone = errors.New("the exec server went away")

// execThrough runs opts through an exec server (see Exec for the contract).
// It returns sandboxinit.ErrNotSent, wrapped, when the server could not be
// asked (nothing ran), and errServerGone, wrapped, when it went away after
// it was (the command may have run).
func (r *Runtime) execThrough(ctx context.Context, uid string, conn *sandboxinit.ExecConn, opts runtime.ExecOptions) (int, error) {
	req := sandboxinit.ExecRequest{Args: opts.Command, TTY: opts.TTY}
	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var streams sandboxinit.ExecStreams
	// Ours: the ends the agent reads and writes.
	var outR, errR, inW *os.File
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			if f != nil {
				_ = f.Close()
			}
		}
	}
	if opts.TTY {
		select {
		case size, ok := <-opts.Resize:
			if ok && size.Width > 0 && size.Height > 0 {
				req.Width, req.Height = size.Width, size.Height
			}
		default:
		}
	} else {
		var err error
		if outR, streams.Stdout, err = os.Pipe(); err != nil {
			return -1, fmt.Errorf("exec: %w", err)
		}
		if errR, streams.Stderr, err = os.Pipe(); err != nil {
			closeAll(outR, streams.Stdout)
			return -1, fmt.Errorf("exec: %w", err)
		}
		if opts.Stdin != nil {
			if streams.Stdin, inW, err = os.Pipe(); err != nil {
				closeAll(outR, streams.Stdout, errR, streams.Stderr)
				return -1, fmt.Errorf("exec: %w", err)
			}
		}
	}
	proc, err := conn.Start(ctx, req, streams, time.Now().Add(execStartTimeout))
	closeAll(streams.Stdout, streams.Stderr, streams.Stdin)
	if err != nil {
		closeAll(outR, errR, inW)
		var se *sandboxinit.StartError
		if errors.As(err, &se) {
			return se.Code, startFailed(uid, opts.Command[0], se)
		}
		if errors.Is(err, sandboxinit.ErrNotSent) || ctx.Err() != nil {
			return -1, err
		}
		return -1, fmt.Errorf("%w before the command started: %w", errServerGone, err)
	}
	defer proc.Close()
	var copies sync.WaitGroup // the output
	var done sync.WaitGroup   // every goroutine but stdin's copy
	wctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		done.Wait()
	}()
	if opts.TTY {
		master := proc.Master
		inW = master
		copies.Go(func() { _, _ = io.Copy(stdout, master) })
		if opts.Resize != nil {
			done.Go(func() { forwardResizes(wctx, opts.Resize, func(size runtime.TerminalSize) { resize(master, size) }) })
		}
	} else {
		copies.Go(func() { _, _ = io.Copy(stdout, outR) })
		copies.Go(func() { _, _ = io.Copy(stderr, errR) })
	}
	if opts.Stdin != nil {
		in := inW
		go func() {
			_, _ = io.Copy(in, opts.Stdin)
			if !opts.TTY {
				_ = in.Close() // the command's EOF
			}
		}()
	} else if !opts.TTY {
		closeAll(inW)
	}
	code, err := proc.Wait(ctx)
	if err != nil {
		closeAll(outR, errR, inW)
		copies.Wait()
		if ctx.Err() != nil {
			return -1, ctx.Err()
		}
		return -1, fmt.Errorf("%w while the command ran: %w", errServerGone, err)
	}
	// What the command wrote is in the pipes; a process it left behind may
	// keep them open.
	drained := make(chan struct{})
	go func() { copies.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(execDrainTimeout):
	case <-ctx.Done():
	}
	closeAll(outR, errR)
	if !opts.TTY && opts.Stdin != nil {
		closeAll(inW)
	}
	if opts.TTY {
		_ = proc.Master.Close()
	}
	copies.Wait()
	return code, nil
}

// resize sets a terminal's size through its master.
func resize(master *os.File, size runtime.TerminalSize) {
	if size.Width == 0 || size.Height == 0 {
		return
	}
	rc, err := master.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: size.Width, Row: size.Height})
	})
}

// startFailed is the error of a command the server could not start.
func startFailed(uid, command string, se *sandboxinit.StartError) error {
	return fmt.Errorf("starting %q in sandbox %s: %w", command, uid, &runtime.CommandError{Code: se.Code, Cause: se.Message})
}
