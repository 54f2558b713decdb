package containerd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxinit"
)

// execResult is what an exec gave.
type execResult struct {
	code           int
	err            error
	stdout, stderr string
}

// run execs cmd in sandbox uid with stdin (nil: none), within 20 seconds.
func run(t *testing.T, rt *containerd.Runtime, uid string, stdin io.Reader, cmd ...string) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code, err := rt.Exec(ctx, uid, runtime.ExecOptions{Command: cmd, Stdin: stdin, Stdout: &out, Stderr: &errOut})
	if ctx.Err() != nil {
		t.Fatalf("exec %q did not end: %v", cmd, err)
	}
	return execResult{code: code, err: err, stdout: out.String(), stderr: errOut.String()}
}

// mustRun execs cmd and requires exit code 0.
func mustRun(t *testing.T, rt *containerd.Runtime, uid string, cmd ...string) string {
	t.Helper()
	r := run(t, rt, uid, nil, cmd...)
	if r.err != nil || r.code != 0 {
		t.Fatalf("exec %q: code %d, %v; stderr %q", cmd, r.code, r.err, r.stderr)
	}
	return r.stdout
}

// lockedBuffer is a buffer written by an exec while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// eventually waits up to 10 seconds for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cgroupProcs are the processes (host pids) in a sandbox container's cgroup.
func (e *env) cgroupProcs(t *testing.T, id string) []int {
	t.Helper()
	data, err := os.ReadFile(e.cgroupFile(id, "pids", "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	return pids
}

// isExecServer says whether host pid is a sandbox's exec server.
func isExecServer(pid int) bool {
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return bytes.Equal(cmdline, []byte(sandboxinit.Binary+"\x00"+sandboxinit.ExecServerArg+"\x00"))
}

// sandboxProcs are the processes in a sandbox container's cgroup but its
// exec server.
func (e *env) sandboxProcs(t *testing.T, id string) []int {
	t.Helper()
	return slices.DeleteFunc(e.cgroupProcs(t, id), isExecServer)
}

// execServers are the exec servers in a sandbox container's cgroup.
func (e *env) execServers(t *testing.T, id string) []int {
	t.Helper()
	return slices.DeleteFunc(e.cgroupProcs(t, id), func(pid int) bool { return !isExecServer(pid) })
}

// procStatus is a field of a host process's /proc/<pid>/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(rest)
		}
	}
	t.Fatalf("no %s in the status of process %d", field, pid)
	return ""
}

// identity prints what a process is: its user, groups, directory, part of
// its environment and its capabilities.
const identity = `echo uid=$(id -u) gid=$(id -g) groups=$(id -G) cwd=$(pwd) foo=$FOO home=$HOME; grep -E '^Cap(Eff|Prm|Bnd|Inh|Amb):' /proc/self/status; echo identity-end`

