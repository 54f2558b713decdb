package containerd_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
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

// logFiles are the files of a container's log in the state directory (of a
// runtime without a Pod UID), with their sizes.
func (e *env) logFiles(t *testing.T, id string) map[string]int64 {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(e.state, "logs", id+".log*"))
	if err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		sizes[filepath.Base(p)] = fi.Size()
	}
	return sizes
}

// logOutput is the bytes of output that the files of a container's log
// hold (their records' content, and the newlines of full records), as
// logFiles lists them.
func (e *env) logOutput(t *testing.T, id string) int64 {
	t.Helper()
	var n int64
	for name := range e.logFiles(t, id) {
		data, err := os.ReadFile(filepath.Join(e.state, "logs", name))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.SplitAfter(data, []byte("\n")) {
			r, ok := sandboxlog.ParseRecord(bytes.TrimSuffix(line, []byte("\n")))
			switch {
			case !ok:
				n += int64(len(line))
			case r.Partial:
				n += int64(len(r.Content))
			default:
				n += int64(len(r.Content)) + 1
			}
		}
	}
	return n
}

// TestLogRotation: a sandbox writing as fast as it can (yes) leaves at most
// LogMaxBytes*LogMaxFiles on disk, and its newest lines are read, after the
// rotated file's; a sandbox writing a few lines has all of them; the logger
// goes on writing while the agent is away. Cold and warm (a warm container's
// logger is started with it, and logs its sandbox's output).
func TestLogRotation(t *testing.T) {
	const maxBytes, maxFiles = 64 << 10, 2
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			configure := func(c *containerd.Config) {
				c.Agent, c.LogMaxBytes, c.LogMaxFiles = "agent-logs-"+mode, maxBytes, maxFiles
			}
			rt := e.runtimeWith(t, mode == "warm", configure)
			s0 := starter{rt: rt, warm: mode == "warm"}

			t.Run("a fast writer is bounded", func(t *testing.T) {
				uid := "logs-yes-" + mode
				st := s0.create(t, spec(uid, "sh", "-c", "yes & sleep 2; kill $!; wait; echo the end; exec sleep 60"))
				if st.State != api.StateRunning {
					t.Fatalf("create: %+v", st)
				}
				defer rt.DeleteSandbox(ctx, uid)
				deadline := time.Now().Add(10 * time.Second)
				out := logs(t, rt, uid, "the end")
				for !strings.Contains(out, "the end") && time.Now().Before(deadline) {
					out = logs(t, rt, uid, "the end")
				}
				if !strings.HasSuffix(out, "y\nthe end\n") {
					t.Fatalf("the newest lines are not read (at %d of %d): ...%q", strings.Index(out, "the end"), len(out), out[max(0, len(out)-40):])
				}
				lines := strings.Split(strings.TrimSuffix(out, "the end\n"), "\n")
				for i, l := range lines[:len(lines)-1] {
					if l != "y" {
						t.Fatalf("line %d of the log is %q, want y (rotation splits no line)", i, l)
					}
				}
				files := e.logFiles(t, st.ContainerID)
				var total int64
				for _, size := range files {
					total += size
				}
				// The files hold records (sandboxlog): what they hold of the
				// output, as it was read.
				output := e.logOutput(t, st.ContainerID)
				if len(files) != maxFiles || total > maxBytes*maxFiles || int64(len(out)) != output {
					t.Errorf("log files %v (%d bytes, %d of output), read %d bytes; want %d files, at most %d bytes, all read",
						files, total, output, len(out), maxFiles, maxBytes*maxFiles)
				}
			})

			t.Run("a few lines are all there", func(t *testing.T) {
				uid := "logs-few-" + mode
				st := s0.create(t, spec(uid, "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done"))
				if st.State != api.StateRunning {
					t.Fatalf("create: %+v", st)
				}
				defer rt.DeleteSandbox(ctx, uid)
				containerd.WaitExit(t, rt, uid)
				want := "line 1\nline 2\nline 3\nline 4\nline 5\n"
				if got := logs(t, rt, uid, "line 5"); got != want {
					t.Errorf("logs %q, want %q", got, want)
				}
			})

			t.Run("the logger outlives the agent", func(t *testing.T) {
				uid := "logs-restart-" + mode
				first := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) { configure(c); c.Agent += "-restart" })
				st := starter{rt: first, warm: mode == "warm"}.create(t,
					spec(uid, "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"))
				if st.State != api.StateRunning {
					t.Fatalf("create: %+v", st)
				}
				logs(t, first, uid, "tick 3")
				first.Close() // the agent goes away; the sandbox and its logger stay
				before := e.logFiles(t, st.ContainerID)[st.ContainerID+".log"]
				time.Sleep(time.Second)
				if after := e.logFiles(t, st.ContainerID)[st.ContainerID+".log"]; after < before+50 {
					t.Errorf("the log grew from %d to %d bytes in a second without the agent", before, after)
				}
				second := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) { configure(c); c.Agent += "-restart" })
				if _, err := second.ListSandboxes(ctx); err != nil {
					t.Fatal(err)
				}
				if out := logs(t, second, uid, "tick 20"); !strings.Contains(out, "tick 0\n") || !strings.Contains(out, "tick 20\n") {
					t.Errorf("logs after the restart: %q", out)
				}
				if err := second.DeleteSandbox(ctx, uid); err != nil {
					t.Fatal(err)
				}
				if files := e.logFiles(t, st.ContainerID); len(files) != 0 {
					t.Errorf("log files left after the delete: %v", files)
				}
			})
		})
	}
}

