package containerd_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network/nettest"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
)

// attachLog records the Attaches the runtime makes, by container ID.
type attachLog struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func recordAttaches(t *testing.T) *attachLog {
	l := &attachLog{at: map[string][]time.Time{}}
	containerd.OnAttach(func(id string, _ time.Duration) {
		l.mu.Lock()
		l.at[id] = append(l.at[id], time.Now())
		l.mu.Unlock()
	})
	t.Cleanup(func() { containerd.OnAttach(nil) })
	return l
}

func (l *attachLog) of(id string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.at[id])
}

// nsPath is the network namespace of a container's task, through the
// node's /proc (the test runs in the node's PID namespace).
func nsPath(t testing.TB, e *env, id string) string {
	t.Helper()
	ctx := e.d.Context()
	c, err := e.d.Client.LoadContainer(ctx, id)
	must(t, err)
	task, err := c.Task(ctx, nil)
	must(t, err)
	return fmt.Sprintf("/proc/%d/ns/net", task.Pid())
}

// TestEgress runs Egress sandboxes, cold and warm, on a real containerd
// with the network Manager in a throwaway agent netns: the sandbox has eth0
// and reaches the world at an allowed address, from the test (in its
// namespace) and from its own processes, but neither the agent (the API's
// stand-in) nor a default-denied address; a None sandbox has no eth0; a
// warm claim attaches nothing; a new runtime adopts the running sandbox
// with its network (rebuilt when its veth was lost) and detaches what is no
// running Egress sandbox; a removed sandbox's veth is gone.
func TestEgress(t *testing.T) {
	e := setup(t)
	n := newNetEnv(t)
	attaches := recordAttaches(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) { testEgress(t, e, n, attaches, mode == "warm") })
	}
	// An Attach that fails (here: no namespace at HostProc/<pid>) fails the
	// sandbox with the reason and leaves nothing, cold and warm.
	t.Run("attach fails", func(t *testing.T) {
		ctx := context.Background()
		rt := e.runtimeWith(t, true, func(c *containerd.Config) {
			c.Agent, c.Egress, c.HostProc = "agent-egress-attach-fails", n.config(), t.TempDir()
		})
		sp := spec("egress-attach-fails", "sleep", "60")
		sp.NetworkMode = api.NetworkEgress
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := rt.WaitWarm(wctx, sp); err == nil || !strings.Contains(err.Error(), "attaching the network") {
			t.Errorf("WaitWarm: %v, want the Attach's failure", err)
		}
		st := rt.CreateSandbox(ctx, sp)
		if st.State != api.StateFailed || st.Reason != api.ReasonCreateFailed || !strings.Contains(st.Message, "attaching the sandbox's network") {
			t.Errorf("create: %+v, want CreateFailed saying the network could not be attached", st)
		}
		// A warm container made beside the first that failed may still be
		// on its way out.
		filter := fmt.Sprintf("labels.%q==%q", containerd.LabelAgent, "agent-egress-attach-fails")
		cs, err := e.d.Client.Containers(e.d.Context(), filter)
		for deadline := time.Now().Add(10 * time.Second); err == nil && len(cs) > 0 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			cs, err = e.d.Client.Containers(e.d.Context(), filter)
		}
		if err != nil || len(cs) != 0 {
			t.Errorf("containers left: %d (%v)", len(cs), err)
		}
		if got := containerd.EgressAttached(rt); len(got) != 0 {
			t.Errorf("attached: %v", got)
		}
	})
}

