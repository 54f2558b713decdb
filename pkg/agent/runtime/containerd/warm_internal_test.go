package containerd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// warmTestConfig starts a containerd and returns the config of an agent
// over it with perImage warm containers per image; every runtime made from
// it plays the same agent (a restart).
func warmTestConfig(t *testing.T, name string, perImage int) (*containerdtest.Daemon, Config) {
	d := startContainerd(t)
	return d, Config{Address: d.Address, Namespace: containerdtest.Namespace, CgroupParent: containerdtest.CgroupParent(t, name),
		Agent: "agent-test", StateDir: t.TempDir(), InitBinary: containerdtest.SandboxInit(t), WarmPerImage: perImage}
}

// initialized is a runtime of cfg, initialized.
func initialized(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	rt := New(cfg, testr.New(t))
	if _, err := rt.Initialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	return rt
}

// TestRestartRemovesClaimedButNotStarted plays an agent that stops between
// claiming a warm container for a sandbox and sending it the command: the
// next agent must find that the sandbox never ran, remove the container and
// not report the sandbox, so that the next sync creates it again (and it
// runs once).
func TestRestartRemovesClaimedButNotStarted(t *testing.T) {
	d, cfg := warmTestConfig(t, "claimed", 1)
	ctx := context.Background()
	spec := api.SandboxSpec{UID: "claimed", Namespace: "ns", Name: "claimed", Image: containerdtest.TestImage, Command: []string{"sleep", "60"}}

	first := initialized(t, cfg)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := first.WaitWarm(wctx, spec); err != nil {
		t.Fatal(err)
	}
	key, _ := first.keyOf(spec)
	c := first.takeWarm(key)
	if _, err := c.container.SetLabels(first.nsCtx(ctx), first.sandboxLabels(spec, time.Now())); err != nil {
		t.Fatal(err)
	}
	// The agent dies here: its connection to the init goes with it.
	c.conn.Close()
	first.Close()

	second := initialized(t, cfg)
	defer second.Close()
	all, err := second.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 0 {
		t.Errorf("a sandbox whose command never ran was adopted: %+v", all)
	}
	if _, err := d.Client.LoadContainer(containerdtest.WithNamespace(containerdtest.Namespace), c.id); err == nil {
		t.Errorf("container %s is still there", c.id)
	}
	// The next sync creates it, once.
	if st := second.CreateSandbox(ctx, spec); st.State != api.StateRunning {
		t.Fatalf("create after restart: %+v", st)
	}
	if err := second.DeleteSandbox(ctx, spec.UID); err != nil {
		t.Fatal(err)
	}
}

// TestRestartAdoptsWarmStarted plays an agent that dies (no clean Close)
// while sandboxes run in warm containers and others are warm and free: the
// next agent adopts the running sandboxes, leaves them running, and removes
// only the free warm containers.
func TestRestartAdoptsWarmStarted(t *testing.T) {
	_, cfg := warmTestConfig(t, "adopt", 2)
	ctx := context.Background()
	first := initialized(t, cfg)
	var uids []string
	for i := 0; i < 3; i++ {
		spec := api.SandboxSpec{UID: fmt.Sprintf("run-%d", i), Namespace: "ns", Name: fmt.Sprintf("run-%d", i),
			Image: containerdtest.TestImage, Command: []string{"sleep", "60"}, CPUMillis: 10, MemoryBytes: 16 << 20}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := first.WaitWarm(wctx, spec); err != nil {
			t.Fatal(err)
		}
		cancel()
		if st := first.CreateSandbox(ctx, spec); st.State != api.StateRunning || st.Start != api.StartWarm {
			t.Fatalf("create: %+v", st)
		}
		uids = append(uids, spec.UID)
	}
	// The agent dies: its connections go, nothing is cleaned up.
	first.warm.stop()
	<-first.warm.done
	first.mu.Lock()
	for _, cs := range first.warm.free {
		for _, c := range cs {
			c.conn.Close()
		}
	}
	first.mu.Unlock()
	first.cancel()
	first.client.Close()

	second := initialized(t, cfg)
	defer second.Close()
	all, err := second.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(uids) {
		t.Fatalf("adopted %+v, want %v", all, uids)
	}
	time.Sleep(time.Second)
	for _, uid := range uids {
		c, err := second.findContainer(second.nsCtx(ctx), uid)
		if err != nil {
			t.Fatalf("sandbox %s: %v", uid, err)
		}
		st, err := second.statusOf(second.nsCtx(ctx), c)
		if err != nil || st.State != api.StateRunning {
			t.Errorf("sandbox %s after the restart: %+v %v", uid, st, err)
		}
	}
	select {
	case st := <-second.Exits():
		t.Errorf("an adopted sandbox exited: %+v", st)
	default:
	}
}