// TestEphemeralStorage: a sandbox with a 16 MiB limit that writes 64 MiB in
// 1 MiB steps is stopped and fails with EphemeralStorageExceeded and the
// figures, which a restarted agent reports too; one that stays under its
// limit runs on. Cold and warm.
func TestEphemeralStorage(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			configure := func(c *containerd.Config) {
				c.Agent, c.StorageCheckPeriod = "agent-storage-"+mode, 200*time.Millisecond
			}
			rt := e.runtimeWith(t, mode == "warm", configure)
			s0 := starter{rt: rt, warm: mode == "warm"}
			writer := func(uid string, mib int) api.SandboxSpec {
				s := spec(uid, "sh", "-c", fmt.Sprintf(
					"i=0; while [ $i -lt %d ]; do head -c 1048576 /dev/zero >> /data; i=$((i+1)); sleep 0.05; done; echo wrote $i MiB; exec sleep 60", mib))
				s.EphemeralStorageBytes = 16 << 20
				return s
			}

			over, under := "storage-over-"+mode, "storage-under-"+mode
			if st := s0.create(t, writer(over, 64)); st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, over)
			if st := s0.create(t, writer(under, 4)); st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, under)

			final := containerd.WaitExit(t, rt, over)
			if final.State != api.StateExited || final.Reason != api.ReasonEphemeralStorageExceeded ||
				final.ExitCode == nil || *final.ExitCode != 137 || !strings.Contains(final.Message, "limit of 16777216 bytes (16.0 MiB)") {
				t.Errorf("final status %+v, want Exited 137 EphemeralStorageExceeded with the figures", final)
			}
			if out := logs(t, rt, over); strings.Contains(out, "wrote 64 MiB") {
				t.Errorf("the sandbox wrote everything: %q", out)
			}
			t.Logf("stopped: %s", final.Message)

			// Under its limit: it wrote all and still runs.
			logs(t, rt, under, "wrote 4 MiB")
			time.Sleep(500 * time.Millisecond)
			all, err := rt.ListSandboxes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range all {
				if st.UID == under && st.State != api.StateRunning {
					t.Errorf("the sandbox under its limit: %+v", st)
				}
			}

			// A restarted agent reports the reason from the container.
			rt.Close()
			again := e.runtimeWith(t, mode == "warm", configure)
			all, err = again.ListSandboxes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, st := range all {
				if st.UID == over {
					found = true
					if st.Reason != api.ReasonEphemeralStorageExceeded || st.Message != final.Message {
						t.Errorf("after a restart: %+v, want %s %q", st, api.ReasonEphemeralStorageExceeded, final.Message)
					}
				}
			}
			if !found {
				t.Error("the stopped sandbox is not listed after a restart")
			}
			_ = again.DeleteSandbox(ctx, over)
			_ = again.DeleteSandbox(ctx, under)
		})
	}
}

// nonRootImage is a busybox image whose USER is 1000:1000.
const nonRootImage = "docker.io/fast-sandbox/testbox-nonroot:latest"

