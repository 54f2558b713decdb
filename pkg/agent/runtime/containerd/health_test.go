package containerd_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
)

// bindReadOnly bind-mounts src at dst read-only, as kubelet mounts a
// read-only hostPath volume, until the test ends.
func bindReadOnly(t *testing.T, src, dst string) {
	t.Helper()
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting %s at %s: %v", src, dst, err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dst, syscall.MNT_DETACH) })
	if err := syscall.Mount("", dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("making %s read-only: %v", dst, err)
	}
}

// TestPingAcrossAContainerdRestart is the agent Pod's view of the node's
// containerd restarting: the socket's directory mounted read-only (as
// poolcontroller.AgentPod mounts it) reaches the new socket with the same
// client, where a mount of the socket file itself keeps the old socket and
// is refused for good.
func TestPingAcrossAContainerdRestart(t *testing.T) {
	e := setup(t)
	mnt := t.TempDir()
	dirMount := filepath.Join(mnt, "dir")
	fileMount := filepath.Join(mnt, "containerd.sock")
	if err := os.Mkdir(dirMount, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fileMount, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bindReadOnly(t, filepath.Dir(e.d.Address), dirMount)
	bindReadOnly(t, e.d.Address, fileMount)

	start := func(address string) *containerd.Runtime {
		rt := containerd.New(containerd.Config{
			Address: address, Namespace: "k8s.io", CgroupParent: e.parent, Agent: "agent-test", StateDir: e.state,
		}, testr.NewWithInterface(t, testr.Options{}))
		if _, err := rt.Initialize(context.Background()); err != nil {
			t.Fatalf("Initialize through %s: %v", address, err)
		}
		t.Cleanup(func() { rt.Close() })
		return rt
	}
	ping := func(rt *containerd.Runtime) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return rt.Ping(ctx)
	}
	viaDir := start(filepath.Join(dirMount, filepath.Base(e.d.Address)))
	viaFile := start(fileMount)
	for name, rt := range map[string]*containerd.Runtime{"directory": viaDir, "file": viaFile} {
		if err := ping(rt); err != nil {
			t.Fatalf("Ping through the %s mount: %v", name, err)
		}
	}

	e.d.Kill(t)
	if err := ping(viaDir); err == nil {
		t.Fatal("Ping succeeds while containerd is down")
	}
	e.d.StartAgain(t)

	// The client dials again with a backoff of at most its 5 s timeout.
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for {
		if err = ping(viaDir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping through the directory mount still fails 20 s after containerd restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The same runtime works for more than a version: it lists images.
	if imgs, err := viaDir.ListImages(context.Background()); err != nil || len(imgs) == 0 {
		t.Errorf("ListImages after the restart: %v, %v", imgs, err)
	}
	// The file mount still shows the socket containerd removed: refused.
	if err := ping(viaFile); err == nil {
		t.Error("Ping through a mount of the socket file succeeds after a restart; the test no longer shows why the directory is mounted")
	} else {
		t.Logf("through the socket file mount, as expected: %v", err)
	}
}
