package sandboxinit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The agent's end of the exec protocol (see execserver.go). The server runs
// in the sandbox, so everything it says is checked: messages are bounded,
// read within deadlines, descriptors beyond the one expected are closed,
// and a terminal's master must be one (a character device of the pty
// master's number).

// ExecConn is the agent's end of an exec server's control connection.
type ExecConn struct {
	conn  *net.UnixConn
	hello Hello
	done  chan struct{}
}

// AcceptExec accepts an exec server's connection on ln and reads its
// Hello, by deadline.
func AcceptExec(ln *net.UnixListener, deadline time.Time) (*ExecConn, error) {
	_ = ln.SetDeadline(deadline)
	conn, err := ln.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("waiting for the exec server: %w", err)
	}
	_ = conn.SetReadDeadline(deadline)
	var h Hello
	if _, err := readReply(conn, &h); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("reading the exec server's hello: %w", err)
	}
	if h.Version != ExecProtocolVersion {
		_ = conn.Close()
		return nil, fmt.Errorf("the exec server speaks version %d, not %d", h.Version, ExecProtocolVersion)
	}
	_ = conn.SetReadDeadline(time.Time{})
	c := &ExecConn{conn: conn, hello: h, done: make(chan struct{})}
	go func() {
		// The server says nothing more: a read ends when it is gone.
		defer close(c.done)
		b := make([]byte, 1)
		for {
			if _, err := conn.Read(b); err != nil {
				return
			}
		}
	}()
	return c, nil
}

// Pid is the exec server's pid, as the sandbox sees it.
func (c *ExecConn) Pid() int { return c.hello.Pid }

// Done is closed once the server's connection has ended.
func (c *ExecConn) Done() <-chan struct{} { return c.done }

// Close ends the connection: the server kills its commands and exits.
func (c *ExecConn) Close() error { return c.conn.Close() }

// ExecStreams are the descriptors of a command that has no terminal: the
// write ends of pipes for its stdout and stderr and, optionally, the read
// end of one for its stdin. Start sends them; the caller closes its copies.
type ExecStreams struct {
	Stdout, Stderr, Stdin *os.File
}

// StartError is a command that the server could not start.
type StartError struct {
	// Code is the exit code a shell gives it: ExitNotFound,
	// ExitNotExecutable, or -1.
	Code    int
	Message string
}

func (e *StartError) Error() string { return e.Message }

// ExecProcess is a command the server started.
type ExecProcess struct {
	ch *net.UnixConn
	// Pid is the command's pid as the sandbox sees it.
	Pid int
	// Master is the terminal's master, for a TTY; the caller closes it.
	Master *os.File
	once   sync.Once
}