// importImage builds a busybox image with cfg and imports it, unpacked.
func (e *env) importImage(t *testing.T, ref string, cfg ociimage.Config) {
	t.Helper()
	files, err := ociimage.BusyboxFiles("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := ociimage.Build(&buf, ref, cfg, files); err != nil {
		t.Fatal(err)
	}
	ctx := e.d.Context()
	imgs, err := e.d.Client.Import(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		if err := client.NewImage(e.d.Client, img).Unpack(ctx, "overlayfs"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReadOnlyRootFilesystem: with the agent's ReadOnlyRootFilesystem, a
// sandbox cannot write its root filesystem and has a bounded tmpfs at /tmp,
// cold and warm.
func TestReadOnlyRootFilesystem(t *testing.T) {
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) {
				c.Agent, c.ReadOnlyRootFilesystem = "agent-ro-"+mode, true
			})
			uid := "ro-" + mode
			st := starter{rt: rt, warm: mode == "warm"}.create(t, spec(uid, "sh", "-c",
				"touch /etc/x 2>&1; echo written > /tmp/f && cat /tmp/f; df -k /tmp | tail -1"))
			if st.State != api.StateRunning {
				t.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(context.Background(), uid)
			if final := containerd.WaitExit(t, rt, uid); final.ExitCode == nil || *final.ExitCode != 0 {
				t.Errorf("final %+v", final)
			}
			out := logs(t, rt, uid, "tmpfs")
			for _, want := range []string{"Read-only file system", "written\n", fmt.Sprintf("tmpfs %d ", containerd.TmpSizeBytes>>10)} {
				if !strings.Contains(strings.Join(strings.Fields(out), " ")+"\n", strings.TrimSuffix(want, "\n")) {
					t.Errorf("output %q lacks %q", out, want)
				}
			}
		})
	}
}

// TestRunAsNonRoot: with the agent's RunAsNonRoot, a sandbox of an image
// whose user is root fails with RunAsNonRootViolation before its command
// runs (and no warm container is made for that image); one of a non-root
// image runs as its user, cold and warm.
func TestRunAsNonRoot(t *testing.T) {
	e := setup(t)
	e.importImage(t, nonRootImage, ociimage.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}, User: "1000:1000"})
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) {
				c.Agent, c.RunAsNonRoot = "agent-nonroot-"+mode, true
			})
			marker := filepath.Join(t.TempDir(), "ran")
			root := spec("root-"+mode, "sh", "-c", "echo ran > "+marker)
			if mode == "warm" {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := rt.WaitWarm(wctx, root)
				cancel()
				if err == nil || !strings.Contains(err.Error(), "runAsNonRoot") {
					t.Errorf("a warm container for a root image: %v", err)
				}
			}
			st := rt.CreateSandbox(ctx, root)
			if st.State != api.StateFailed || st.Reason != api.ReasonRunAsNonRootViolation || !strings.Contains(st.Message, "uid 0") {
				t.Errorf("root sandbox: %+v, want Failed RunAsNonRootViolation", st)
			}
			if _, err := e.d.Client.LoadContainer(e.d.Context(), containerd.ContainerID(root.UID)); err == nil {
				t.Error("a container was made for a sandbox that may not run")
			}

			uid := "nonroot-" + mode
			s := spec(uid, "sh", "-c", "echo uid $(id -u) gid $(id -g)")
			s.Image = nonRootImage
			if st := (starter{rt: rt, warm: mode == "warm"}).create(t, s); st.State != api.StateRunning {
				t.Fatalf("non-root sandbox: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			containerd.WaitExit(t, rt, uid)
			if out := logs(t, rt, uid, "uid"); !strings.Contains(out, "uid 1000 gid 1000") {
				t.Errorf("output %q, want uid 1000 gid 1000", out)
			}
		})
	}
}

// hostUID is the real uid, on the host, of a container's process.
func (e *env) hostUID(t *testing.T, id string) uint32 {
	t.Helper()
	ctx := e.d.Context()
	c, err := e.d.Client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", task.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			var uid uint32
			fmt.Sscan(rest, &uid)
			return uid
		}
	}
	t.Fatalf("no Uid in the status of the process of %s", id)
	return 0
}

