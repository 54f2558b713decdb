package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/go-logr/logr/testr"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// startContainerd starts a test containerd whose directory user namespaces
// can traverse, as a node's /run/containerd: the OCI runtime mounts a
// container's root filesystem from within its user namespace.
func startContainerd(t testing.TB) *containerdtest.Daemon {
	t.Helper()
	d := containerdtest.Start(t)
	if err := os.Chmod(d.Dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestUserNamespacesUnsupported: on a node that cannot give sandboxes user
// namespaces, Required fails Initialize saying why, Auto runs sandboxes
// without them; an unknown mode fails Initialize.
func TestUserNamespacesUnsupported(t *testing.T) {
	d := startContainerd(t)
	usernsProbe = func() error {
		return errors.New("user namespaces are disabled on this node (max_user_namespaces is 0)")
	}
	t.Cleanup(func() { usernsProbe = nil })
	config := func(mode string) Config {
		return Config{Address: d.Address, Namespace: containerdtest.Namespace, CgroupParent: containerdtest.CgroupParent(t, "userns"),
			Agent: "agent-userns-" + mode, StateDir: t.TempDir(), UserNamespaces: mode}
	}
	for _, mode := range []string{UserNamespacesRequired, "Sometimes"} {
		r := New(config(mode), testr.New(t))
		_, err := r.Initialize(context.Background())
		r.Close()
		if err == nil || !strings.Contains(err.Error(), "user namespaces") {
			t.Errorf("%s: Initialize = %v, want an error about user namespaces", mode, err)
		} else {
			t.Logf("%s: %v", mode, err)
		}
	}

	r := initialized(t, config(UserNamespacesAuto))
	defer r.Close()
	ctx := context.Background()
	spec := api.SandboxSpec{UID: "no-userns", Namespace: "ns", Name: "no-userns", Image: containerdtest.TestImage, Command: []string{"sleep", "60"}}
	st := r.CreateSandbox(ctx, spec)
	if st.State != api.StateRunning {
		t.Fatalf("create: %+v", st)
	}
	defer r.DeleteSandbox(ctx, spec.UID)
	c, err := d.Client.LoadContainer(d.Context(), st.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Spec(d.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.UserNamespace {
			t.Error("Auto gave a sandbox a user namespace on a node that cannot")
		}
	}
}

// TestUserNamespacesProbe: the probe runs a container with a user namespace,
// which fails where the OCI runtime cannot reach the container's files from
// within it (here, a containerd whose directory only root may traverse):
// Auto then runs without user namespaces, Required does not start. Where it
// can, both use them.
func TestUserNamespacesProbe(t *testing.T) {
	for _, reachable := range []bool{true, false} {
		t.Run(fmt.Sprintf("reachable=%v", reachable), func(t *testing.T) {
			d := containerdtest.Start(t)
			mode := os.FileMode(0o700)
			if reachable {
				mode = 0o711
			}
			if err := os.Chmod(d.Dir, mode); err != nil {
				t.Fatal(err)
			}
			for _, m := range []string{UserNamespacesAuto, UserNamespacesRequired} {
				r := New(Config{Address: d.Address, Namespace: containerdtest.Namespace, CgroupParent: containerdtest.CgroupParent(t, "probe"),
					Agent: "agent-probe", StateDir: t.TempDir(), InitBinary: containerdtest.SandboxInit(t), UserNamespaces: m}, testr.New(t))
				_, err := r.Initialize(context.Background())
				r.Close()
				switch {
				case reachable && (err != nil || !r.userns):
					t.Errorf("%s: Initialize = %v, user namespaces %v; want them", m, err, r.userns)
				case !reachable && m == UserNamespacesAuto && (err != nil || r.userns):
					t.Errorf("%s: Initialize = %v, user namespaces %v; want none", m, err, r.userns)
				case !reachable && m == UserNamespacesRequired && err == nil:
					t.Errorf("%s: Initialize succeeded", m)
				}
			}
			// The probes leave nothing behind.
			if cs, err := d.Client.Containers(d.Context()); err != nil || len(cs) != 0 {
				t.Errorf("containers left: %d (%v)", len(cs), err)
			}
			if ls, err := d.Client.LeasesService().List(d.Context()); err != nil || len(ls) != 0 {
				t.Errorf("leases left: %v (%v)", ls, err)
			}
		})
	}
}

// TestLeakedRangeIsReleased: a range an agent took for a container it never
// made (it died in between) is released by the next agent of its name, and
// by the cleanup of its agent Pod; a range whose container exists is kept.
func TestLeakedRangeIsReleased(t *testing.T) {
	d := startContainerd(t)
	ctx := d.Context()
	ls := d.Client.LeasesService()
	take := func(name, agent, pod, container string) {
		t.Helper()
		labels := map[string]string{LabelManagedBy: managedBy, LabelAgent: agent, LabelAgentPodUID: pod, labelLeaseContainer: container}
		if _, err := ls.Create(ctx, leases.WithID(usernsLeasePrefix+name), leases.WithLabels(labels)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Client.NewContainer(ctx, "fsbx-live", client.WithNewSpec(oci.WithDefaultSpec())); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if c, err := d.Client.LoadContainer(ctx, "fsbx-live"); err == nil {
			_ = c.Delete(ctx)
		}
	}()
	take("1", "agent-leak", "pod-leak", "fsbx-never-made")
	take("2", "agent-leak", "pod-leak", "fsbx-live")
	take("3", "agent-gone", "pod-gone", "fsbx-never-made-either")
	left := func() []string {
		all, err := ls.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range all {
			ids = append(ids, strings.TrimPrefix(l.ID, usernsLeasePrefix))
		}
		slices.Sort(ids)
		return ids
	}

	r := initialized(t, Config{Address: d.Address, Namespace: containerdtest.Namespace, CgroupParent: containerdtest.CgroupParent(t, "leak"),
		Agent: "agent-leak", StateDir: t.TempDir(), UserNamespaces: UserNamespacesRequired})
	defer r.Close()
	if got := left(); !slices.Equal(got, []string{"2", "3"}) {
		t.Errorf("leases after the agent's restart: %v, want 2 (its container lives) and 3 (another agent's)", got)
	}
	if _, err := r.removeAgentPodContainers(context.Background(), "pod-gone", "test"); err != nil {
		t.Fatal(err)
	}
	if got := left(); !slices.Equal(got, []string{"2"}) {
		t.Errorf("leases after the cleanup of pod-gone: %v, want 2", got)
	}
}
