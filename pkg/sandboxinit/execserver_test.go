package sandboxinit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveExec starts an exec server in this process, as the agent does in a
// sandbox, and returns the agent's end of it and the server's exit code.
func serveExec(t *testing.T) (*ExecConn, <-chan int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), ExecSocketName)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	exited := make(chan int, 1)
	go func() { exited <- ServeExec(sock) }()
	c, err := AcceptExec(ln, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if c.Pid() != os.Getpid() {
		t.Errorf("hello says pid %d, want %d", c.Pid(), os.Getpid())
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, exited
}

type pipes struct {
	stdout, stderr, stdin *os.File // the agent's ends
	streams               ExecStreams
}

func newPipes(t *testing.T, stdin bool) *pipes {
	t.Helper()
	p := &pipes{}
	var err error
	if p.stdout, p.streams.Stdout, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	if p.stderr, p.streams.Stderr, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	if stdin {
		if p.streams.Stdin, p.stdin, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// sent closes the ends that Start passed to the server.
func (p *pipes) sent() {
	for _, f := range []*os.File{p.streams.Stdout, p.streams.Stderr, p.streams.Stdin} {
		if f != nil {
			_ = f.Close()
		}
	}
}

type result struct {
	code           int
	stdout, stderr string
	err            error
}

// run runs args through c with stdin (nil: none) and collects the result.
func run(t *testing.T, c *ExecConn, stdin io.Reader, args ...string) result {
	t.Helper()
	p := newPipes(t, stdin != nil)
	proc, err := c.Start(context.Background(), ExecRequest{Args: args}, p.streams, time.Now().Add(5*time.Second))
	p.sent()
	if err != nil {
		_ = p.stdout.Close()
		_ = p.stderr.Close()
		if p.stdin != nil {
			_ = p.stdin.Close()
		}
		return result{code: -1, err: err}
	}
	if stdin != nil {
		go func() {
			_, _ = io.Copy(p.stdin, stdin)
			_ = p.stdin.Close()
		}()
	}
	var out, errb bytes.Buffer
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(&out, p.stdout) })
	wg.Go(func() { _, _ = io.Copy(&errb, p.stderr) })
	code, err := proc.Wait(context.Background())
	wg.Wait()
	_ = p.stdout.Close()
	_ = p.stderr.Close()
	return result{code: code, stdout: out.String(), stderr: errb.String(), err: err}
}

func TestExecServer(t *testing.T) {
	c, _ := serveExec(t)
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  result
	}{
		{name: "streams apart and the exit code", args: []string{"sh", "-c", "echo out; echo err >&2; exit 3"},
			want: result{code: 3, stdout: "out\n", stderr: "err\n"}},
		{name: "no stdin reads /dev/null", args: []string{"sh", "-c", "cat; echo end"}, want: result{stdout: "end\n"}},
		{name: "stdin to its end", args: []string{"sh", "-c", "wc -c; echo closed"},
			stdin: strings.Repeat("0123456789abcdef", 64<<10), // 1 MiB: more than a pipe holds
			want:  result{stdout: strconv.Itoa(1<<20) + "\nclosed\n"}},
		{name: "killed by a signal", args: []string{"sh", "-c", "kill -9 $$"}, want: result{code: 128 + 9}},
		{name: "the server's environment", args: []string{"sh", "-c", "echo $EXEC_SERVER_TEST"}, want: result{stdout: "from-the-server\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdin io.Reader
			if tc.stdin != "" {
				stdin = strings.NewReader(tc.stdin)
			}
			got := run(t, c, stdin, tc.args...)
			if got.err != nil || got.code != tc.want.code || strings.TrimLeft(got.stdout, " ") != tc.want.stdout || got.stderr != tc.want.stderr {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestMain(m *testing.M) {
	// The exec server gives its commands its own environment.
	_ = os.Setenv("EXEC_SERVER_TEST", "from-the-server")
	os.Exit(m.Run())
}

func TestExecServerStartFailures(t *testing.T) {
	c, _ := serveExec(t)
	dir := t.TempDir()
	plain := filepath.Join(dir, "data")
	if err := os.WriteFile(plain, []byte("not a program"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"no-such-command"}, ExitNotFound, `exec "no-such-command": executable file not found in $PATH`},
		{[]string{"/no/such/command"}, ExitNotFound, "no such file or directory"},
		{[]string{"/etc/passwd"}, ExitNotExecutable, "permission denied"},
		{[]string{plain}, ExitNotExecutable, "exec format error"},
		{[]string{dir}, ExitNotExecutable, "permission denied"},
		{[]string{""}, -1, "no command to run"},
	} {
		got := run(t, c, nil, tc.args...)
		var se *StartError
		if !errors.As(got.err, &se) || se.Code != tc.code || !strings.Contains(se.Message, tc.msg) {
			t.Errorf("%q: %+v, want code %d and %q", tc.args, got, tc.code, tc.msg)
		}
	}
	// The server goes on.
	if got := run(t, c, nil, "true"); got.err != nil || got.code != 0 {
		t.Errorf("after the failures: %+v", got)
	}
}

func TestExecServerTerminal(t *testing.T) {
	c, _ := serveExec(t)
	proc, err := c.Start(context.Background(), ExecRequest{Args: []string{"sh", "-c", "tty; stty size; echo $TERM; read x; stty size; echo got $x"}, TTY: true, Width: 100, Height: 40},
		ExecStreams{}, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if proc.Master == nil {
		t.Fatal("no terminal master")
	}
	defer func() { _ = proc.Master.Close() }()
	var mu sync.Mutex
	var out bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		b := make([]byte, 4096)
		for {
			n, err := proc.Master.Read(b)
			mu.Lock()
			out.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	screen := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
	waitFor(t, "the first size", func() bool { return strings.Contains(screen(), "40 100") })
	if err := unix.IoctlSetWinsize(int(proc.Master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Col: 120, Row: 50}); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Master.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	code, err := proc.Wait(context.Background())
	<-read // the slave's last close ends the master's reads (EIO)
	got := screen()
	if err != nil || code != 0 || !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "xterm") ||
		!strings.Contains(got, "50 120") || !strings.Contains(got, "got hello") {
		t.Errorf("exit %d, %v; screen %q", code, err, got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// gone says whether pid has exited and was reaped.
func gone(pid int) bool {
	return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

func TestExecServerKills(t *testing.T) {
	t.Run("a closed channel", func(t *testing.T) {
		c, _ := serveExec(t)
		p := newPipes(t, false)
		proc, err := c.Start(context.Background(), ExecRequest{Args: []string{"sleep", "100"}}, p.streams, time.Now().Add(5*time.Second))
		p.sent()
		if err != nil {
			t.Fatal(err)
		}
		if gone(proc.Pid) {
			t.Fatalf("the command %d is not running", proc.Pid)
		}
		proc.Close()
		waitFor(t, "the command's end", func() bool { return gone(proc.Pid) })
		// Its output pipes are closed: nothing holds them but the agent.
		if _, err := io.ReadAll(p.stdout); err != nil {
			t.Error(err)
		}
	})
	t.Run("a cancelled wait", func(t *testing.T) {
		c, _ := serveExec(t)
		p := newPipes(t, false)
		proc, err := c.Start(context.Background(), ExecRequest{Args: []string{"sleep", "100"}}, p.streams, time.Now().Add(5*time.Second))
		p.sent()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if _, err := proc.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("wait: %v", err)
		}
		waitFor(t, "the command's end", func() bool { return gone(proc.Pid) })
	})
	t.Run("a closed connection ends the server and its commands", func(t *testing.T) {
		c, exited := serveExec(t)
		p := newPipes(t, false)
		proc, err := c.Start(context.Background(), ExecRequest{Args: []string{"sleep", "100"}}, p.streams, time.Now().Add(5*time.Second))
		p.sent()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("the server exited %d", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not exit")
		}
		waitFor(t, "the command's end", func() bool { return gone(proc.Pid) })
		// The server said it killed it, or was gone before.
		if code, err := proc.Wait(context.Background()); err == nil && code != 128+9 {
			t.Errorf("wait after the server's end: %d, want an error or a kill", code)
		}
	})
}

// listenAndDial listens as the agent does on an exec socket and connects
// to it as a server would; both are closed when the test ends.
func listenAndDial(t *testing.T) (*net.UnixListener, *net.UnixConn) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), ExecSocketName)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return ln, conn
}

// hostileServer accepts the agent's requests in place of an exec server
// and answers each with answer.
func hostileServer(t *testing.T, answer func(ch *net.UnixConn)) *ExecConn {
	t.Helper()
	ln, conn := listenAndDial(t)
	hello, _ := json.Marshal(Hello{Version: ExecProtocolVersion, Pid: 1})
	if _, err := conn.Write(hello); err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, ExecMaxMessage)
		oob := make([]byte, unix.CmsgSpace(4*4))
		for {
			_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			fds, _ := parseFDs(oob[:oobn])
			if len(fds) == 0 {
				return
			}
			closeFDs(fds[1:])
			f := os.NewFile(uintptr(fds[0]), "channel")
			fc, err := net.FileConn(f)
			_ = f.Close()
			if err != nil {
				return
			}
			ch := fc.(*net.UnixConn)
			go func() {
				defer func() { _ = ch.Close() }()
				answer(ch)
			}()
		}
	}()
	c, err := AcceptExec(ln, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestExecClientDistrustsTheServer: what a hostile process in the sandbox
// answering in the exec server's place can do is fail the exec, never
// hang it past its deadline, make the agent keep a descriptor or use one
// that is not a terminal's master.
func TestExecClientDistrustsTheServer(t *testing.T) {
	send := func(ch *net.UnixConn, msg []byte, fds ...int) {
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		_, _, _ = ch.WriteMsgUnix(msg, oob, nil)
	}
	started, _ := json.Marshal(ExecReply{Started: true, Pid: 7})
	for _, tc := range []struct {
		name   string
		tty    bool
		answer func(ch *net.UnixConn)
		err    string
	}{
		{name: "silence", answer: func(ch *net.UnixConn) { _, _ = io.Copy(io.Discard, ch) }, err: "i/o timeout"},
		{name: "a closed channel", answer: func(ch *net.UnixConn) {}, err: "closed the connection"},
		{name: "garbage", answer: func(ch *net.UnixConn) { send(ch, []byte("{not json")) }, err: "malformed"},
		{name: "a message too long", answer: func(ch *net.UnixConn) { send(ch, bytes.Repeat([]byte("x"), ExecMaxMessage+1)) }, err: "too long"},
		{name: "neither started nor failed", answer: func(ch *net.UnixConn) { send(ch, []byte("{}")) }, err: "neither"},
		{name: "a terminal without its master", tty: true, answer: func(ch *net.UnixConn) { send(ch, started) }, err: "no terminal"},
		{name: "a pipe for a terminal", tty: true, answer: func(ch *net.UnixConn) {
			r, w, _ := os.Pipe()
			send(ch, started, int(r.Fd()), int(w.Fd()))
			_ = r.Close()
			_ = w.Close()
		}, err: "not a pseudo-terminal master"},
		{name: "a terminal slave for a master", tty: true, answer: func(ch *net.UnixConn) {
			m, s, err := openPTY(80, 24)
			if err != nil {
				return
			}
			send(ch, started, s)
			_ = unix.Close(m)
			_ = unix.Close(s)
		}, err: "not a pseudo-terminal master"},
		{name: "descriptors with a plain answer", answer: func(ch *net.UnixConn) {
			r, w, _ := os.Pipe()
			send(ch, started, int(r.Fd()), int(w.Fd()))
			_ = r.Close()
			_ = w.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := hostileServer(t, tc.answer)
			before := openFDs(t)
			start := time.Now()
			var streams ExecStreams
			var p *pipes
			if !tc.tty {
				p = newPipes(t, false)
				streams = p.streams
			}
			proc, err := c.Start(context.Background(), ExecRequest{Args: []string{"true"}, TTY: tc.tty}, streams, time.Now().Add(time.Second))
			if p != nil {
				p.sent()
				_ = p.stdout.Close()
				_ = p.stderr.Close()
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("Start took %v, past its deadline", time.Since(start))
			}
			if tc.err == "" {
				if err != nil {
					t.Fatalf("start: %v", err)
				}
				proc.Close()
			} else if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("start: %v, want %q", err, tc.err)
			}
			// (The hostile end, in this process too, closes its channel
			// once the agent's is closed.)
			waitFor(t, fmt.Sprintf("the descriptors open before (%d)", before), func() bool { return openFDs(t) <= before })
		})
	}
	t.Run("silence, until the caller gives up", func(t *testing.T) {
		c := hostileServer(t, func(ch *net.UnixConn) { _, _ = io.Copy(io.Discard, ch) })
		p := newPipes(t, false)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Start(ctx, ExecRequest{Args: []string{"true"}}, p.streams, time.Now().Add(time.Minute))
		p.sent()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Errorf("start: %v after %v, want the context's end", err, time.Since(start))
		}
	})
	t.Run("a hello of another version", func(t *testing.T) {
		ln, conn := listenAndDial(t)
		_, _ = conn.Write([]byte(`{"version":2}`))
		if _, err := AcceptExec(ln, time.Now().Add(time.Second)); err == nil || !strings.Contains(err.Error(), "version 2") {
			t.Errorf("accept: %v", err)
		}
	})
}
