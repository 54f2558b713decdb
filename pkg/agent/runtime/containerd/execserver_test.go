package containerd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
)

// TestExecServer: execs into a warm sandbox go through one exec server,
// which is the sandbox's process in all that the kernel knows of it, holds
// no thread per running command, survives nothing the sandbox does to it
// beyond the exec it broke, stops when idle, and is replaced, with the
// process of the one a previous agent left, after a restart.
func TestExecServer(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	// A state directory as deep as an agent Pod's (under its UID), so that
	// the sockets' paths pass the 107 bytes of a bound socket's.
	stateDir := filepath.Join(e.state, "pods", "dc1fc096-3f89-42e3-a98c-80582a105986")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.state, 0o711); err != nil { // traversed by user-namespaced containers
		t.Fatal(err)
	}
	newRuntime := func(t *testing.T, idle time.Duration) *containerd.Runtime {
		return e.runtimeWith(t, true, func(c *containerd.Config) {
			c.Agent = "agent-exec-server"
			c.ExecServerIdleTimeout = idle
			c.StateDir = stateDir
		})
	}
	e.importImage(t, nonRootImage, ociimage.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, User: "1000:1000"})
	rt := newRuntime(t, 0)
	// adopting is a new agent's runtime, which has found the sandboxes
	// (as a restarted agent does).
	adopting := func(t *testing.T, idle time.Duration) *containerd.Runtime {
		t.Helper()
		rt := newRuntime(t, idle)
		if _, err := rt.ListSandboxes(ctx); err != nil {
			t.Fatal(err)
		}
		return rt
	}
	create := func(t *testing.T, rt *containerd.Runtime, uid string) api.SandboxStatus {
		t.Helper()
		s := spec(uid, "sleep", "3600")
		s.PidsLimit = 64
		st := starter{rt: rt, warm: true}.create(t, s)
		if st.State != api.StateRunning {
			t.Fatalf("create %s: %+v", uid, st)
		}
		t.Cleanup(func() { _ = rt.DeleteSandbox(ctx, uid) })
		return st
	}
	loadServer := func(t *testing.T, id string) error {
		t.Helper()
		dctx := e.d.Context()
		c, err := e.d.Client.LoadContainer(dctx, id)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(dctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = task.LoadProcess(dctx, containerd.ExecServerID, nil)
		return err
	}

	uid := "exec-server"
	st := create(t, rt, uid)
	id := st.ContainerID
	if servers := e.execServers(t, id); len(servers) != 0 {
		t.Fatalf("exec servers before any exec: %v", servers)
	}

	t.Run("one server, which is the sandbox's process", func(t *testing.T) {
		mustRun(t, rt, uid, "true")
		servers := e.execServers(t, id)
		if len(servers) != 1 {
			t.Fatalf("exec servers: %v, want one", servers)
		}
		if n := rt.ExecServers(); n != 1 {
			t.Errorf("ExecServers() = %d, want 1", n)
		}
		for range 5 {
			mustRun(t, rt, uid, "true")
		}
		if again := e.execServers(t, id); len(again) != 1 || again[0] != servers[0] {
			t.Errorf("exec servers after five more execs: %v, want %v", again, servers)
		}
		t.Logf("exec server: %s resident, %s threads", procStatus(t, servers[0], "VmRSS"), procStatus(t, servers[0], "Threads"))
		main := e.sandboxProcs(t, id)
		if len(main) != 1 {
			t.Fatalf("the sandbox's processes: %v", main)
		}
		for _, field := range []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters", "NSpid"} {
			s, m := procStatus(t, servers[0], field), procStatus(t, main[0], field)
			if field == "NSpid" { // the same pid namespace: the same depth
				s, m = strconv.Itoa(len(strings.Fields(s))), strconv.Itoa(len(strings.Fields(m)))
			}
			if s != m {
				t.Errorf("%s: the exec server's %q, the sandbox's %q", field, s, m)
			}
		}
	})

	t.Run("a cold container has one too", func(t *testing.T) {
		// An image with no warm container yet starts cold.
		uid := "exec-server-cold"
		s := spec(uid, "sleep", "3600")
		s.Image = nonRootImage
		st := starter{rt: rt}.create(t, s)
		if st.State != api.StateRunning || st.Start != api.StartCold {
			t.Fatalf("create: %+v, want running, cold", st)
		}
		t.Cleanup(func() { _ = rt.DeleteSandbox(ctx, uid) })
		if got := mustRun(t, rt, uid, "id", "-u"); got != "1000\n" {
			t.Errorf("exec: %q", got)
		}
		if servers := e.execServers(t, st.ContainerID); len(servers) != 1 {
			t.Errorf("exec servers: %v, want one", servers)
		}
	})

	t.Run("none for a tight pids limit", func(t *testing.T) {
		uid := "exec-server-pids"
		s := spec(uid, "sleep", "3600")
		s.PidsLimit = 16
		st := starter{rt: rt, warm: true}.create(t, s)
		if st.State != api.StateRunning {
			t.Fatalf("create: %+v", st)
		}
		t.Cleanup(func() { _ = rt.DeleteSandbox(ctx, uid) })
		mustRun(t, rt, uid, "true")
		if servers := e.execServers(t, st.ContainerID); len(servers) != 0 {
			t.Errorf("exec servers in a sandbox of 16 pids: %v", servers)
		}
	})

	t.Run("running commands hold no thread of the server", func(t *testing.T) {
		server := e.execServers(t, id)[0]
		before, _ := strconv.Atoi(procStatus(t, server, "Threads"))
		cctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() { _, _ = rt.Exec(cctx, uid, runtime.ExecOptions{Command: []string{"sleep", "60"}}) })
		}
		eventually(t, "ten commands", func() bool { return len(e.sandboxProcs(t, id)) == 11 })
		during, _ := strconv.Atoi(procStatus(t, server, "Threads"))
		cancel()
		wg.Wait()
		eventually(t, "the commands' end", func() bool { return len(e.sandboxProcs(t, id)) == 1 })
		t.Logf("exec server threads: %d idle, %d with ten commands running", before, during)
		if during > before+1 || during > 8 {
			t.Errorf("exec server threads: %d idle, %d with ten commands running", before, during)
		}
	})

	t.Run("a sandbox that kills its exec server", func(t *testing.T) {
		old := e.execServers(t, id)
		start := time.Now()
		r := run(t, rt, uid, nil, "sh", "-c", "kill -9 $PPID; sleep 1; echo too late")
		if r.err == nil && r.code != 128+9 {
			t.Errorf("the exec whose server was killed: %+v", r)
		}
		t.Logf("the exec whose server was killed: code %d, %v, after %v", r.code, r.err, time.Since(start))
		if got := mustRun(t, rt, uid, "echo", "next"); got != "next\n" {
			t.Errorf("the next exec: %q", got)
		}
		if now := e.execServers(t, id); len(now) != 1 || now[0] == old[0] {
			t.Errorf("exec servers: %v, before the kill %v; want one new", now, old)
		}
	})

	t.Run("a sandbox that stops its exec server", func(t *testing.T) {
		old := e.execServers(t, id)
		// The command's exit is never said: the exec ends with its caller.
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stopped := make(chan error, 1)
		go func() {
			_, err := rt.Exec(cctx, uid, runtime.ExecOptions{Command: []string{"sh", "-c", "kill -STOP $PPID"}})
			stopped <- err
		}()
		eventually(t, "the server stopped", func() bool { return strings.HasPrefix(procStatus(t, old[0], "State"), "T") })
		cancel()
		if err := <-stopped; !errors.Is(err, context.Canceled) {
			t.Errorf("the exec that stopped its server: %v", err)
		}
		// The next one finds it silent, fails after its deadline and
		// discards it; the one after that has a new server.
		start := time.Now()
		r := run(t, rt, uid, nil, "true")
		t.Logf("the exec into the stopped server: code %d, %v, after %v", r.code, r.err, time.Since(start))
		if r.err == nil || time.Since(start) > 10*time.Second {
			t.Errorf("the exec into the stopped server: %+v after %v", r, time.Since(start))
		}
		if got := mustRun(t, rt, uid, "echo", "next"); got != "next\n" {
			t.Errorf("the next exec: %q", got)
		}
		if now := e.execServers(t, id); len(now) != 1 || now[0] == old[0] {
			t.Errorf("exec servers: %v, the stopped one %v; want one new", now, old)
		}
	})

	t.Run("a restarted agent replaces its predecessor's", func(t *testing.T) {
		old := e.execServers(t, id)
		rt.Close()
		eventually(t, "the old server's end", func() bool { return len(e.execServers(t, id)) == 0 })
		if err := loadServer(t, id); err != nil {
			t.Fatalf("the old server's process is gone already: %v", err)
		}
		rt = adopting(t, 0)
		mustRun(t, rt, uid, "true")
		if now := e.execServers(t, id); len(now) != 1 || now[0] == old[0] {
			t.Errorf("exec servers: %v, before the restart %v; want one new", now, old)
		}
	})

	t.Run("a leftover process of the server's ID", func(t *testing.T) {
		// What a crashed agent's server may leave: a process of that ID
		// still running.
		rt.Close()
		eventually(t, "the server's end", func() bool { return len(e.execServers(t, id)) == 0 })
		dctx := e.d.Context()
		c, err := e.d.Client.LoadContainer(dctx, id)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(dctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := task.LoadProcess(dctx, containerd.ExecServerID, nil); err == nil {
			// Its exit may not have reached containerd yet.
			eventually(t, "the old server's process deleted", func() bool {
				_, err := p.Delete(dctx)
				return err == nil || errdefs.IsNotFound(err)
			})
		}
		spec, err := c.Spec(dctx)
		if err != nil {
			t.Fatal(err)
		}
		proc := *spec.Process
		proc.Args = []string{"sleep", "3600"}
		p, err := task.Exec(dctx, containerd.ExecServerID, &proc, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(dctx); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the leftover", func() bool { return len(e.sandboxProcs(t, id)) == 2 })
		rt = adopting(t, 0)
		mustRun(t, rt, uid, "true")
		if n := len(e.execServers(t, id)); n != 1 {
			t.Errorf("exec servers: %d", n)
		}
		eventually(t, "the leftover's end", func() bool { return len(e.sandboxProcs(t, id)) == 1 })
	})

	t.Run("an idle server stops", func(t *testing.T) {
		rt.Close()
		rt = adopting(t, 300*time.Millisecond)
		mustRun(t, rt, uid, "true")
		eventually(t, "the idle server's end", func() bool { return len(e.execServers(t, id)) == 0 })
		eventually(t, "its process removed", func() bool { return errdefs.IsNotFound(loadServer(t, id)) })
		if n := rt.ExecServers(); n != 0 {
			t.Errorf("ExecServers() = %d after the idle one stopped, want 0", n)
		}
		mustRun(t, rt, uid, "true")
		if n := len(e.execServers(t, id)); n != 1 {
			t.Errorf("exec servers after the next exec: %d", n)
		}
	})

	t.Run("a paused sandbox's idle server stops once it runs again", func(t *testing.T) {
		rt.Close()
		rt = adopting(t, 300*time.Millisecond)
		mustRun(t, rt, uid, "true")
		if err := rt.Pause(ctx, uid); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if n := len(e.execServers(t, id)); n != 1 {
			t.Errorf("exec servers of the paused sandbox: %d, want its frozen one", n)
		}
		if err := loadServer(t, id); err != nil {
			t.Errorf("the paused sandbox's server's process: %v", err)
		}
		// Kept, not stopped while frozen (a kill would wait for the thaw).
		if n := rt.ExecServers(); n != 1 {
			t.Errorf("ExecServers() of the paused sandbox = %d, want 1", n)
		}
		if err := rt.Resume(ctx, uid); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the idle server's end", func() bool { return len(e.execServers(t, id)) == 0 })
		eventually(t, "its process removed", func() bool { return errdefs.IsNotFound(loadServer(t, id)) })
		mustRun(t, rt, uid, "true")
	})

	t.Run("disabled", func(t *testing.T) {
		rt.Close()
		eventually(t, "the server's end", func() bool { return len(e.execServers(t, id)) == 0 })
		rt = adopting(t, -1)
		if got := mustRun(t, rt, uid, "echo", "through runc"); got != "through runc\n" {
			t.Errorf("exec: %q", got)
		}
		if n := len(e.execServers(t, id)); n != 0 {
			t.Errorf("exec servers with exec servers disabled: %d", n)
		}
	})

	t.Run("the sandbox's deletion removes it", func(t *testing.T) {
		rt.Close()
		rt = adopting(t, 0)
		mustRun(t, rt, uid, "true")
		if err := rt.DeleteSandbox(ctx, uid); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Exec(ctx, uid, runtime.ExecOptions{Command: []string{"true"}}); !errors.Is(err, runtime.ErrNotFound) {
			t.Errorf("exec after the deletion: %v", err)
		}
	})
	rt.Close()
}
