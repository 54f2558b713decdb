package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network/nettest"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// TestFailAtEveryMakeStep fails each step that createCold and makeWarm
// share (create.go), cold and warm, with user namespaces and without, for
// an Egress sandbox (so that its network is attached too, by a network
// Manager in a throwaway agent netns). The create fails saying why (cold:
// Failed/CreateFailed; warm: makeWarm's error), and nothing of it is left
// behind: no container, task, lease (the create's, or a range of user
// ids), snapshot (once containerd's GC ran), veth or attached network id,
// log or warm directory.
func TestFailAtEveryMakeStep(t *testing.T) {
	d := startContainerd(t)
	netns := nettest.NewPair(t, nettest.PairOptions{})
	t.Cleanup(func() { failStep.Store(nil) })
	steps := []string{stepPlanned, stepContainer, stepTask, stepAttached, stepWaited, stepStarted}
	for _, userns := range []string{UserNamespacesAuto, UserNamespacesDisabled} {
		t.Run(userns, func(t *testing.T) {
			// Short: warm containers' init sockets are in it (108 bytes at most).
			state, err := os.MkdirTemp("", "fsbx-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(state) })
			r := initialized(t, Config{Address: d.Address, Namespace: containerdtest.Namespace,
				CgroupParent: containerdtest.CgroupParent(t, "make-"+userns), Agent: "agent-make-" + userns,
				StateDir: state, InitBinary: containerdtest.SandboxInit(t), WarmPerImage: 1,
				UserNamespaces: userns, Egress: &network.Config{HostNetNS: netns.Agent}})
			defer r.Close()
			if r.egress == nil {
				t.Fatalf("no network Manager: %v", r.egressErr)
			}
			t.Logf("user namespaces: %v", r.userns)
			n := 0
			for _, warm := range []bool{false, true} {
				for _, step := range steps {
					n++
					name := map[bool]string{false: "cold", true: "warm"}[warm] + "/" + step
					t.Run(name, func(t *testing.T) {
						uid := fmt.Sprintf("make-%s-%d", strings.ToLower(userns), n)
						spec := api.SandboxSpec{UID: uid, Namespace: "ns", Name: uid, Image: containerdtest.TestImage,
							Command: []string{"sleep", "60"}, CPUMillis: 100, MemoryBytes: 64 << 20, NetworkMode: api.NetworkEgress}
						before := leftovers(t, d, r, netns.Agent)
						testFailAt(t, r, spec, warm, step)
						// Everything removed, and containerd's GC done with
						// what was only the create lease's.
						var got []string
						for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
							got = leftovers(t, d, r, netns.Agent)
							if slices.Equal(got, before) || time.Now().After(deadline) {
								break
							}
						}
						for _, s := range got {
							if !slices.Contains(before, s) {
								t.Errorf("left behind: %s", s)
							}
						}
						for _, s := range before {
							if !slices.Contains(got, s) {
								t.Errorf("gone: %s", s)
							}
						}
					})
				}
			}
		})
	}
}

// testFailAt makes spec's container, cold or warm, with step failing, and
// checks that the make failed at step, saying so.
func testFailAt(t *testing.T, r *Runtime, spec api.SandboxSpec, warm bool, step string) {
	t.Helper()
	var reached atomic.Bool
	injected := errors.New("injected at " + step)
	f := func(s string) error {
		if s != step {
			return nil
		}
		reached.Store(true)
		return injected
	}
	failStep.Store(&f)
	defer failStep.Store(nil)
	ctx := context.Background()
	if warm {
		key, err := r.keyOf(spec)
		if err != nil {
			t.Fatal(err)
		}
		c, err := r.makeWarm(r.nsCtx(ctx), key)
		if c != nil {
			c.state = warmGone
			r.discardWarm(c)
		}
		if !errors.Is(err, injected) {
			t.Errorf("makeWarm: %v, want the injected error", err)
		}
	} else {
		st := r.CreateSandbox(ctx, spec)
		if st.State != api.StateFailed || st.Reason != api.ReasonCreateFailed || !strings.Contains(st.Message, injected.Error()) {
			t.Errorf("create: %+v, want Failed/CreateFailed with the injected error", st)
		}
		if st.Start != "" {
			t.Errorf("create reported a start (%q) that did not happen", st.Start)
		}
	}
	if !reached.Load() {
		t.Errorf("the make did not reach step %q", step)
	}
}

