package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// die plays the death of an agent's process: its connections close and
// nothing is cleaned up.
func die(r *Runtime) {
	if r.warm.enabled {
		r.warm.stop()
		<-r.warm.done
		r.mu.Lock()
		for _, cs := range r.warm.free {
			for _, c := range cs {
				c.conn.Close()
			}
		}
		r.mu.Unlock()
	}
	r.cancel()
	r.client.Close()
}

// TestCrashAtEveryStep stops a create at each of its steps, cold and warm,
// as if the agent died there, with a command that keeps running and one
// that exits at once. A new agent over the same containerd then adopts
// (ListSandboxes) and creates the still-desired sandbox, as a sync does.
// The sandbox must end with exactly one container, its command run exactly
// once (each run appends a line to a file in a host directory), running or
// exited with its own code, and never ContainerLost for what never ran.
// Row "lost" plays a started sandbox whose task containerd lost while the
// agent was away: it is ContainerLost and is not run again.
func TestCrashAtEveryStep(t *testing.T) {
	d := startContainerd(t)
	countDir := t.TempDir()
	// Sandboxes may run as an unprivileged host user (user namespaces).
	if err := os.Chmod(countDir, 0o777); err != nil {
		t.Fatal(err)
	}
	extraSpecOpts = []oci.SpecOpts{oci.WithMounts([]specs.Mount{
		{Destination: "/count", Type: "bind", Source: countDir, Options: []string{"rbind", "rw"}},
	})}
	t.Cleanup(func() { extraSpecOpts, failAt = nil, nil })

	type row struct {
		warm bool
		step string
	}
	var rows []row
	for _, s := range []string{stepColdImage, stepColdContainer, stepColdTask, stepColdStarted, stepColdLimited, stepColdLabelled, "lost"} {
		rows = append(rows, row{false, s})
	}
	for _, s := range []string{stepWarmClaimed, stepWarmSent, stepWarmConfirmed, stepWarmLimited, stepWarmLabelled, "lost"} {
		rows = append(rows, row{true, s})
	}
	n := 0
	for _, rw := range rows {
		for _, exits := range []bool{false, true} {
			n++
			mode := "cold"
			if rw.warm {
				mode = "warm"
			}
			name := fmt.Sprintf("%s/%s/exits=%v", mode, rw.step, exits)
			uid := fmt.Sprintf("crash-%d", n)
			t.Run(name, func(t *testing.T) {
				// Short: the init's socket is in it (108 bytes at most).
				state, err := os.MkdirTemp("", "fsbx-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(state) })
				cfg := Config{Address: d.Address, Namespace: containerdtest.Namespace,
					CgroupParent: containerdtest.CgroupParent(t, "crash"), Agent: "agent-" + uid, StateDir: state,
					InitBinary: containerdtest.SandboxInit(t)}
				if rw.warm {
					cfg.WarmPerImage = 1
				}
				tail := "exec sleep 60"
				if exits {
					tail = "exit 3"
				}
				spec := api.SandboxSpec{UID: uid, Namespace: "ns", Name: uid, Image: containerdtest.TestImage,
					Command: []string{"sh", "-c", "echo run >> /count/" + uid + "; " + tail}, CPUMillis: 100, MemoryBytes: 64 << 20}
				testCrashAt(t, d, cfg, spec, rw.warm, rw.step, exits, filepath.Join(countDir, uid))
			})
		}
	}
}

func testCrashAt(t *testing.T, d *containerdtest.Daemon, cfg Config, spec api.SandboxSpec, warm bool, step string, exits bool, countFile string) {
	ctx := context.Background()
	first := initialized(t, cfg)
	if warm {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := first.WaitWarm(wctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	if step == "lost" {
		st := first.CreateSandbox(ctx, spec)
		if st.State != api.StateRunning {
			t.Fatalf("create: %+v", st)
		}
		runs(t, countFile, 1)
		die(first)
		// containerd loses the task (it or the node restarted).
		c, err := d.Client.LoadContainer(d.Context(), st.ContainerID)
		if err != nil {
			t.Fatal(err)
		}
		task, err := c.Task(d.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := task.Delete(d.Context(), client.WithProcessKill); err != nil {
			t.Fatal(err)
		}
	} else {
		reached := false
		failAt = func(s string) bool {
			reached = reached || s == step
			return s == step
		}
		st := first.CreateSandbox(ctx, spec)
		failAt = nil
		if !reached {
			t.Fatalf("the create did not reach step %q: %+v", step, st)
		}
		die(first)
	}

	second := initialized(t, cfg)
	defer second.Close()
	all, err := second.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range all {
		if st.Reason == api.ReasonContainerLost && step != "lost" {
			t.Errorf("adopted as lost: %+v", st)
		}
	}
	st := second.CreateSandbox(ctx, spec)
	switch {
	case step == "lost":
		if st.State != api.StateFailed || st.Reason != api.ReasonContainerLost {
			t.Errorf("a sandbox whose task was lost: %+v, want Failed/ContainerLost", st)
		}
	case exits:
		if st.State == api.StateRunning {
			st = waitExitOf(t, second, spec.UID)
		}
		if st.State != api.StateExited || st.ExitCode == nil || *st.ExitCode != 3 || st.Reason != api.ReasonError {
			t.Errorf("final status %+v, want Exited with code 3", st)
		}
	default:
		if st.State != api.StateRunning {
			t.Errorf("final status %+v, want Running", st)
		} else {
			expectCPUQuota(t, cfg.CgroupParent, st.ContainerID, cpuQuota(spec.CPUMillis))
		}
	}
	runs(t, countFile, 1)

	cs, err := d.Client.Containers(d.Context(), fmt.Sprintf("labels.%q==%q", LabelUID, spec.UID))
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 {
		t.Errorf("%d containers of the sandbox, want 1", len(cs))
	}
	// A later look (a restarted agent's, or the next sync's) agrees.
	again, err := second.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0].State != st.State || again[0].Reason != st.Reason {
		t.Errorf("listed %+v after the create, want one sandbox %s/%s", again, st.State, st.Reason)
	}
	if err := second.DeleteSandbox(ctx, spec.UID); err != nil {
		t.Fatal(err)
	}
}

func waitExitOf(t *testing.T, rt *Runtime, uid string) api.SandboxStatus {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case st := <-rt.Exits():
			if st.UID == uid {
				return st
			}
		case <-timeout:
			t.Fatalf("sandbox %s did not exit", uid)
		}
	}
}

// runs checks that the command ran want times: it waits for that many
// lines, then a little more for any further one.
func runs(t *testing.T, file string, want int) {
	t.Helper()
	count := func() int {
		data, _ := os.ReadFile(file)
		return strings.Count(string(data), "run\n")
	}
	deadline := time.Now().Add(5 * time.Second)
	for count() < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if got := count(); got != want {
		t.Errorf("the command ran %d times, want %d", got, want)
	}
}

// expectCPUQuota checks a sandbox container's CFS quota in its cgroup.
func expectCPUQuota(t *testing.T, parent, id string, quota int64) {
	t.Helper()
	path, want := filepath.Join("/sys/fs/cgroup/cpu", parent, id, "cpu.cfs_quota_us"), fmt.Sprint(quota)
	if cgroups.Mode() == cgroups.Unified {
		path, want = filepath.Join("/sys/fs/cgroup", parent, id, "cpu.max"), fmt.Sprintf("%d %d", quota, cpuPeriod)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("reading %s: %v", path, err)
		return
	}
	if got := strings.TrimSpace(string(data)); got != want {
		t.Errorf("%s = %q, want %q", path, got, want)
	}
}
