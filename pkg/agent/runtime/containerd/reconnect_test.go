package containerd_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
)

// TestContainerdRestart: containerd restarts (killed, started again over
// the same root, state and socket) while sandboxes run, cold and warm.
// Their shims and processes outlive it. A running sandbox stays Running (no
// exit is made up from the broken wait); one whose command exits while
// containerd is down, and one whose command exits later, report their true
// exit codes; warm containers keep serving.
func TestContainerdRestart(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) { testContainerdRestart(t, e, mode == "warm") })
	}
}

func testContainerdRestart(t *testing.T, e *env, warm bool) {
	ctx := context.Background()
	rt := e.runtime(t, warm)
	s := starter{rt: rt, warm: warm}
	long, short := "restart-long-"+fmt.Sprint(warm), "restart-short-"+fmt.Sprint(warm)
	if st := s.create(t, spec(long, "sh", "-c", "sleep 8; exit 5")); st.State != api.StateRunning {
		t.Fatalf("create: %+v", st)
	}
	defer rt.DeleteSandbox(ctx, long)
	if st := s.create(t, spec(short, "sh", "-c", "sleep 1; exit 7")); st.State != api.StateRunning {
		t.Fatalf("create: %+v", st)
	}
	defer rt.DeleteSandbox(ctx, short)
	started := time.Now()

	e.d.Kill(t)
	time.Sleep(2 * time.Second) // short exits while containerd is down
	e.d.StartAgain(t)

	// The exit of short arrives, with its own code; nothing of long.
	exits := collectExits(t, rt, short)
	if st := exits[short]; st.State != api.StateExited || st.ExitCode == nil || *st.ExitCode != 7 {
		t.Errorf("short: %+v, want Exited with code 7", st)
	}
	if st, ok := exits[long]; ok {
		t.Fatalf("long reported %+v while it runs", st)
	}
	all, err := rt.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range all {
		if st.UID == long && st.State != api.StateRunning {
			t.Errorf("long after the restart: %+v, want Running", st)
		}
	}
	// Sandboxes start after the restart (warm ones in a warm container).
	after := "restart-after-" + fmt.Sprint(warm)
	if st := s.create(t, spec(after, "sleep", "60")); st.State != api.StateRunning {
		t.Errorf("create after the restart: %+v", st)
	}
	defer rt.DeleteSandbox(ctx, after)

	// long exits on its own: its true code arrives.
	exits = collectExits(t, rt, long)
	st := exits[long]
	if st.State != api.StateExited || st.ExitCode == nil || *st.ExitCode != 5 || st.Reason != api.ReasonError {
		t.Errorf("long: %+v, want Exited with code 5", st)
	}
	if ran := time.Since(started); ran < 7*time.Second {
		t.Errorf("long exited after %v; its command sleeps 8s", ran)
	}
}

// collectExits reads Exits until uid's exit arrives, and returns every exit
// read by UID. An exit with code 255 (the made-up code of a broken wait) or
// ContainerLost fails the test.
func collectExits(t *testing.T, rt *containerd.Runtime, uid string) map[string]api.SandboxStatus {
	t.Helper()
	out := map[string]api.SandboxStatus{}
	timeout := time.After(30 * time.Second)
	for {
		select {
		case st := <-rt.Exits():
			out[st.UID] = st
			if (st.ExitCode != nil && *st.ExitCode == 255) || st.Reason == api.ReasonContainerLost {
				t.Errorf("made-up exit: %+v", st)
			}
			if st.UID == uid {
				return out
			}
		case <-timeout:
			t.Fatalf("sandbox %s did not exit (got %+v)", uid, out)
		}
	}
}

// TestCreateWhileContainerdDown: a create while containerd is down is not
// final (ReasonRuntimeUnavailable); once containerd is back, creates of the
// same spec (the control plane's next syncs) run the sandbox exactly once,
// in one container.
func TestCreateWhileContainerdDown(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) { testCreateWhileContainerdDown(t, e, mode == "warm") })
	}
}

func testCreateWhileContainerdDown(t *testing.T, e *env, warm bool) {
	ctx := context.Background()
	rt := e.runtime(t, warm)
	uid := "down-" + fmt.Sprint(warm)
	sp := spec(uid, "sh", "-c", "echo ran; exec sleep 60")
	if warm {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := rt.WaitWarm(wctx, sp); err != nil {
			t.Fatal(err)
		}
	}
	e.d.Kill(t)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st := rt.CreateSandbox(cctx, sp)
	cancel()
	if st.State != api.StateFailed || st.Reason != api.ReasonRuntimeUnavailable {
		t.Errorf("create while containerd is down: %+v, want Failed %s", st, api.ReasonRuntimeUnavailable)
	}
	e.d.StartAgain(t)

	// The next syncs create it again until containerd answers the runtime.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = rt.CreateSandbox(ctx, sp)
		if st.Reason != api.ReasonRuntimeUnavailable || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st.State != api.StateRunning {
		t.Fatalf("create after containerd is back: %+v", st)
	}
	defer rt.DeleteSandbox(ctx, uid)
	if again := rt.CreateSandbox(ctx, sp); again.State != api.StateRunning || again.ContainerID != st.ContainerID {
		t.Errorf("a retried create: %+v, want the running sandbox %s", again, st.ContainerID)
	}
	cs, err := e.d.Client.Containers(e.d.Context(), fmt.Sprintf("labels.%q==%q", containerd.LabelUID, uid))
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 {
		t.Errorf("%d containers of the sandbox, want 1", len(cs))
	}
	if out := logs(t, rt, uid, "ran"); strings.Count(out, "ran") != 1 {
		t.Errorf("output %q, want the command run once", out)
	}
}
