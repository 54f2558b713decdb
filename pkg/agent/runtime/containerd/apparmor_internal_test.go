package containerd

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/apparmor"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/go-logr/logr/testr"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// TestAppArmor: on this node, sandboxes (cold and warm) run under the
// profile if the node has AppArmor, and without one otherwise (the CI
// machine has none: only that path runs there for real). With AppArmor
// faked, the profile is loaded once and in every sandbox's spec; a profile
// that cannot be loaded leaves sandboxes without one.
func TestAppArmor(t *testing.T) {
	d := startContainerd(t)
	ctx := context.Background()
	want := ""
	if apparmor.HostSupports() {
		want = AppArmorProfile
	} else {
		t.Log("this node has no AppArmor: only the path without a profile runs for real")
	}
	for _, warm := range []bool{false, true} {
		cfg := Config{Address: d.Address, Namespace: containerdtest.Namespace, CgroupParent: containerdtest.CgroupParent(t, "apparmor"),
			Agent: "agent-apparmor", StateDir: t.TempDir(), InitBinary: containerdtest.SandboxInit(t)}
		if warm {
			cfg.WarmPerImage = 1
		}
		r := initialized(t, cfg)
		spec := api.SandboxSpec{UID: "apparmor", Namespace: "ns", Name: "apparmor", Image: containerdtest.TestImage,
			Command: []string{"cat", "/proc/self/attr/current"}}
		if warm {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := r.WaitWarm(wctx, spec); err != nil {
				t.Fatal(err)
			}
			cancel()
		}
		st := r.CreateSandbox(ctx, spec)
		if st.State != api.StateRunning {
			t.Fatalf("create: %+v", st)
		}
		c, err := d.Client.LoadContainer(d.Context(), st.ContainerID)
		if err != nil {
			t.Fatal(err)
		}
		s, err := c.Spec(d.Context())
		if err != nil {
			t.Fatal(err)
		}
		if s.Process.ApparmorProfile != want {
			t.Errorf("warm=%v: AppArmor profile %q, want %q", warm, s.Process.ApparmorProfile, want)
		}
		if err := r.DeleteSandbox(ctx, spec.UID); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}

	t.Run("faked", func(t *testing.T) {
		loads := 0
		appArmorSupported = func() bool { return true }
		loadAppArmorProfile = func(name string) error {
			loads++
			if name != AppArmorProfile {
				t.Errorf("loading profile %q", name)
			}
			return nil
		}
		t.Cleanup(func() { appArmorSupported, loadAppArmorProfile = apparmor.HostSupports, defaultLoadAppArmorProfile })
		r := New(Config{Agent: "agent-apparmor"}, testr.New(t))
		r.initAppArmor()
		if loads != 1 || r.appArmorProfile != AppArmorProfile {
			t.Fatalf("loads %d, profile %q", loads, r.appArmorProfile)
		}
		var s oci.Spec
		sctx := namespaces.WithNamespace(ctx, "k8s.io")
		for _, opt := range r.specOpts(api.SandboxSpec{Name: "x"}, ocispec.ImageConfig{}, specs.User{}, "fsbx-x") {
			if err := opt(sctx, nil, &containers.Container{ID: "fsbx-x"}, &s); err != nil {
				t.Fatal(err)
			}
		}
		if s.Process == nil || s.Process.ApparmorProfile != AppArmorProfile {
			t.Errorf("spec without the profile: %+v", s.Process)
		}

		loadAppArmorProfile = func(string) error { return errors.New("apparmor_parser: not found") }
		r = New(Config{Agent: "agent-apparmor"}, testr.New(t))
		r.initAppArmor()
		if r.appArmorProfile != "" {
			t.Errorf("a profile that could not be loaded is used: %q", r.appArmorProfile)
		}
	})
}

var defaultLoadAppArmorProfile = loadAppArmorProfile
