package sandboxinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The exec server.
//
// Starting a process in a running container with the OCI runtime (runc
// exec) costs a new runc, its init joining the container's namespaces and
// cgroup, and the compilation and loading of the container's seccomp filter
// (for three architectures): about 15 ms of CPU, charged to the sandbox's
// own cgroup, so that a sandbox of 100m CPU is throttled for most of a CFS
// period at each exec. The exec server pays that once: the agent starts it
// with runc exec, as the sandbox's process (its user, working directory,
// environment, capabilities, seccomp filter, AppArmor profile, cgroup and
// namespaces), and it then forks each command the agent asks for; the
// child inherits all of that, and its exec is a plain fork and execve.
//
// The server connects to ExecSocketName in SocketDir, which the agent
// listens on only while it starts a server (the directory is the agent's
// and mounted read-only), with a SOCK_SEQPACKET connection: one message per
// packet, file descriptors passed with SCM_RIGHTS. It says Hello; each
// ExecRequest then carries the descriptors of one exec: a channel (the
// agent's end of a new socket pair) first, then the command's stdout,
// stderr and, if it has one, stdin (the other ends of pipes the agent
// reads and writes), or nothing more for a terminal, which the server
// makes in the container (its /dev/ptmx) and sends back. On the channel
// the server answers ExecStarted (with the terminal's master) or
// ExecFailed, then ExecExited when the command has exited. The agent
// closing the channel kills the command; the agent closing the control
// connection kills the commands still running and ends the server.
//
// The server runs inside the sandbox, as its user: code in the sandbox can
// do to it what it can do to its own processes, so the agent treats what
// it says as untrusted (package containerd's execserver.go).

// ExecServerArg makes the init the exec server when it is its only
// argument.
const ExecServerArg = "--exec-server"

// ExecSocketName is the agent's socket in SocketDir that an exec server
// connects to.
const ExecSocketName = "exec.sock"

// ExecMaxMessage bounds one message of the exec protocol, both ways.
const ExecMaxMessage = 64 << 10

// ExecProtocolVersion is the exec protocol this init speaks.
const ExecProtocolVersion = 1

// Hello is an exec server's first message.
type Hello struct {
	Version int `json:"version"`
	Pid     int `json:"pid"`
}

// ExecRequest asks an exec server to run a command.
type ExecRequest struct {
	Args []string `json:"args"`
	// TTY runs the command on a new terminal of the given size (0: the
	// default) instead of the passed descriptors.
	TTY    bool   `json:"tty,omitempty"`
	Width  uint16 `json:"width,omitempty"`
	Height uint16 `json:"height,omitempty"`
	// Stdin says that a descriptor for the command's stdin follows its
	// stderr's; without it, stdin is /dev/null.
	Stdin bool `json:"stdin,omitempty"`
}

// ExecReply is what an exec server says on an exec's channel: first that
// the command started (Started, with the terminal's master for a TTY) or
// could not (Error, Code: 127 when it was not found, 126 when it could not
// be run), then that it exited (Exited, Code: its exit status, or 128 plus
// the signal that ended it).
type ExecReply struct {
	Started bool   `json:"started,omitempty"`
	Pid     int    `json:"pid,omitempty"`
	Exited  bool   `json:"exited,omitempty"`
	Code    int    `json:"code"`
	Error   string `json:"error,omitempty"`
}

// Exit codes of a command that could not be started, as a shell's.
const (
	ExitNotFound      = 127
	ExitNotExecutable = 126
)

// ServeExec runs the exec server: it connects to socket and serves the
// agent until the agent closes the connection; then it kills the commands
// still running and returns the exit code to use.
func ServeExec(socket string) int {
	// One P: the server's threads count against the sandbox's pids limit
	// (and its environment, the sandbox's, may say otherwise).
	runtime.GOMAXPROCS(1)
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: socket, Net: "unixpacket"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "fast-sandbox exec server: %v\n", err)
		return 1
	}
	s := &execServer{conn: conn, env: os.Environ(), running: map[*execChild]struct{}{}}
	if err := s.serve(); err != nil {
		fmt.Fprintf(os.Stderr, "fast-sandbox exec server: %v\n", err)
		return 1
	}
	return 0
}