// TestExec runs processes in sandboxes, cold and warm: their streams and
// exit code, stdin to its end, a terminal and its size, the sandbox's
// user, groups, directory, environment and capabilities (never the warm
// init's CAP_SYS_ADMIN), its cgroup (the pids limit holds), a cancelled
// exec killed and gone, a missing command, a paused, a finished and an
// unknown sandbox; with user namespaces, root inside is an unprivileged
// host user. Nothing of an exec is left: no process, no FIFO.
func TestExec(t *testing.T) {
	e := setup(t)
	e.importImage(t, nonRootImage, ociimage.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, User: "1000:1000"})
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			mt := t
			rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) { c.Agent = "agent-exec-" + mode })
			s0 := starter{rt: rt, warm: mode == "warm"}
			create := func(uid string, s api.SandboxSpec) api.SandboxStatus {
				t.Helper()
				st := s0.create(t, s)
				if st.State != api.StateRunning {
					t.Fatalf("create %s: %+v", uid, st)
				}
				t.Cleanup(func() { _ = rt.DeleteSandbox(ctx, uid) })
				return st
			}
			root := "exec-root-" + mode
			rootSpec := spec(root, "sh", "-c", identity+"; exec sleep 3600")
			rootSpec.Env = []api.EnvVar{{Name: "FOO", Value: "root-foo"}}
			rootSt := create(root, rootSpec)
			user := "exec-user-" + mode
			userSpec := spec(user, "sh", "-c", identity+"; exec sleep 3600")
			userSpec.Image, userSpec.WorkingDir = nonRootImage, "/tmp"
			userSpec.Env = []api.EnvVar{{Name: "FOO", Value: "user-foo"}}
			create(user, userSpec)

			t.Run("streams and exit code", func(t *testing.T) {
				r := run(t, rt, root, nil, "sh", "-c", "echo out; echo err >&2; exit 3")
				if r.err != nil || r.code != 3 || r.stdout != "out\n" || r.stderr != "err\n" {
					t.Errorf("exec: %+v, want code 3, out and err apart", r)
				}
			})

			// Warm: through the sandbox's exec server; cold, in a runtime
			// without warm containers: through runc exec (execserver.go).
			t.Run("through the exec server when warm", func(t *testing.T) {
				want := 0
				if mode == "warm" {
					want = 1
				}
				if servers := e.execServers(t, rootSt.ContainerID); len(servers) != want {
					t.Errorf("exec servers in the sandbox: %v, want %d", servers, want)
				}
			})

			t.Run("stdin to its end", func(t *testing.T) {
				in := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB: more than a pipe holds
				r := run(t, rt, root, strings.NewReader(in), "sh", "-c", "wc -c; echo stdin closed")
				if r.err != nil || r.code != 0 || strings.Fields(r.stdout)[0] != strconv.Itoa(len(in)) || !strings.Contains(r.stdout, "stdin closed") {
					t.Errorf("exec: %+v, want %d bytes counted", r, len(in))
				}
				r = run(t, rt, root, strings.NewReader(""), "cat")
				if r.err != nil || r.code != 0 || r.stdout != "" {
					t.Errorf("exec with an empty stdin: %+v", r)
				}
			})

			t.Run("terminal", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				resize := make(chan runtime.TerminalSize, 1)
				resize <- runtime.TerminalSize{Width: 100, Height: 40}
				inR, inW := io.Pipe()
				out := &lockedBuffer{}
				done := make(chan execResult, 1)
				go func() {
					code, err := rt.Exec(ctx, root, runtime.ExecOptions{Command: []string{"sh", "-c", "tty; stty size; echo $TERM; read x; stty size"},
						Stdin: inR, Stdout: out, TTY: true, Resize: resize})
					done <- execResult{code: code, err: err}
				}()
				eventually(t, "the first size", func() bool { return strings.Contains(out.String(), "40 100") })
				resize <- runtime.TerminalSize{Width: 120, Height: 50}
				time.Sleep(100 * time.Millisecond) // the resize is applied on its own
				if _, err := inW.Write([]byte("go\r")); err != nil {
					t.Fatal(err)
				}
				r := <-done
				_ = inW.Close()
				got := out.String()
				if r.err != nil || r.code != 0 || !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "xterm") || !strings.Contains(got, "50 120") {
					t.Errorf("exec on a terminal: %+v, output %q", r, got)
				}
			})

			t.Run("the sandbox's user, groups, directory and environment", func(t *testing.T) {
				for _, uid := range []string{root, user} {
					main := logs(t, rt, uid, "identity-end")
					got := mustRun(t, rt, uid, "sh", "-c", identity)
					if got != main {
						t.Errorf("%s: exec is\n%s\nthe sandbox's process is\n%s", uid, got, main)
					}
				}
				if got := mustRun(t, rt, user, "sh", "-c", "id -u; id -g; id -G; pwd; echo $FOO"); got != "1000\n1000\n1000\n/tmp\nuser-foo\n" {
					t.Errorf("non-root exec: %q", got)
				}
				// No CAP_SYS_ADMIN (bit 21) anywhere, in the warm init's
				// container too.
				caps := mustRun(t, rt, root, "grep", "-E", "^Cap", "/proc/self/status")
				for _, line := range strings.Split(strings.TrimSpace(caps), "\n") {
					f := strings.Fields(line)
					v, err := strconv.ParseUint(f[1], 16, 64)
					if err != nil || v&(1<<unix.CAP_SYS_ADMIN) != 0 {
						t.Errorf("exec has CAP_SYS_ADMIN: %s", line)
					}
				}
				if !strings.Contains(caps, "CapEff:\t00000000000005fb") {
					t.Errorf("exec's capabilities %q, want the sandbox's default set", caps)
				}
			})

			t.Run("in the sandbox's cgroup, within its pids limit", func(t *testing.T) {
				if got := mustRun(t, rt, root, "cat", "/proc/self/cgroup"); !strings.Contains(got, "/"+rootSt.ContainerID+"\n") {
					t.Errorf("exec's cgroups %q, want the container's", got)
				}
				uid := "exec-pids-" + mode
				s := spec(uid, "sleep", "3600")
				// Room for runc exec's own threads (runc init is a Go
				// program in the sandbox's cgroup: with 6 it failed at
				// times, "pthread_create failed"), not for 20 more.
				s.PidsLimit = 12
				create(uid, s)
				r := run(t, rt, uid, nil, "sh", "-c", "i=0; while [ $i -lt 20 ]; do sleep 5 & i=$((i+1)); done 2>&1; echo done")
				if !strings.Contains(r.stdout, "can't fork") {
					t.Errorf("20 processes in a sandbox limited to 12: %+v", r)
				}
			})

			t.Run("a cancelled exec is killed", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				start := time.Now()
				_, err := rt.Exec(ctx, root, runtime.ExecOptions{Command: []string{"sleep", "100"}})
				if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
					t.Errorf("cancelled exec: %v after %v", err, time.Since(start))
				}
				eventually(t, "the sandbox's one process", func() bool { return len(e.sandboxProcs(t, rootSt.ContainerID)) == 1 })
			})

			t.Run("a missing command", func(t *testing.T) {
				for _, cmd := range []string{"no-such-command", "/no/such/command"} {
					r := run(t, rt, root, nil, cmd)
					if r.err == nil || !strings.Contains(r.err.Error(), "not found") || r.code != containerd.ExitCommandNotFound {
						t.Errorf("exec %s: %+v, want an error saying it was not found, code %d", cmd, r, containerd.ExitCommandNotFound)
					}
					t.Logf("exec %s: %v", cmd, r.err)
				}
				r := run(t, rt, root, nil, "/etc/passwd")
				if r.err == nil || r.code != containerd.ExitCommandNotExecutable {
					t.Errorf("exec of a file that is not executable: %+v", r)
				}
				t.Logf("exec /etc/passwd: %v", r.err)
			})

			t.Run("root is unprivileged on the host", func(t *testing.T) {
				out := &lockedBuffer{}
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				done := make(chan struct{})
				go func() {
					defer close(done)
					_, _ = rt.Exec(ctx, root, runtime.ExecOptions{Command: []string{"sh", "-c", "id -u; exec sleep 100"}, Stdout: out})
				}()
				eventually(t, "the exec", func() bool { return out.String() == "0\n" && len(e.sandboxProcs(t, rootSt.ContainerID)) == 2 })
				for _, pid := range e.cgroupProcs(t, rootSt.ContainerID) {
					uids := procStatus(t, pid, "Uid")
					if strings.Fields(uids)[0] == "0" && containerd.UserNamespacesOn(rt) {
						t.Errorf("process %d (%s) is root on the host", pid, procStatus(t, pid, "Name"))
					}
					t.Logf("process %d %s: host uids %s", pid, procStatus(t, pid, "Name"), uids)
				}
				cancel()
				<-done
			})

			t.Run("paused, finished and unknown sandboxes", func(t *testing.T) {
				if err := rt.Pause(ctx, root); err != nil {
					t.Fatal(err)
				}
				if r := run(t, rt, root, nil, "true"); !errors.Is(r.err, runtime.ErrPaused) {
					t.Errorf("exec in a paused sandbox: %+v, want ErrPaused", r)
				}
				if err := rt.Resume(ctx, root); err != nil {
					t.Fatal(err)
				}
				uid := "exec-finished-" + mode
				create(uid, spec(uid, "true"))
				containerd.WaitExit(t, rt, uid)
				if r := run(t, rt, uid, nil, "true"); !errors.Is(r.err, runtime.ErrFinished) {
					t.Errorf("exec in a finished sandbox: %+v, want ErrFinished", r)
				}
				if r := run(t, rt, "no-such-sandbox", nil, "true"); !errors.Is(r.err, runtime.ErrNotFound) {
					t.Errorf("exec in an unknown sandbox: %+v, want ErrNotFound", r)
				}
			})

			t.Run("after an agent restart", func(t *testing.T) {
				rt.Close()
				rt = e.runtimeWith(mt, mode == "warm", func(c *containerd.Config) { c.Agent = "agent-exec-" + mode })
				if _, err := rt.ListSandboxes(ctx); err != nil {
					t.Fatal(err)
				}
				for _, uid := range []string{root, user} {
					if got, main := mustRun(t, rt, uid, "sh", "-c", identity), logs(t, rt, uid, "identity-end"); got != main {
						t.Errorf("%s: exec is\n%s\nthe sandbox's process is\n%s", uid, got, main)
					}
				}
			})

			t.Run("nothing is left", func(t *testing.T) {
				if pids := e.sandboxProcs(t, rootSt.ContainerID); len(pids) != 1 {
					t.Errorf("processes in the sandbox: %v, want its one", pids)
				}
				fifos, _ := filepath.Glob(filepath.Join(e.state, "fifo", "*"))
				if len(fifos) != 0 {
					t.Errorf("FIFOs left: %v", fifos)
				}
			})
		})
	}
}

