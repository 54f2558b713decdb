package agent

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// fakeInteractive is fakeRuntime with the interactive side: Exec runs a
// few built-in commands, Pause and Resume are counted and make Exec and Root
// fail with ErrPaused in between, Root opens a directory of the test, and
// FollowLogs writes "output\n" and, when following, the lines sent on logs
// until it is closed (the sandbox finished) or ctx ends.
//
// Commands: "echo ARGS" writes ARGS; "cat" copies stdin to stdout; "fail"
// writes "oops" to stderr and exits 3; "size" writes the first terminal
// size "WxH"; "block" waits for its context to end; "nosuchcmd" and
// "/etc/passwd" fail to start as runc's do through containerd (code 127,
// 126 and an error); "vanish" finds the sandbox finished.
type fakeInteractive struct {
	*fakeRuntime
	root string

	imu      sync.Mutex
	pauses   map[string]int
	resumes  map[string]int
	paused   map[string]bool
	execs    []runtime.ExecOptions
	logOpts  []runtime.LogOptions
	logs     chan string
	blocking chan struct{} // receives when a "block" command starts
}

func newFakeInteractive(t *testing.T, rt *fakeRuntime) *fakeInteractive {
	return &fakeInteractive{fakeRuntime: rt, root: t.TempDir(), pauses: map[string]int{}, resumes: map[string]int{},
		paused: map[string]bool{}, logs: make(chan string), blocking: make(chan struct{}, 4)}
}

func (f *fakeInteractive) Exec(ctx context.Context, uid string, o runtime.ExecOptions) (int, error) {
	f.imu.Lock()
	f.execs = append(f.execs, o)
	paused := f.paused[uid]
	f.imu.Unlock()
	if paused {
		return 0, runtime.ErrPaused
	}
	if !f.has(uid) {
		return 0, runtime.ErrNotFound
	}
	out := o.Stdout
	if out == nil {
		out = io.Discard
	}
	switch o.Command[0] {
	case "echo":
		_, err := io.WriteString(out, strings.Join(o.Command[1:], " "))
		return 0, err
	case "cat":
		_, err := io.Copy(out, o.Stdin)
		return 0, err
	case "fail":
		_, err := io.WriteString(o.Stderr, "oops")
		return 3, err
	case "size":
		select {
		case sz := <-o.Resize:
			_, err := fmt.Fprintf(out, "%dx%d", sz.Width, sz.Height)
			return 0, err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	case "block":
		f.blocking <- struct{}{}
		<-ctx.Done()
		return 137, nil
	case "nosuchcmd":
		return 127, fmt.Errorf(`starting "nosuchcmd" in sandbox %s: %w`, uid,
			&runtime.CommandError{Code: 127, Cause: `exec: "nosuchcmd": executable file not found in $PATH`})
	case "/etc/passwd":
		return 126, fmt.Errorf(`starting "/etc/passwd" in sandbox %s: %w`, uid,
			&runtime.CommandError{Code: 126, Cause: `exec /etc/passwd: permission denied`})
	case "unstartable":
		return -1, fmt.Errorf(`starting "unstartable" in sandbox %s: %w`, uid,
			&runtime.CommandError{Code: -1, Cause: `no command to run`})
	case "vanish":
		return -1, fmt.Errorf("sandbox %s: %w", uid, runtime.ErrFinished)
	}
	return 127, nil
}

func (f *fakeInteractive) Pause(_ context.Context, uid string) error {
	f.imu.Lock()
	defer f.imu.Unlock()
	f.pauses[uid]++
	f.paused[uid] = true
	return nil
}

func (f *fakeInteractive) Resume(_ context.Context, uid string) error {
	f.imu.Lock()
	defer f.imu.Unlock()
	f.resumes[uid]++
	f.paused[uid] = false
	return nil
}

func (f *fakeInteractive) Root(_ context.Context, uid string) (*os.File, runtime.Owner, error) {
	f.imu.Lock()
	paused := f.paused[uid]
	f.imu.Unlock()
	if paused {
		return nil, runtime.Owner{}, runtime.ErrPaused
	}
	fd, err := unix.Open(f.root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, runtime.Owner{}, err
	}
	return os.NewFile(uintptr(fd), f.root), runtime.Owner{UID: os.Getuid(), GID: os.Getgid()}, nil
}

func (f *fakeInteractive) FollowLogs(ctx context.Context, _ string, o runtime.LogOptions, w io.Writer) error {
	f.imu.Lock()
	f.logOpts = append(f.logOpts, o)
	f.imu.Unlock()
	if o.TailLines != 0 {
		if _, err := io.WriteString(w, "output\n"); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	for {
		select {
		case line, ok := <-f.logs:
			if !ok {
				return nil
			}
			if _, err := io.WriteString(w, line+"\n"); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *fakeInteractive) counts(uid string) (pauses, resumes int) {
	f.imu.Lock()
	defer f.imu.Unlock()
	return f.pauses[uid], f.resumes[uid]
}

func (f *fakeInteractive) lastExec() runtime.ExecOptions {
	f.imu.Lock()
	defer f.imu.Unlock()
	return f.execs[len(f.execs)-1]
}

func (f *fakeInteractive) lastLogOptions() runtime.LogOptions {
	f.imu.Lock()
	defer f.imu.Unlock()
	return f.logOpts[len(f.logOpts)-1]
}

// startInteractive starts an agent over rt with a fake clock and serves its
// API behind mutual TLS.
func startInteractive(t *testing.T, rt runtime.Runtime) (*Agent, *httptest.Server, *clocktesting.FakeClock) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := New(Config{Capacity: api.Resources{Slots: 4}, Clock: clk, SyncWait: 2 * time.Second}, rt, testr.New(t))
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return a, serveTLS(t, a.Handler()), clk
}