type execServer struct {
	conn *net.UnixConn
	env  []string

	mu      sync.Mutex
	running map[*execChild]struct{}
	closed  bool
}

func (s *execServer) serve() error {
	defer s.killAll()
	hello, _ := json.Marshal(Hello{Version: ExecProtocolVersion, Pid: os.Getpid()})
	if _, err := s.conn.Write(hello); err != nil {
		return fmt.Errorf("saying hello: %w", err)
	}
	buf := make([]byte, ExecMaxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, flags, _, err := s.conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, io.EOF) {
			return nil // the agent closed the connection
		}
		if err != nil {
			return fmt.Errorf("reading a request: %w", err)
		}
		fds, ferr := parseFDs(oob[:oobn])
		if n == 0 && len(fds) == 0 {
			return nil // the agent closed the connection
		}
		if ferr != nil || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			closeFDs(fds)
			continue // not from the agent: nothing to answer on
		}
		var req ExecRequest
		if err := json.Unmarshal(buf[:n], &req); err != nil || len(fds) == 0 {
			closeFDs(fds)
			continue
		}
		go s.exec(req, fds)
	}
}

// parseFDs reads the descriptors of SCM_RIGHTS messages.
func parseFDs(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for _, m := range msgs {
		rights, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, rights...)
	}
	return fds, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// execChild is a command started for the agent.
type execChild struct {
	pid   int
	pidfd *os.File // non-blocking, in the runtime's poller
	mu    sync.Mutex
	done  bool
}

// kill kills the command unless it was reaped: through its pidfd, so never
// another process that reused its pid.
func (c *execChild) kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	if rc, err := c.pidfd.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) })
	}
}

func (s *execServer) killAll() {
	s.mu.Lock()
	s.closed = true
	children := make([]*execChild, 0, len(s.running))
	for c := range s.running {
		children = append(children, c)
	}
	s.mu.Unlock()
	for _, c := range children {
		c.kill()
	}
}

// exec runs one request: fds are its channel, then its streams.
func (s *execServer) exec(req ExecRequest, fds []int) {
	ch := os.NewFile(uintptr(fds[0]), "channel")
	defer func() { _ = ch.Close() }()
	chConn, err := net.FileConn(ch)
	if err != nil {
		closeFDs(fds[1:])
		return
	}
	channel, ok := chConn.(*net.UnixConn)
	if !ok {
		_ = chConn.Close()
		closeFDs(fds[1:])
		return
	}
	defer func() { _ = channel.Close() }()
	reply := func(r ExecReply, fd int) error {
		b, _ := json.Marshal(r)
		var oob []byte
		if fd >= 0 {
			oob = unix.UnixRights(fd)
		}
		_, _, err := channel.WriteMsgUnix(b, oob, nil)
		return err
	}
	child, master, err := s.start(req, fds[1:])
	closeFDs(fds[1:])
	if err != nil {
		_ = reply(ExecReply{Code: startFailedCode(err), Error: err.Error()}, -1)
		return
	}
	defer func() { _ = child.pidfd.Close() }()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		child.kill()
	} else {
		s.running[child] = struct{}{}
		s.mu.Unlock()
	}
	defer func() {
		s.mu.Lock()
		delete(s.running, child)
		s.mu.Unlock()
	}()
	rerr := reply(ExecReply{Started: true, Pid: child.pid}, master)
	if master >= 0 {
		_ = unix.Close(master)
	}
	if rerr != nil {
		child.kill()
	}
	// The agent closing the channel kills the command.
	go func() {
		b := make([]byte, 1)
		for {
			if _, err := channel.Read(b); err != nil {
				child.kill()
				return
			}
		}
	}()
	code := child.wait()
	_ = reply(ExecReply{Exited: true, Code: code}, -1)
}

