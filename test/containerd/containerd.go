// Package containerdtest starts a real containerd daemon for tests, with its
// own root, state and socket in a temporary directory, and imports a small
// busybox image built in-process from Debian's busybox-static.
package containerdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
)

// TestImage is the reference of the busybox image every daemon gets.
const TestImage = "docker.io/fast-sandbox/testbox:latest"

// Namespace is the containerd namespace the image is imported into (kubelet's).
const Namespace = "k8s.io"

// Daemon is a running containerd.
type Daemon struct {
	Address string
	Dir     string
	Client  *client.Client

	mu      sync.Mutex
	cmd     *exec.Cmd // the running containerd, nil while it is killed
	exited  chan struct{}
	logFile *os.File
}

// Skip skips the test when a daemon cannot run here, saying why.
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root to create containers (mounts, cgroups, namespaces); run as root")
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s is not installed (apt-get install containerd runc)", b)
		}
	}
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("%s is missing (apt-get install busybox-static)", busybox)
	}
}

const busybox = "/bin/busybox"

// Start starts containerd and imports TestImage; everything stops and is
// removed when the test ends.
func Start(t testing.TB) *Daemon {
	t.Helper()
	Skip(t)
	dir, err := os.MkdirTemp("", "fsbx-containerd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Address: filepath.Join(dir, "containerd.sock"), Dir: dir}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.Address, d.Address+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.logFile = logFile
	if err := d.run(); err != nil {
		t.Fatalf("starting containerd: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	c, err := d.waitUp()
	if err != nil {
		log, _ := os.ReadFile(logFile.Name())
		t.Fatalf("containerd did not come up: %v\n%s", err, log)
	}
	d.Client = c
	d.importTestImage(t)
	return d
}

// run starts the containerd process.
func (d *Daemon) run() error {
	cmd := exec.Command("containerd", "--config", filepath.Join(d.Dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = d.logFile, d.logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	return nil
}

// waitUp waits until containerd answers on its socket, and returns a new
// client of it.
func (d *Daemon) waitUp() (*client.Client, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := client.New(d.Address, client.WithDefaultNamespace(Namespace), client.WithTimeout(time.Second))
		if err == nil {
			if _, err = c.Version(context.Background()); err == nil {
				return c, nil
			}
			_ = c.Close()
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill kills containerd (SIGKILL, as a crash would) and waits until it is
// gone. Its shims and their containers' processes keep running, as on a
// node; clients of it (Client included) reconnect once it is started again.
func (d *Daemon) Kill(t testing.TB) {
	t.Helper()
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.cmd = nil
	d.mu.Unlock()
	if cmd == nil {
		t.Fatal("containerd is not running")
	}
	_ = cmd.Process.Kill()
	<-exited
}

// StartAgain starts the killed containerd again with the same
// configuration, root, state and socket, and waits until it answers.
func (d *Daemon) StartAgain(t testing.TB) {
	t.Helper()
	if err := d.run(); err != nil {
		t.Fatalf("starting containerd again: %v", err)
	}
	c, err := d.waitUp()
	if err != nil {
		log, _ := os.ReadFile(d.logFile.Name())
		t.Fatalf("containerd did not come up again: %v\n%s", err, tail(string(log), 4000))
	}
	_ = c.Close()
}

// Restart kills containerd and starts it again (Kill, StartAgain).
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	d.Kill(t)
	d.StartAgain(t)
}

// Context is a context in the test namespace.
func (d *Daemon) Context() context.Context {
	return namespaces.WithNamespace(context.Background(), Namespace)
}

func (d *Daemon) importTestImage(t testing.TB) {
	t.Helper()
	files, err := ociimage.BusyboxFiles(busybox)
	if err != nil {
		t.Fatalf("listing busybox applets: %v", err)
	}
	var buf bytes.Buffer
	if err := ociimage.Build(&buf, TestImage, ociimage.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}, files); err != nil {
		t.Fatalf("building the test image: %v", err)
	}
	ctx := d.Context()
	imgs, err := d.Client.Import(ctx, &buf)
	if err != nil {
		t.Fatalf("importing the test image: %v", err)
	}
	for _, img := range imgs {
		if err := client.NewImage(d.Client, img).Unpack(ctx, "overlayfs"); err != nil {
			t.Fatalf("unpacking %s: %v", img.Name, err)
		}
	}
}

// stop kills every task, stops containerd and removes its directory.
func (d *Daemon) stop(t testing.TB) {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.cmd = nil
	d.mu.Unlock()
	logFile := d.logFile
	if cmd == nil {
		// Killed by the test and not started again: start it so that what
		// it has is removed.
		if err := d.run(); err == nil {
			if c, err := d.waitUp(); err == nil {
				_ = c.Close()
			}
			d.mu.Lock()
			cmd, exited = d.cmd, d.exited
			d.cmd = nil
			d.mu.Unlock()
		}
	}
	if d.Client != nil {
		ctx := d.Context()
		if cs, err := d.Client.Containers(ctx); err == nil {
			for _, c := range cs {
				if task, err := c.Task(ctx, nil); err == nil {
					_, _ = task.Delete(ctx, client.WithProcessKill)
				}
				_ = c.Delete(ctx, client.WithSnapshotCleanup)
			}
		}
		_ = d.Client.Close()
	}
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	_ = logFile.Close()
	// Shims outlive containerd by design; so do the processes of a task
	// that a test left behind. Nothing of this daemon may survive the test.
	killShims(d.Address)
	parentsMu.Lock()
	for parent := range parents {
		killCgroupProcs(parent)
		RemoveCgroup(parent)
		delete(parents, parent)
	}
	parentsMu.Unlock()
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var ours []string
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], d.Dir) {
			ours = append(ours, f[1])
		}
	}
	for i := len(ours) - 1; i >= 0; i-- {
		_ = syscall.Unmount(ours[i], syscall.MNT_DETACH)
	}
	if t.Failed() {
		log, _ := os.ReadFile(logFile.Name())
		t.Logf("containerd log:\n%s", tail(string(log), 4000))
	}
	_ = os.RemoveAll(d.Dir)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// WithNamespace is a context in a containerd namespace.
func WithNamespace(ns string) context.Context {
	return namespaces.WithNamespace(context.Background(), ns)
}

var (
	parentsMu sync.Mutex
	parents   = map[string]bool{}
)

// CgroupParent returns a fresh cgroup path for a test's sandboxes, standing
// in for an agent Pod's cgroup, and removes it when the test ends (and again,
// with whatever still runs in it, when the daemon stops).
func CgroupParent(t testing.TB, name string) string {
	parent := fmt.Sprintf("/fast-sandbox-test-%s-%d", name, time.Now().UnixNano())
	parentsMu.Lock()
	parents[parent] = true
	parentsMu.Unlock()
	t.Cleanup(func() { RemoveCgroup(parent) })
	return parent
}

func cgroupRoots() []string {
	if cgroups.Mode() == cgroups.Unified {
		return []string{"/sys/fs/cgroup"}
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	return roots
}

// RemoveCgroup removes a cgroup and its empty descendants in every hierarchy.
func RemoveCgroup(parent string) {
	for _, root := range cgroupRoots() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(root, parent), func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = os.Remove(dirs[i])
		}
	}
}

// killCgroupProcs kills every process in a cgroup and its descendants.
func killCgroupProcs(parent string) {
	for _, root := range cgroupRoots() {
		_ = filepath.WalkDir(filepath.Join(root, parent), func(p string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(data)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			return nil
		})
	}
	time.Sleep(50 * time.Millisecond)
}

// killShims kills the shims started by the containerd at address.
func killShims(address string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(data), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == address {
				var pid int
				if _, err := fmt.Sscan(filepath.Base(filepath.Dir(p)), &pid); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
}

var (
	initOnce sync.Once
	initPath string
	initErr  error
)

// SandboxInit builds cmd/sandbox-init, the process of warm containers, once
// per test binary, and returns its path.
func SandboxInit(t testing.TB) string {
	t.Helper()
	initOnce.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			initErr = err
			return
		}
		dir := filepath.Join(cache, "fast-sandbox", "test")
		if initErr = os.MkdirAll(dir, 0o755); initErr != nil {
			return
		}
		// Test binaries run in parallel: build aside, then rename.
		initPath = filepath.Join(dir, "sandbox-init")
		tmp := fmt.Sprintf("%s.%d", initPath, os.Getpid())
		cmd := exec.Command("go", "build", "-trimpath", "-o", tmp, "github.com/fast-sandbox/fast-sandbox/cmd/sandbox-init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			initErr = fmt.Errorf("building sandbox-init: %v\n%s", err, out)
			return
		}
		initErr = os.Rename(tmp, initPath)
	})
	if initErr != nil {
		t.Fatal(initErr)
	}
	return initPath
}