// frozen reads whether a sandbox container's cgroup is frozen: cgroup v1's
// freezer.state, or v2's cgroup.events (the state reached; cgroup.freeze is
// only the one asked for).
func (e *env) frozen(t *testing.T, id string) bool {
	t.Helper()
	if cgroups.Mode() == cgroups.Unified {
		data, err := os.ReadFile(e.cgroupFile(id, "", "cgroup.events"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(string(data), "frozen 1")
	}
	data, err := os.ReadFile(e.cgroupFile(id, "freezer", "freezer.state"))
	if err != nil {
		t.Fatal(err)
	}
	state := strings.TrimSpace(string(data))
	if state != "FROZEN" && state != "THAWED" {
		t.Errorf("freezer.state %s", state)
	}
	return state == "FROZEN"
}

// readRoot reads a file of a sandbox through its Root, resolved inside it.
func readRoot(t *testing.T, rt *containerd.Runtime, uid, path string) (string, runtime.Owner) {
	t.Helper()
	root, owner, err := rt.Root(context.Background(), uid)
	if err != nil {
		t.Fatalf("Root(%s): %v", uid, err)
	}
	defer root.Close()
	fd, err := unix.Openat2(int(root.Fd()), path, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		t.Fatalf("opening %s in sandbox %s: %v", path, uid, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(data), owner
}

// status is a sandbox's status as ListSandboxes reports it.
func status(t *testing.T, rt *containerd.Runtime, uid string) api.SandboxStatus {
	t.Helper()
	all, err := rt.ListSandboxes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range all {
		if st.UID == uid {
			return st
		}
	}
	t.Fatalf("sandbox %s is not listed", uid)
	return api.SandboxStatus{}
}

// TestPauseResume: a paused sandbox's counter stops and its cgroup is
// frozen; it is listed Paused, by a restarted runtime too, which resumes
// it; pausing and resuming twice is harmless; a paused sandbox is stopped
// (its exit reported) and deleted as any. Cold and warm.
func TestPauseResume(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			configure := func(c *containerd.Config) { c.Agent = "agent-pause-" + mode }
			rt := e.runtimeWith(t, mode == "warm", configure)
			s0 := starter{rt: rt, warm: mode == "warm"}
			uid := "pause-" + mode
			st := s0.create(t, spec(uid, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.01; done"))
			if st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			count := func() int {
				s, _ := readRoot(t, rt, uid, "/tmp/count")
				n, _ := strconv.Atoi(strings.TrimSpace(s))
				return n
			}
			eventually(t, "the counter", func() bool { return count() > 3 })

			for i := 0; i < 2; i++ {
				if err := rt.Pause(ctx, uid); err != nil {
					t.Fatalf("Pause #%d: %v", i+1, err)
				}
			}
			if !e.frozen(t, st.ContainerID) {
				t.Error("the cgroup of a paused sandbox is not frozen")
			}
			before := count()
			time.Sleep(300 * time.Millisecond)
			if after := count(); after != before {
				t.Errorf("the counter went from %d to %d while paused", before, after)
			}
			if got := status(t, rt, uid); got.State != api.StatePaused {
				t.Errorf("listed %+v, want Paused", got)
			}
			if st := rt.CreateSandbox(ctx, spec(uid, "ignored")); st.State != api.StatePaused {
				t.Errorf("CreateSandbox of the paused sandbox: %+v, want Paused", st)
			}

			// A restarted runtime finds it paused, and resumes it.
			rt.Close()
			rt = e.runtimeWith(t, mode == "warm", configure)
			s0.rt = rt
			if got := status(t, rt, uid); got.State != api.StatePaused || got.UID != uid {
				t.Errorf("after a restart: %+v, want Paused", got)
			}
			for i := 0; i < 2; i++ {
				if err := rt.Resume(ctx, uid); err != nil {
					t.Fatalf("Resume #%d: %v", i+1, err)
				}
			}
			if e.frozen(t, st.ContainerID) {
				t.Error("the cgroup of a resumed sandbox is frozen")
			}
			eventually(t, "the counter to go on", func() bool { return count() > before+5 })
			if got := status(t, rt, uid); got.State != api.StateRunning {
				t.Errorf("listed %+v, want Running", got)
			}

			// Stopped while paused: killed, its exit reported.
			if err := rt.Pause(ctx, uid); err != nil {
				t.Fatal(err)
			}
			if err := rt.StopSandbox(ctx, uid); err != nil {
				t.Fatal(err)
			}
			final := containerd.WaitExit(t, rt, uid)
			if final.State != api.StateExited || final.ExitCode == nil || *final.ExitCode != 137 {
				t.Errorf("a paused sandbox stopped: %+v, want Exited 137", final)
			}
			if err := rt.Pause(ctx, uid); !errors.Is(err, runtime.ErrFinished) {
				t.Errorf("Pause of a finished sandbox: %v, want ErrFinished", err)
			}
			if err := rt.Resume(ctx, uid); !errors.Is(err, runtime.ErrFinished) {
				t.Errorf("Resume of a finished sandbox: %v, want ErrFinished", err)
			}
			if err := rt.Pause(ctx, "no-such-sandbox"); !errors.Is(err, runtime.ErrNotFound) {
				t.Errorf("Pause of an unknown sandbox: %v, want ErrNotFound", err)
			}

			// Deleted while paused.
			uid2 := "pause-delete-" + mode
			if st := s0.create(t, spec(uid2, "sleep", "3600")); st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			if err := rt.Pause(ctx, uid2); err != nil {
				t.Fatal(err)
			}
			dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			if err := rt.DeleteSandbox(dctx, uid2); err != nil {
				t.Fatalf("deleting a paused sandbox: %v", err)
			}
			if _, err := e.d.Client.LoadContainer(e.d.Context(), containerd.ContainerID(uid2)); err == nil {
				t.Error("the paused sandbox's container is still there")
			}
		})
	}
}

// TestRoot: a sandbox's root, as Root opens it, has the files it wrote; a
// symlink out of it resolves inside it (openat2 RESOLVE_IN_ROOT); its owner
// is the sandbox user's host ids (shifted with user namespaces); a paused
// sandbox's root opens, a finished one's does not. Cold and warm, with and
// without user namespaces.
func TestRoot(t *testing.T) {
	e := setup(t)
	e.importImage(t, nonRootImage, ociimage.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, User: "1000:1000"})
	for _, mode := range []string{"cold", "warm"} {
		for _, userns := range []string{containerd.UserNamespacesAuto, containerd.UserNamespacesDisabled} {
			t.Run(mode+"/"+userns, func(t *testing.T) {
				ctx := context.Background()
				rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) {
					c.Agent, c.UserNamespaces = "agent-root-"+mode+"-"+userns, userns
				})
				s0 := starter{rt: rt, warm: mode == "warm"}
				base := "root-" + mode + "-" + strings.ToLower(userns)
				uid := base + "-root"
				st := s0.create(t, spec(uid, "sh", "-c",
					"echo hello > /tmp/hello; echo \"the sandbox's own\" > /etc/shadow; ln -s /../../../../etc/shadow /etc/evil; echo ready; exec sleep 3600"))
				if st.State != api.StateRunning {
					t.Fatalf("create: %+v", st)
				}
				defer rt.DeleteSandbox(ctx, uid)
				logs(t, rt, uid, "ready")
				if got, _ := readRoot(t, rt, uid, "/tmp/hello"); got != "hello\n" {
					t.Errorf("/tmp/hello: %q", got)
				}
				got, owner := readRoot(t, rt, uid, "/etc/evil")
				if got != "the sandbox's own\n" {
					t.Errorf("/etc/evil -> /../../../../etc/shadow read %q, want the sandbox's own /etc/shadow", got)
				}
				if host := e.hostUID(t, st.ContainerID); owner.UID != int(host) || owner.GID != int(host) {
					t.Errorf("owner %+v, want the sandbox's root on the host, %d", owner, host)
				}

				user := base + "-user"
				s := spec(user, "sleep", "3600")
				s.Image = nonRootImage
				ust := s0.create(t, s)
				if ust.State != api.StateRunning {
					t.Fatalf("create: %+v", ust)
				}
				defer rt.DeleteSandbox(ctx, user)
				_, owner = readRoot(t, rt, user, "/etc/passwd")
				if host := e.hostUID(t, ust.ContainerID); owner.UID != int(host) || owner.GID != int(host) || (userns == containerd.UserNamespacesDisabled && host != 1000) {
					t.Errorf("owner %+v, want uid and gid 1000 on the host (shifted with user namespaces: the process's %d)", owner, host)
				}

				if err := rt.Pause(ctx, uid); err != nil {
					t.Fatal(err)
				}
				if got, _ := readRoot(t, rt, uid, "/tmp/hello"); got != "hello\n" {
					t.Errorf("/tmp/hello of the paused sandbox: %q", got)
				}
				if err := rt.StopSandbox(ctx, uid); err != nil {
					t.Fatal(err)
				}
				containerd.WaitExit(t, rt, uid)
				if root, _, err := rt.Root(ctx, uid); !errors.Is(err, runtime.ErrFinished) {
					if root != nil {
						root.Close()
					}
					t.Errorf("Root of a finished sandbox: %v, want ErrFinished", err)
				}
				if _, _, err := rt.Root(ctx, "no-such-sandbox"); !errors.Is(err, runtime.ErrNotFound) {
					t.Errorf("Root of an unknown sandbox: %v, want ErrNotFound", err)
				}
			})
		}
	}
}