// start starts the command of req with the streams fds (stdout, stderr
// and maybe stdin) or on a new terminal, whose master it returns (-1
// without one).
func (s *execServer) start(req ExecRequest, fds []int) (*execChild, int, error) {
	if len(req.Args) == 0 || req.Args[0] == "" {
		return nil, -1, errors.New("no command to run")
	}
	env := s.env
	var stdio []uintptr
	master := -1
	sys := &syscall.SysProcAttr{}
	switch {
	case req.TTY:
		if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "TERM=") }) {
			env = append(slices.Clip(env), "TERM=xterm")
		}
		m, slave, err := openPTY(req.Width, req.Height)
		if err != nil {
			return nil, -1, fmt.Errorf("making a terminal: %w", err)
		}
		defer func() { _ = unix.Close(slave) }()
		master = m
		stdio = []uintptr{uintptr(slave), uintptr(slave), uintptr(slave)}
		sys.Setsid, sys.Setctty, sys.Ctty = true, true, 0
	case len(fds) == 2 && !req.Stdin:
		null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, -1, fmt.Errorf("opening /dev/null: %w", err)
		}
		defer func() { _ = unix.Close(null) }()
		stdio = []uintptr{uintptr(null), uintptr(fds[0]), uintptr(fds[1])}
	case len(fds) == 3 && req.Stdin:
		stdio = []uintptr{uintptr(fds[2]), uintptr(fds[0]), uintptr(fds[1])}
	default:
		return nil, -1, fmt.Errorf("%d descriptors for the request", len(fds))
	}
	fail := func(err error) (*execChild, int, error) {
		if master >= 0 {
			_ = unix.Close(master)
		}
		return nil, -1, err
	}
	path, err := lookPath(req.Args[0], env)
	if err != nil {
		return fail(err)
	}
	pidfd := -1
	sys.PidFD = &pidfd
	pid, err := syscall.ForkExec(path, req.Args, &syscall.ProcAttr{Env: env, Files: stdio, Sys: sys})
	if err != nil {
		return fail(fmt.Errorf("exec %q: %w", path, err))
	}
	// Non-blocking, so that os.NewFile puts it in the poller.
	if err := unix.SetNonblock(pidfd, true); err != nil {
		_ = unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
		_, _ = unix.Wait4(pid, nil, 0, nil)
		_ = unix.Close(pidfd)
		return fail(fmt.Errorf("watching the command: %w", err))
	}
	return &execChild{pid: pid, pidfd: os.NewFile(uintptr(pidfd), "pidfd")}, master, nil
}

// wait reaps the command and returns its exit code (128 plus the signal
// that killed it, as a shell says). It waits in the runtime's poller on
// the pidfd (readable once the command exited), so that a command running
// holds no thread of the server: the server's threads count against the
// sandbox's pids limit.
func (c *execChild) wait() int {
	rc, err := c.pidfd.SyscallConn()
	if err != nil {
		return -1
	}
	// Wait without reaping, so that a kill racing the exit never reaches a
	// reused pid; then mark it done and reap it.
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		werr = unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT, nil)
		return werr != unix.EAGAIN && werr != unix.EINTR
	})
	if err != nil || werr != nil {
		return -1
	}
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(c.pid, &ws, 0, nil)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return -1
		}
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// startFailedCode is the exit code of a command that err kept from
// starting.
func startFailedCode(err error) int {
	switch {
	case errors.Is(err, errNotFound), errors.Is(err, fs.ErrNotExist):
		return ExitNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR):
		return ExitNotExecutable
	}
	return -1
}

// openPTY makes a terminal of the given size in the container: its master
// and, opened through it (TIOCGPTPEER: never a path another process could
// have replaced), its slave.
func openPTY(width, height uint16) (master, slave int, err error) {
	master, err = unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, err
	}
	if err := unix.IoctlSetPointerInt(master, unix.TIOCSPTLCK, 0); err != nil {
		_ = unix.Close(master)
		return -1, -1, fmt.Errorf("unlocking the terminal: %w", err)
	}
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(master), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		err = errno
		_ = unix.Close(master)
		return -1, -1, fmt.Errorf("opening the terminal: %w", err)
	}
	if width > 0 && height > 0 {
		if err := unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, &unix.Winsize{Col: width, Row: height}); err != nil {
			_ = unix.Close(master)
			_ = unix.Close(int(fd))
			return -1, -1, fmt.Errorf("sizing the terminal: %w", err)
		}
	}
	return master, int(fd), nil
}
