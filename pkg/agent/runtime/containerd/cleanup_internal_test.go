package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/go-logr/logr/testr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// TestCleanupAgentPod plays what the cleanup Pod does after an agent Pod
// stopped: two agents (Pods a and b) share a node; a dies (no clean Close)
// with a running sandbox, an exited one and free warm containers.
// CleanupAgentPod for a refuses while a container kubelet made for Pod a
// still runs, then removes exactly a's containers with their snapshots, logs
// and warm directories, leaves b's alone (still running), and is idempotent.
func TestCleanupAgentPod(t *testing.T) {
	d := startContainerd(t)
	ctx := context.Background()
	dctx := d.Context()
	// Short: warm containers' init sockets are in it (108 bytes at most).
	state, err := os.MkdirTemp("", "fsbx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })

	newContainer := func(id string, labels map[string]string, opts ...client.NewContainerOpts) client.Container {
		t.Helper()
		c, err := d.Client.NewContainer(dctx, id, append([]client.NewContainerOpts{client.WithContainerLabels(labels)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(dctx, client.WithSnapshotCleanup) })
		return c
	}
	// The agent Pods' sandbox containers, as the CRI makes them: both Pods
	// are on the node, so neither agent's orphan sweep takes the other's.
	for _, pod := range []string{"pod-a", "pod-b"} {
		newContainer("pause-"+pod, map[string]string{criLabelPodUID: pod, criLabelKind: "sandbox"}, client.WithNewSpec(oci.WithDefaultSpec()))
	}

	config := func(pod string) Config {
		return Config{Address: d.Address, Namespace: containerdtest.Namespace, CgroupParent: containerdtest.CgroupParent(t, "cleanup-"+pod),
			PodUID: pod, Agent: "agent-" + pod, StateDir: state, InitBinary: containerdtest.SandboxInit(t), WarmPerImage: 2}
	}
	sbx := func(uid string, cmd ...string) api.SandboxSpec {
		return api.SandboxSpec{UID: uid, Namespace: "ns", Name: uid, Image: containerdtest.TestImage, Command: cmd}
	}
	waitWarm := func(rt *Runtime, spec api.SandboxSpec) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := rt.WaitWarm(wctx, spec); err != nil {
			t.Fatalf("waiting for a warm container: %v", err)
		}
	}
	a, b := initialized(t, config("pod-a")), initialized(t, config("pod-b"))
	t.Cleanup(func() { b.Close() })

	// Agent a: a sandbox running in a warm container, one that exited (its
	// logs kept), and free warm containers.
	waitWarm(a, sbx("a-run"))
	if st := a.CreateSandbox(ctx, sbx("a-run", "sleep", "60")); st.State != api.StateRunning || st.Start != api.StartWarm {
		t.Fatalf("create a-run: %+v", st)
	}
	aDone := a.CreateSandbox(ctx, sbx("a-done", "sh", "-c", "echo bye"))
	if aDone.State != api.StateRunning && aDone.State != api.StateExited {
		t.Fatalf("create a-done: %+v", aDone)
	}
	waitExitOf(t, a, "a-done")
	waitWarm(a, sbx("a-more"))
	// Agent b: a running sandbox and free warm containers.
	waitWarm(b, sbx("b-run"))
	bRun := b.CreateSandbox(ctx, sbx("b-run", "sleep", "60"))
	if bRun.State != api.StateRunning {
		t.Fatalf("create b-run: %+v", bRun)
	}
	t.Cleanup(func() { _ = b.DeleteSandbox(ctx, "b-run") })
	waitWarm(b, sbx("b-more"))
	// Agent a's process dies: nothing of it is cleaned up.
	die(a)

	containersOf := func(pod string) []string {
		t.Helper()
		cs, err := d.Client.Containers(dctx, fmt.Sprintf("labels.%q==%q", LabelAgentPodUID, pod))
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, c := range cs {
			ids = append(ids, c.ID())
		}
		slices.Sort(ids)
		return ids
	}
	aIDs, bIDs := containersOf("pod-a"), containersOf("pod-b")
	// Sandboxes started in warm containers keep their warm IDs: count by label.
	var aWarm, aSandboxes int
	for _, id := range aIDs {
		c, err := d.Client.LoadContainer(dctx, id)
		if err != nil {
			t.Fatal(err)
		}
		labels, _ := c.Labels(dctx)
		if labels[LabelUID] != "" {
			aSandboxes++
		} else {
			aWarm++
		}
	}
	if aSandboxes != 2 || aWarm == 0 || len(bIDs) < 2 {
		t.Fatalf("agent a has containers %v, b %v: want a's two sandboxes and warm ones, and b's", aIDs, bIDs)
	}
	// What a's containers have on disk and in the snapshotter.
	var aFiles []string
	for _, id := range aIDs {
		aFiles = append(aFiles, filepath.Join(podStateDir(state, "pod-a"), "logs", id+".log"))
		if strings.HasPrefix(id, warmIDPrefix) {
			aFiles = append(aFiles, filepath.Join(podStateDir(state, "pod-a"), "warm", id))
		}
	}
	for _, f := range aFiles {
		if _, err := os.Stat(f); err != nil && !strings.HasSuffix(f, ".log") {
			t.Errorf("before the cleanup: %v", err)
		}
	}
	if data, err := os.ReadFile(filepath.Join(podStateDir(state, "pod-a"), "logs", aDone.ContainerID+".log")); err != nil || !strings.Contains(string(data), "bye") {
		t.Errorf("logs of a-done before the cleanup: %q %v", data, err)
	}
	snapshots := d.Client.SnapshotService("overlayfs")
	for _, id := range aIDs {
		if _, err := snapshots.Stat(dctx, id); err != nil {
			t.Errorf("snapshot of %s before the cleanup: %v", id, err)
		}
	}

	cleanupCfg := Config{Address: d.Address, Namespace: containerdtest.Namespace, StateDir: state}
	log := testr.New(t)

	// While a container kubelet made for Pod a runs, nothing is removed.
	img, err := d.Client.GetImage(dctx, containerdtest.TestImage)
	if err != nil {
		t.Fatal(err)
	}
	agentCtr := newContainer("agent-ctr-a", map[string]string{criLabelPodUID: "pod-a", criLabelKind: "container"},
		client.WithNewSnapshot("agent-ctr-a", img),
		client.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "60"),
			oci.WithCgroup(filepath.Join(containerdtest.CgroupParent(t, "cleanup-agent"), "agent-ctr-a"))))
	task, err := agentCtr.NewTask(dctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = task.Delete(dctx, client.WithProcessKill) })
	if err := task.Start(dctx); err != nil {
		t.Fatal(err)
	}
	if n, err := CleanupAgentPod(ctx, cleanupCfg, "pod-a", log); err == nil || n != 0 {
		t.Errorf("CleanupAgentPod while Pod a's agent container runs: %d removed, %v; want an error", n, err)
	}
	if got := containersOf("pod-a"); !slices.Equal(got, aIDs) {
		t.Errorf("containers of a after a refused cleanup: %v, want %v", got, aIDs)
	}
	exited, err := task.Wait(dctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(dctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	// The stopped task may stay (kubelet removes it later): stopped is enough.

	// What a crash can leave with no container to name it: a warm
	// container's directory made before its container, a log whose
	// container went.
	stray := []string{filepath.Join(podStateDir(state, "pod-a"), "warm", warmIDPrefix+"stray"),
		filepath.Join(podStateDir(state, "pod-a"), "logs", idPrefix+"gone.log")}
	if err := os.MkdirAll(stray[0], 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stray[1], []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	aFiles = append(aFiles, stray...)

	n, err := CleanupAgentPod(ctx, cleanupCfg, "pod-a", log)
	if err != nil || n != len(aIDs) {
		t.Fatalf("CleanupAgentPod: %d removed, %v; want %d, no error", n, err, len(aIDs))
	}
	if got := containersOf("pod-a"); len(got) != 0 {
		t.Errorf("containers of a left: %v", got)
	}
	for _, id := range aIDs {
		if _, err := snapshots.Stat(dctx, id); !errdefs.IsNotFound(err) {
			t.Errorf("snapshot of %s after the cleanup: %v, want not found", id, err)
		}
	}
	for _, f := range aFiles {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", f, err)
		}
	}
	if _, err := os.Stat(podStateDir(state, "pod-a")); !os.IsNotExist(err) {
		t.Errorf("agent Pod a's state directory is still there (%v)", err)
	}
	// b's are all there, its sandbox still running, its logs kept.
	// (b still runs: it may have added warm containers meanwhile.)
	got := containersOf("pod-b")
	for _, id := range bIDs {
		if !slices.Contains(got, id) {
			t.Errorf("container %s of b went with a's cleanup: b has %v", id, got)
		}
	}
	c, err := d.Client.LoadContainer(dctx, bRun.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	if bt, err := c.Task(dctx, nil); err != nil {
		t.Errorf("b-run's task: %v", err)
	} else if st, err := bt.Status(dctx); err != nil || st.Status != client.Running {
		t.Errorf("b-run after a's cleanup: %+v %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(podStateDir(state, "pod-b"), "logs", bRun.ContainerID+".log")); err != nil {
		t.Errorf("b-run's logs: %v", err)
	}

	// Again: nothing left to do, no error.
	if n, err := CleanupAgentPod(ctx, cleanupCfg, "pod-a", log); err != nil || n != 0 {
		t.Errorf("CleanupAgentPod again: %d removed, %v", n, err)
	}
	if _, err := CleanupAgentPod(ctx, cleanupCfg, "", log); err == nil {
		t.Error("CleanupAgentPod without a UID did not fail")
	}
}