func (e *env) snapshots(t *testing.T) int {
	t.Helper()
	n := 0
	if err := e.d.Client.SnapshotService("overlayfs").Walk(e.d.Context(), func(context.Context, snapshots.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUserNamespaces: with user namespaces, root in a sandbox is a host uid
// of a range of 65536 that no other sandbox has, even after an agent
// restart, and its image's files are its own; with them disabled root is
// root. Deleting the sandboxes leaves no range taken and no copy of the
// image. Cold and warm.
func TestUserNamespaces(t *testing.T) {
	e := setup(t)
	snapshotsBefore := e.snapshots(t)
	ranges := map[uint32]string{}
	for _, mode := range []string{"cold", "warm"} {
		for _, userns := range []string{containerd.UserNamespacesRequired, containerd.UserNamespacesDisabled} {
			t.Run(mode+"/"+userns, func(t *testing.T) {
				ctx := context.Background()
				configure := func(c *containerd.Config) {
					c.Agent, c.UserNamespaces = "agent-userns-"+mode+"-"+userns, userns
				}
				rt := e.runtimeWith(t, mode == "warm", configure)
				create := func(rt *containerd.Runtime, uid string) {
					t.Helper()
					st := starter{rt: rt, warm: mode == "warm"}.create(t, spec(uid, "sh", "-c",
						"echo uid_map $(cat /proc/self/uid_map); echo owner $(stat -c %u:%g /bin/busybox) id $(id -u):$(id -g); exec sleep 60"))
					if st.State != api.StateRunning {
						t.Fatalf("create: %+v", st)
					}
					out := logs(t, rt, uid, " id ")
					var inside, host, size uint64
					fmt.Sscanf(out, "uid_map %d %d %d", &inside, &host, &size)
					proc := e.hostUID(t, st.ContainerID)
					if !strings.Contains(out, "owner 0:0 id 0:0") {
						t.Errorf("%s: output %q: the image's files and the process should be root's inside", uid, out)
					}
					if userns == containerd.UserNamespacesDisabled {
						if inside != 0 || host != 0 || size != 1<<32-1 || proc != 0 {
							t.Errorf("%s: uid_map %d %d %d, host uid %d; want no user namespace", uid, inside, host, size, proc)
						}
						return
					}
					if inside != 0 || host < 1<<31 || size != 65536 || uint64(proc) != host {
						t.Errorf("%s: uid_map %d %d %d, host uid %d; want root mapped to an unprivileged range of 65536", uid, inside, host, size, proc)
					}
					if other, taken := ranges[uint32(host)]; taken {
						t.Errorf("%s has the range of %s", uid, other)
					}
					ranges[uint32(host)] = uid
				}
				base := "userns-" + mode + "-" + strings.ToLower(userns)
				create(rt, base+"-1")
				create(rt, base+"-2")
				// An agent restart: the ranges taken stay taken.
				rt.Close()
				rt = e.runtimeWith(t, mode == "warm", configure)
				create(rt, base+"-3")
				for _, n := range []string{"-1", "-2", "-3"} {
					if err := rt.DeleteSandbox(ctx, base+n); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
	ls, err := e.d.Client.LeasesService().List(e.d.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		t.Errorf("lease %s left (labels %v)", l.ID, l.Labels)
	}
	if n := e.snapshots(t); n != snapshotsBefore {
		t.Errorf("%d snapshots after removing every sandbox, %d before", n, snapshotsBefore)
	}
}

// TestDefaultSecurity: inside a sandbox /proc/sys is read-only, /proc/kcore
// and /proc/keys are masked, and the effective capabilities are containerd's
// default set less CAP_NET_RAW, CAP_MKNOD, CAP_AUDIT_WRITE, CAP_SETFCAP and
// CAP_SYS_CHROOT (so no CAP_SYS_ADMIN, which a warm container's init holds
// until the exec, nor CAP_SYS_MODULE), with and without user namespaces,
// cold and warm.
func TestDefaultSecurity(t *testing.T) {
	// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE.
	const wantCaps = "00000000000005fb"
	e := setup(t)
	for _, mode := range []string{"cold", "warm"} {
		for _, userns := range []string{containerd.UserNamespacesAuto, containerd.UserNamespacesDisabled} {
			t.Run(mode+"/"+userns, func(t *testing.T) {
				rt := e.runtimeWith(t, mode == "warm", func(c *containerd.Config) {
					c.Agent, c.UserNamespaces = "agent-security-"+mode+"-"+userns, userns
				})
				uid := "security-" + mode + "-" + strings.ToLower(userns)
				st := starter{rt: rt, warm: mode == "warm"}.create(t, spec(uid, "sh", "-c",
					"grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status; (echo x > /proc/sys/kernel/domainname) 2>&1 && echo proc-sys-written; "+
						"for f in /proc/kcore /proc/keys /proc/timer_list; do echo $f $(stat -c '%F %t:%T' $f 2>&1); done; echo done"))
				if st.State != api.StateRunning {
					t.Fatalf("create: %+v", st)
				}
				defer rt.DeleteSandbox(context.Background(), uid)
				containerd.WaitExit(t, rt, uid)
				out := logs(t, rt, uid, "done")
				wants := []string{"CapEff:\t" + wantCaps, "CapPrm:\t" + wantCaps, "CapBnd:\t" + wantCaps, "Read-only file system"}
				masked := 0
				for _, f := range []string{"/proc/kcore", "/proc/keys", "/proc/timer_list"} {
					if _, err := os.Stat(f); err == nil { // this kernel has it: the sandbox sees /dev/null
						wants = append(wants, f+" character special file 1:3")
						masked++
					}
				}
				if masked == 0 {
					t.Error("none of the masked files to check is on this node")
				}
				for _, want := range wants {
					if !strings.Contains(out, want) {
						t.Errorf("output %q lacks %q", out, want)
					}
				}
				if strings.Contains(out, "proc-sys-written") {
					t.Errorf("/proc/sys was written: %q", out)
				}
			})
		}
	}
}