// follow runs FollowLogs in the background; the result arrives on done.
func follow(rt *containerd.Runtime, ctx context.Context, uid string, opts runtime.LogOptions) (*lockedBuffer, <-chan error) {
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- rt.FollowLogs(ctx, uid, opts, out) }()
	return out, done
}

func followed(t *testing.T, rt *containerd.Runtime, uid string, opts runtime.LogOptions) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, done := follow(rt, ctx, uid, opts)
	if err := <-done; err != nil {
		t.Fatalf("FollowLogs(%+v): %v", opts, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("FollowLogs(%+v) did not end", opts)
	}
	return out.String()
}

// TestFollowLogs: a follower sees a sandbox's lines as they are printed and
// ends once it exited; tail, since, timestamps and limitBytes select; a
// follower keeps up across rotations; one of a running sandbox ends with
// its context. Cold and warm.
func TestFollowLogs(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) {
				c.Agent, c.LogMaxBytes, c.LogMaxFiles = "agent-follow-"+mode, 1024, 3
			})
			s0 := starter{rt: rt, warm: mode == "warm"}
			uid := "follow-" + mode
			st := s0.create(t, spec(uid, "sh", "-c", "for i in 1 2 3; do echo line $i; done; sleep 0.1; echo to stderr >&2; "+
				"while [ ! -e /tmp/go-on ]; do sleep 0.02; done; echo later; sleep 0.2; echo last"))
			if st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			fctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			start := time.Now()
			out, done := follow(rt, fctx, uid, runtime.LogOptions{Follow: true, TailLines: -1, Timestamps: true})
			eventually(t, "the first lines", func() bool { return strings.Contains(out.String(), "to stderr\n") })
			if err := os.WriteFile(filepath.Join("/proc", strconv.Itoa(int(taskPid(t, e, st.ContainerID))), "root/tmp/go-on"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			eventually(t, "a line printed while following", func() bool { return strings.Contains(out.String(), " later\n") })
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the follow did not end once the sandbox exited")
			}
			var lines, times []string
			for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
				ts, line, _ := strings.Cut(l, " ")
				at, err := time.Parse(time.RFC3339Nano, ts)
				if err != nil || at.Before(start.Add(-time.Minute)) || at.After(time.Now()) {
					t.Errorf("line %q: no time of the run (%v)", l, err)
				}
				lines, times = append(lines, line), append(times, ts)
			}
			if got := strings.Join(lines, "|"); got != "line 1|line 2|line 3|to stderr|later|last" {
				t.Errorf("followed %q", got)
			}

			// Selections, of the finished sandbox's log. (The logger reads
			// stdout and stderr apart: the line to stderr comes after a
			// pause, so that their order is known.)
			if got := followed(t, rt, uid, runtime.LogOptions{TailLines: 2}); got != "later\nlast\n" {
				t.Errorf("tail 2: %q", got)
			}
			since, _ := time.Parse(time.RFC3339Nano, times[4])
			if got := followed(t, rt, uid, runtime.LogOptions{TailLines: -1, Since: since}); got != "later\nlast\n" {
				t.Errorf("since the time of later: %q", got)
			}
			if got := followed(t, rt, uid, runtime.LogOptions{TailLines: -1, LimitBytes: 9}); got != "line 1\nli" {
				t.Errorf("limit 9: %q", got)
			}
			if got := followed(t, rt, uid, runtime.LogOptions{Follow: true, TailLines: 1}); got != "last\n" {
				t.Errorf("follow of a finished sandbox, tail 1: %q", got)
			}

			// Across rotations: 1 KiB files, three kept; lines come faster
			// than the follower polls.
			uid = "follow-rotate-" + mode
			rst := s0.create(t, spec(uid, "sh", "-c", "i=0; while [ $i -lt 300 ]; do echo rotating line $i; i=$((i+1)); sleep 0.005; done"))
			if rst.State != api.StateRunning {
				t.Fatalf("create: %+v", rst)
			}
			defer rt.DeleteSandbox(ctx, uid)
			got := followed(t, rt, uid, runtime.LogOptions{Follow: true, TailLines: -1})
			var want strings.Builder
			for i := 0; i < 300; i++ {
				fmt.Fprintf(&want, "rotating line %d\n", i)
			}
			if got != want.String() {
				t.Errorf("followed across rotations %d bytes, want %d: ...%q", len(got), want.Len(), got[max(0, len(got)-100):])
			}
			if files := e.logFiles(t, rst.ContainerID); len(files) != 3 {
				t.Errorf("log files %v: the log did not rotate", files)
			}

			// A running sandbox: until the context ends.
			uid = "follow-running-" + mode
			if st := s0.create(t, spec(uid, "sh", "-c", "echo started; exec sleep 3600")); st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			rctx, rcancel := context.WithCancel(ctx)
			out, done = follow(rt, rctx, uid, runtime.LogOptions{Follow: true, TailLines: -1})
			eventually(t, "the running sandbox's line", func() bool { return out.String() == "started\n" })
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("a follow whose context ended: %v", err)
			}
			if err := rt.FollowLogs(ctx, "no-such-sandbox", runtime.LogOptions{}, io.Discard); !errors.Is(err, runtime.ErrNotFound) {
				t.Errorf("FollowLogs of an unknown sandbox: %v, want ErrNotFound", err)
			}
		})
	}
}

// taskPid is the host pid of a container's task.
func taskPid(t *testing.T, e *env, id string) uint32 {
	t.Helper()
	ctx := e.d.Context()
	c, err := e.d.Client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return task.Pid()
}