func testEgress(t *testing.T, e *env, n *netEnv, attaches *attachLog, warm bool) {
	mode := map[bool]string{false: "cold", true: "warm"}[warm]
	configure := func(c *containerd.Config) {
		c.Agent = "agent-egress-" + mode
		c.Egress = n.config()
		c.HostProc = "/proc"
	}
	rt := e.runtimeWith(t, warm, configure)
	s := starter{rt: rt, warm: warm}
	ctx := context.Background()

	sp := spec("egress-"+mode, "sleep", "60")
	sp.NetworkMode = api.NetworkEgress
	if warm {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		must(t, rt.WaitWarm(wctx, sp))
		cancel()
	}
	createStart := time.Now()
	st := s.create(t, sp)
	took := time.Since(createStart)
	if st.State != api.StateRunning {
		t.Fatalf("create: %+v", st)
	}
	id := st.ContainerID
	t.Logf("%s Egress start: %v", mode, took)
	switch at := attaches.of(id); {
	case len(at) != 1:
		t.Errorf("container %s attached %d times, want once", id, len(at))
	case warm && !at[0].Before(createStart):
		t.Errorf("the warm claim attached the network (at %v, the create began at %v); it must be wired when the warm container is made", at[0], createStart)
	case !warm && at[0].Before(createStart):
		t.Errorf("attached before the create")
	}
	path := nsPath(t, e, id)
	names, addr := links(t, path)
	if !network.DefaultSubnet.Contains(addr) {
		t.Fatalf("sandbox interfaces %v, eth0 address %v: want one in %s", names, addr, network.DefaultSubnet)
	}
	if n.veth(t, id) == nil {
		t.Errorf("no veth of %s in the agent netns", id)
	}
	if !slices.Contains(containerd.EgressAttached(rt), id) {
		t.Errorf("attached %v, want %s among them", containerd.EgressAttached(rt), id)
	}
	gateway := addr.Prev().String()
	nettest.Reach(t, path, worldAddr, agentIP) // NAT to the agent's address
	nettest.Blocked(t, path, "", agentAPI, gateway+":8081", deniedAddr)

	t.Run("from the sandbox's processes", func(t *testing.T) {
		// The image's resolv.conf stays; nc needs none with addresses.
		ncSpec := spec("egress-nc-"+mode, "sh", "-c", `ip -4 addr show eth0; echo "world: $(nc 192.0.2.2 8080 </dev/null)"; `+
			`nc -w 1 10.99.0.1 8080 </dev/null && echo reached-denied; nc -w 1 192.0.2.1 8081 </dev/null && echo reached-agent; echo done`)
		ncSpec.NetworkMode = api.NetworkEgress
		if st := s.create(t, ncSpec); st.State != api.StateRunning {
			t.Fatalf("create: %+v", st)
		}
		final := containerd.WaitExit(t, rt, ncSpec.UID)
		out := logs(t, rt, ncSpec.UID, "done")
		if final.ExitCode == nil || *final.ExitCode != 0 || !strings.Contains(out, "world: "+agentIP) ||
			!strings.Contains(out, "inet 198.18.") || strings.Contains(out, "reached-") {
			t.Errorf("sandbox exit %+v, output:\n%s", final, out)
		}
		// An ended sandbox is detached (its namespace died with it).
		deadline := time.Now().Add(5 * time.Second)
		for slices.Contains(containerd.EgressAttached(rt), final.ContainerID) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if slices.Contains(containerd.EgressAttached(rt), final.ContainerID) {
			t.Errorf("an exited sandbox is still attached: %v", containerd.EgressAttached(rt))
		}
		must(t, rt.DeleteSandbox(ctx, ncSpec.UID))
	})

	t.Run("crun", func(t *testing.T) {
		if _, err := exec.LookPath("crun"); err != nil {
			t.Skip("crun is not installed")
		}
		cs := spec("egress-crun-"+mode, "sh", "-c", `echo "world: $(nc 192.0.2.2 8080 </dev/null)"`)
		cs.NetworkMode, cs.RuntimeHandler = api.NetworkEgress, "crun"
		if warm {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := rt.WaitWarm(wctx, cs)
			cancel()
			if err != nil && strings.Contains(err.Error(), "hybrid mode not supported") {
				t.Skipf("crun: %v", err) // Debian 12's crun 1.8 on a cgroup v1/v2 hybrid
			}
		}
		st := s.create(t, cs)
		if strings.Contains(st.Message, "hybrid mode not supported") {
			t.Skipf("crun: %s", st.Message)
		}
		if st.State != api.StateRunning {
			t.Fatalf("create: %+v", st)
		}
		final := containerd.WaitExit(t, rt, cs.UID)
		if out := logs(t, rt, cs.UID, "world: "+agentIP); final.ExitCode == nil || *final.ExitCode != 0 || !strings.Contains(out, "world: "+agentIP) {
			t.Errorf("sandbox exit %+v, output:\n%s", final, out)
		}
		must(t, rt.DeleteSandbox(ctx, cs.UID))
	})

	t.Run("None has loopback only", func(t *testing.T) {
		none := s.create(t, spec("none-"+mode, "sleep", "60"))
		if none.State != api.StateRunning {
			t.Fatalf("create: %+v", none)
		}
		if names, _ := links(t, nsPath(t, e, none.ContainerID)); !slices.Equal(names, []string{"lo"}) {
			t.Errorf("None sandbox interfaces %v, want lo only", names)
		}
		if len(attaches.of(none.ContainerID)) != 0 || n.veth(t, none.ContainerID) != nil {
			t.Errorf("None sandbox attached")
		}
		must(t, rt.DeleteSandbox(ctx, none.UID))
	})

	// The agent restarts. Meanwhile (no runtime runs) a network is attached
	// to an id that is no container (a process's namespace): the next
	// runtime detaches it. Cold: the sandbox's veth is lost too (deleted),
	// and the next runtime wires it again; warm: it is kept as it is.
	t.Run("restart", func(t *testing.T) {
		before := n.veth(t, id)
		must(t, rt.Close())
		stray := exec.Command("sleep", "60")
		stray.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		must(t, stray.Start())
		defer func() { _ = stray.Process.Kill(); _ = stray.Wait() }()
		m, err := network.New(*n.config(), testr.New(t))
		must(t, err)
		must(t, m.Init())
		must(t, m.Attach("fsbx-stray", fmt.Sprintf("/proc/%d/ns/net", stray.Process.Pid)))
		must(t, m.Close())
		if !warm {
			must(t, nettest.Handle(t, n.agent).LinkDel(before))
			if !n.vethGone(t, id) {
				t.Fatal("the deleted veth stayed")
			}
		}

		rt2 := e.runtimeWith(t, warm, configure)
		sts, err := rt2.ListSandboxes(ctx)
		must(t, err)
		adopted := false
		for _, st := range sts {
			adopted = adopted || (st.UID == sp.UID && st.State == api.StateRunning)
		}
		if !adopted {
			t.Fatalf("sandbox not adopted: %+v", sts)
		}
		if got := containerd.EgressAttached(rt2); !slices.Contains(got, id) || slices.Contains(got, "fsbx-stray") {
			t.Errorf("attached after the restart: %v, want %s and not fsbx-stray", got, id)
		}
		if n.veth(t, "fsbx-stray") != nil {
			t.Error("the veth of an id that is no container survived the restart")
		}
		after := n.veth(t, id)
		switch {
		case after == nil:
			t.Fatal("no veth after the restart")
		case warm && after.Attrs().Index != before.Attrs().Index:
			t.Error("the restart made an attached sandbox's veth again")
		}
		if _, a := links(t, path); !network.DefaultSubnet.Contains(a) {
			t.Errorf("eth0 address after the restart: %v", a)
		}
		nettest.Reach(t, path, worldAddr, agentIP)
		nettest.Blocked(t, path, "", agentAPI, deniedAddr)

		must(t, rt2.DeleteSandbox(ctx, sp.UID))
		if !n.vethGone(t, id) {
			t.Error("the veth of a removed sandbox stayed")
		}
		if slices.Contains(containerd.EgressAttached(rt2), id) {
			t.Errorf("a removed sandbox is still attached: %v", containerd.EgressAttached(rt2))
		}
		rt2.Close()
		// Closing removed the free warm containers, and their veths.
		links, err := nettest.Handle(t, n.agent).LinkList()
		must(t, err)
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, network.VethPrefix) {
				t.Errorf("veth %s (%s) left after every sandbox and warm container is gone", l.Attrs().Name, l.Attrs().Alias)
			}
		}
	})
}