// Start asks the server to run req, with streams or (req.TTY) on a new
// terminal, and waits until it said that it started, by deadline or until
// ctx ends (then the command is killed if it started, and ctx's error is
// returned).
func (c *ExecConn) Start(ctx context.Context, req ExecRequest, streams ExecStreams, deadline time.Time) (*ExecProcess, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("making an exec channel: %w: %w", ErrNotSent, err)
	}
	local := os.NewFile(uintptr(pair[0]), "exec-channel")
	fc, err := net.FileConn(local)
	_ = local.Close()
	if err != nil {
		_ = unix.Close(pair[1])
		return nil, fmt.Errorf("making an exec channel: %w: %w", ErrNotSent, err)
	}
	ch, ok := fc.(*net.UnixConn)
	if !ok {
		_ = fc.Close()
		_ = unix.Close(pair[1])
		return nil, fmt.Errorf("making an exec channel: %w: a %T", ErrNotSent, fc)
	}
	fds := []int{pair[1]}
	req.Stdin = false
	if !req.TTY {
		if streams.Stdout == nil || streams.Stderr == nil {
			_ = ch.Close()
			_ = unix.Close(pair[1])
			return nil, errors.New("exec: no stdout or stderr")
		}
		fds = append(fds, int(streams.Stdout.Fd()), int(streams.Stderr.Fd()))
		if streams.Stdin != nil {
			fds = append(fds, int(streams.Stdin.Fd()))
			req.Stdin = true
		}
	}
	b, err := json.Marshal(req)
	if err == nil && len(b) > ExecMaxMessage {
		err = fmt.Errorf("the command is %d bytes long, more than %d", len(b), ExecMaxMessage)
	}
	if err == nil {
		_, _, err = c.conn.WriteMsgUnix(b, unix.UnixRights(fds...), nil)
	}
	_ = unix.Close(pair[1])
	if err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("sending the command to the exec server: %w: %w", ErrNotSent, err)
	}
	p := &ExecProcess{ch: ch}
	_ = ch.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = ch.SetReadDeadline(time.Unix(1, 0)) })
	var r ExecReply
	fd, err := readReply(ch, &r)
	stop()
	if ctx.Err() != nil && err == nil {
		err = ctx.Err() // the deadline may have been set after the read
	}
	if err == nil && !r.Started && r.Error == "" {
		err = errors.New("neither started nor failed")
	}
	if err == nil && r.Started && req.TTY {
		if fd < 0 {
			err = errors.New("no terminal")
		} else if err = checkPTYMaster(fd); err == nil {
			// Non-blocking, so that the File is pollable: closing it ends
			// a read that a process holding the terminal would block.
			if err = unix.SetNonblock(fd, true); err == nil {
				p.Master, fd = os.NewFile(uintptr(fd), "pty-master"), -1
			}
		}
	}
	if fd >= 0 {
		_ = unix.Close(fd)
	}
	if err != nil {
		_ = ch.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("reading the exec server's answer: %w", err)
	}
	if !r.Started {
		_ = ch.Close()
		return nil, &StartError{Code: r.Code, Message: r.Error}
	}
	_ = ch.SetReadDeadline(time.Time{})
	p.Pid = r.Pid
	return p, nil
}

// Wait waits for the command's exit and returns its exit code. Cancelling
// ctx kills the command (Close) and returns ctx's error; so does a server
// that is gone, with an error saying so.
func (p *ExecProcess) Wait(ctx context.Context) (int, error) {
	stop := context.AfterFunc(ctx, func() { _ = p.ch.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	var r ExecReply
	for {
		fd, err := readReply(p.ch, &r)
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		if ctx.Err() != nil {
			p.Close()
			return -1, ctx.Err()
		}
		if err != nil {
			p.Close()
			return -1, err
		}
		if r.Exited {
			p.Close()
			return r.Code, nil
		}
	}
}

// Close closes the channel: a command still running is killed.
func (p *ExecProcess) Close() {
	p.once.Do(func() { _ = p.ch.Close() })
}

// ErrNotSent is a command that Start could not send: the server never
// had it.
var ErrNotSent = errors.New("not sent")

// errClosed is a connection the server closed.
var errClosed = errors.New("closed the connection")

// readReply reads one message into v and returns the descriptor that came
// with it (-1 for none; the caller closes it); descriptors beyond one are
// closed.
func readReply(conn *net.UnixConn, v any) (int, error) {
	buf := make([]byte, ExecMaxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		err = errClosed
	}
	if err != nil {
		return -1, err
	}
	fds, ferr := parseFDs(oob[:oobn])
	fd := -1
	if len(fds) > 0 {
		fd = fds[0]
		closeFDs(fds[1:])
	}
	fail := func(err error) (int, error) {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return -1, err
	}
	switch {
	case ferr != nil:
		return fail(fmt.Errorf("reading its descriptors: %w", ferr))
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		return fail(errors.New("a message too long"))
	case n == 0:
		return fail(errClosed)
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		return fail(fmt.Errorf("a malformed message: %w", err))
	}
	return fd, nil
}

// checkPTYMaster says whether fd is a pseudo-terminal master (/dev/ptmx's
// device number, 5:2).
func checkPTYMaster(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 5 || unix.Minor(st.Rdev) != 2 {
		return fmt.Errorf("the terminal is not a pseudo-terminal master (mode %o, device %d:%d)", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	return nil
}
