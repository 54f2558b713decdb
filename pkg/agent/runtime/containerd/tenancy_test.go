package containerd_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
)

// cgroupFile is the path of a file of a sandbox container's cgroup in the
// hierarchy of controller (cgroup v1; v2 has one hierarchy).
func (e *env) cgroupFile(id, controller, file string) string {
	if cgroups.Mode() == cgroups.Unified {
		return filepath.Join("/sys/fs/cgroup", e.parent, id, file)
	}
	return filepath.Join("/sys/fs/cgroup", controller, e.parent, id, file)
}

func readInt(t *testing.T, path string) int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// TestPidsLimit: a fork bomb in a sandbox with a pids limit of 32 cannot
// have more than 32 processes (the shell reports its failed forks), cold
// and warm (where the limit is written when the warm container is claimed);
// a sandbox without a limit of its own gets the agent's default; the agent
// goes on creating sandboxes.
func TestPidsLimit(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) { c.Agent = "agent-pids-" + mode })
			s0 := starter{rt: rt, warm: mode == "warm"}

			uid := "pids-bomb-" + mode
			s := spec(uid, "sh", "-c",
				"( i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo spawned all ) 2>&1; echo bomb ended; exec sleep 60")
			s.PidsLimit = 32
			st := s0.create(t, s)
			if st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			out := logs(t, rt, uid, "bomb ended")
			if !strings.Contains(out, "can't fork") || strings.Contains(out, "spawned all") {
				t.Errorf("the shell did not report failed forks: %q", out)
			}
			if max := readInt(t, e.cgroupFile(st.ContainerID, "pids", "pids.max")); max != 32 {
				t.Errorf("pids.max = %d, want 32", max)
			}
			cur := readInt(t, e.cgroupFile(st.ContainerID, "pids", "pids.current"))
			if cur > 32 || cur < 20 {
				t.Errorf("pids.current = %d, want at most 32 (and the bomb's sleeps)", cur)
			}
			t.Logf("pids.current %d; output %q", cur, out)

			// The agent's default, and the agent still works.
			uid = "pids-default-" + mode
			st = s0.create(t, spec(uid, "sleep", "60"))
			if st.State != api.StateRunning {
				t.Fatalf("create after the bomb: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			if max := readInt(t, e.cgroupFile(st.ContainerID, "pids", "pids.max")); max != containerd.DefaultPidsLimit {
				t.Errorf("pids.max of a sandbox without a limit = %d, want the default %d", max, containerd.DefaultPidsLimit)
			}
			if _, err := rt.ListSandboxes(ctx); err != nil {
				t.Errorf("listing sandboxes after the bomb: %v", err)
			}
		})
	}
}