// leftovers lists, sorted, what containerd, the network and the state
// directory hold: containers, tasks, leases and (after a garbage
// collection) snapshots; the veths of the agent netns and the network ids
// the runtime's Manager has attached; logs and warm directories.
func leftovers(t *testing.T, d *containerdtest.Daemon, r *Runtime, agentNS string) []string {
	t.Helper()
	ctx := d.Context()
	var out []string
	ls := collectGarbage(t, d)
	cs, err := d.Client.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		out = append(out, "container "+c.ID())
	}
	ts, err := d.Client.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range ts.Tasks {
		out = append(out, "task "+task.ID)
	}
	all, err := ls.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range all {
		out = append(out, "lease "+l.ID)
	}
	if err := d.Client.SnapshotService(r.cfg.Snapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		out = append(out, "snapshot "+info.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	links, err := nettest.Handle(t, agentNS).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Alias, network.AliasPrefix) {
			out = append(out, "veth "+l.Attrs().Alias)
		}
	}
	for _, id := range r.egress.List() {
		out = append(out, "attached "+id)
	}
	for _, dir := range []string{"logs", "warm"} {
		entries, _ := os.ReadDir(filepath.Join(podStateDir(r.cfg.StateDir, r.cfg.PodUID), dir))
		for _, e := range entries {
			out = append(out, dir+" "+e.Name())
		}
	}
	slices.Sort(out)
	return out
}

// TestDeathWhileMaking plays an agent that dies after making a container's
// root filesystem and before the container (its connection to containerd
// gone, nothing cleaned up), cold and warm, with user namespaces and
// without. The snapshot is then held by nothing but the creation's lease,
// and containerd's GC runs after deletions, not when a lease expires: the
// chaos e2e found such a snapshot left on the node for good. Whoever comes
// next must remove it: the agent's next process (same agent), or, when
// the agent Pod is gone, CleanupAgentPod (which the orphan sweep of any
// other agent shares).
func TestDeathWhileMaking(t *testing.T) {
	d := startContainerd(t)
	t.Cleanup(func() { failStep.Store(nil) })
	ctx := context.Background()
	n := 0
	for _, userns := range []string{UserNamespacesAuto, UserNamespacesDisabled} {
		for _, warm := range []bool{false, true} {
			for _, next := range []string{"restart", "pod gone"} {
				n++
				name := userns + "/" + map[bool]string{false: "cold", true: "warm"}[warm] + "/" + next
				t.Run(name, func(t *testing.T) {
					// Short: warm containers' init sockets are in it (108 bytes at most).
					state, err := os.MkdirTemp("", "fsbx-")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { os.RemoveAll(state) })
					pod := fmt.Sprintf("death-%d", n)
					cfg := Config{Address: d.Address, Namespace: containerdtest.Namespace,
						CgroupParent: containerdtest.CgroupParent(t, pod), PodUID: pod, Agent: "agent-" + pod,
						StateDir: state, InitBinary: containerdtest.SandboxInit(t), WarmPerImage: 1, UserNamespaces: userns}
					before := createLeftovers(t, d, cfg.Snapshotter)

					first := initialized(t, cfg)
					dies := func(s string) error {
						if s != stepContainer {
							return nil
						}
						first.client.Close()
						return errors.New("the agent died")
					}
					failStep.Store(&dies)
					spec := api.SandboxSpec{UID: pod, Namespace: "ns", Name: pod, Image: containerdtest.TestImage,
						Command: []string{"sleep", "60"}, CPUMillis: 100, MemoryBytes: 64 << 20}
					if warm {
						key, err := first.keyOf(spec)
						if err != nil {
							t.Fatal(err)
						}
						_, _ = first.makeWarm(first.nsCtx(ctx), key)
					} else {
						first.CreateSandbox(ctx, spec)
					}
					failStep.Store(nil)
					die(first)
					left := createLeftovers(t, d, cfg.Snapshotter)
					if len(left) <= len(before) {
						t.Fatalf("the death left nothing to remove (%v): the test does not play what it should", left)
					}
					t.Logf("left by the death: %v", left)

					switch next {
					case "restart":
						second := initialized(t, cfg)
						defer second.Close()
					case "pod gone":
						if _, err := CleanupAgentPod(ctx, Config{Address: d.Address, Namespace: containerdtest.Namespace, StateDir: state}, pod, testr.New(t)); err != nil {
							t.Fatal(err)
						}
					}
					if got := createLeftovers(t, d, cfg.Snapshotter); !slices.Equal(got, before) {
						t.Errorf("after the %s: %v, want %v", next, got, before)
					}
				})
			}
		}
	}
}

// createLeftovers lists, sorted, the leases and (after a garbage
// collection) the fast-sandbox snapshots in containerd.
func createLeftovers(t *testing.T, d *containerdtest.Daemon, snapshotter string) []string {
	t.Helper()
	ctx := d.Context()
	ls := collectGarbage(t, d)
	var out []string
	all, err := ls.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range all {
		out = append(out, "lease "+l.ID)
	}
	if snapshotter == "" {
		snapshotter = "overlayfs"
	}
	if err := d.Client.SnapshotService(snapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, idPrefix) {
			out = append(out, "snapshot "+info.Name)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// collectGarbage runs containerd's GC (a synchronous lease deletion runs it
// before it returns) and returns the leases service.
func collectGarbage(t *testing.T, d *containerdtest.Daemon) leases.Manager {
	t.Helper()
	ls := d.Client.LeasesService()
	gc, err := ls.Create(d.Context(), leases.WithRandomID())
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Delete(d.Context(), gc, leases.SynchronousDelete); err != nil {
		t.Fatal(err)
	}
	return ls
}