// TestEgressUnavailable: when the network Manager cannot be initialized,
// the agent's egress settings are malformed or there are none (Config.Egress
// nil: no network namespace is touched), Egress sandboxes fail with the
// reason, cold and warm, and None sandboxes run.
func TestEgressUnavailable(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	for i, tc := range []struct {
		name      string
		configure func(*containerd.Config)
		want      string
	}{
		{"Init fails", func(c *containerd.Config) {
			c.Egress = &network.Config{HostNetNS: "/nonexistent/netns"}
		}, "open the agent Pod's network namespace"},
		{"not configured", func(c *containerd.Config) {}, "not configured"},
		{"malformed settings", func(c *containerd.Config) {
			c.EgressError = errors.New(`--egress-allow-cidrs: netip.ParsePrefix("10.0.0.0/33")`)
		}, "--egress-allow-cidrs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := e.runtimeWith(t, true, func(c *containerd.Config) {
				c.Agent = fmt.Sprintf("agent-no-egress-%d", i)
				tc.configure(c)
			})
			if containerd.EgressEnabled(rt) {
				t.Fatal("the runtime has a network Manager")
			}
			sp := spec(fmt.Sprintf("no-egress-%d", i), "sleep", "60")
			sp.NetworkMode = api.NetworkEgress
			st := rt.CreateSandbox(ctx, sp)
			if st.State != api.StateFailed || st.Reason != api.ReasonCreateFailed ||
				!strings.Contains(st.Message, "egress networking is unavailable on this agent") || !strings.Contains(st.Message, tc.want) {
				t.Errorf("Egress sandbox: %+v, want CreateFailed saying egress networking is unavailable (%s)", st, tc.want)
			}
			if err := rt.WaitWarm(ctx, sp); err == nil || !strings.Contains(err.Error(), "egress networking is unavailable") {
				t.Errorf("WaitWarm of an Egress sandbox: %v", err)
			}
			if cs, err := e.d.Client.Containers(e.d.Context(), fmt.Sprintf("labels.%q==%q", containerd.LabelUID, sp.UID)); err != nil || len(cs) != 0 {
				t.Errorf("containers of the failed sandbox: %d (%v)", len(cs), err)
			}
			for _, warm := range []bool{false, true} {
				none := spec(fmt.Sprintf("none-%d-%v", i, warm), "sleep", "60")
				if st := (starter{rt: rt, warm: warm}).create(t, none); st.State != api.StateRunning {
					t.Errorf("None sandbox (warm %v): %+v", warm, st)
				}
				must(t, rt.DeleteSandbox(ctx, none.UID))
			}
		})
	}
}
