package containerd_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	containerdtest "github.com/fast-sandbox/fast-sandbox/test/containerd"
)

// BenchmarkStart measures one sandbox start (create → process running) on a
// real containerd, side by side with `ctr run -d` on the same daemon:
//
//	go test ./pkg/agent/runtime/containerd/ -run '^$' -bench Start -benchtime 50x
//
// "warm" starts each sandbox in a warm container made beforehand (outside
// the timer); "cold" creates a container for it. Both run with the default
// configuration (user namespaces when the node allows, bounded logs); the
// "-no-userns" variants without user namespaces. The "-egress" variants
// start networkMode Egress sandboxes, with the network Manager in a
// throwaway agent netns: cold ones pay for the veth's wiring (Attach) on
// the start path, reported as attach-p50-ms, warm ones were wired when
// made. Cold starts with user namespaces vary by tens of milliseconds from
// run to run (the copy of the remapped root filesystem); compare the
// "-no-userns" pairs, or attach-p50-ms, for what Egress adds.
func BenchmarkStart(b *testing.B) {
	e := setup(b)
	n := newNetEnv(b)
	ctx := context.Background()
	b.Run("ctr-run", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			id := fmt.Sprintf("ctr-%d", i)
			cmd := exec.Command("ctr", "--address", e.d.Address, "-n", containerdtest.Namespace,
				"run", "-d", "--cgroup", e.parent+"/"+id, containerdtest.TestImage, id, "sleep", "60")
			start := time.Now()
			out, err := cmd.CombinedOutput()
			elapsed := time.Since(start)
			if err != nil {
				b.Fatalf("ctr run: %v\n%s", err, out)
			}
			b.ReportMetric(0, "ns/op")
			report(b, i, elapsed)
			b.StopTimer()
			_ = exec.Command("ctr", "--address", e.d.Address, "-n", containerdtest.Namespace, "task", "kill", "-s", "KILL", id).Run()
			time.Sleep(50 * time.Millisecond)
			_ = exec.Command("ctr", "--address", e.d.Address, "-n", containerdtest.Namespace, "task", "rm", "-f", id).Run()
			_ = exec.Command("ctr", "--address", e.d.Address, "-n", containerdtest.Namespace, "container", "rm", id).Run()
			b.StartTimer()
		}
	})
	// Each None mode is followed by its Egress variant: a run leaves work
	// behind (the removed containers' snapshots and namespaces) that slows
	// the next one down, whatever its network.
	for _, mode := range []string{"cold", "cold-egress", "warm", "warm-egress",
		"cold-no-userns", "cold-egress-no-userns", "warm-no-userns", "warm-egress-no-userns"} {
		warm := strings.HasPrefix(mode, "warm")
		egress := strings.Contains(mode, "-egress")
		b.Run(mode, func(b *testing.B) {
			// The Attaches of the timed cold creates (attach-p50-ms: the
			// part of an Egress cold start that wires the network). Warm
			// starts attach nothing: the refiller does, meanwhile.
			var attachMu sync.Mutex
			var attaches []time.Duration
			timing := false
			containerd.OnAttach(func(_ string, took time.Duration) {
				attachMu.Lock()
				if timing {
					attaches = append(attaches, took)
				}
				attachMu.Unlock()
			})
			defer containerd.OnAttach(nil)
			setTiming := func(on bool) {
				attachMu.Lock()
				timing = on
				attachMu.Unlock()
			}
			rt := e.runtimeWith(b, warm, func(c *containerd.Config) {
				c.Agent = "agent-bench-" + mode
				if strings.HasSuffix(mode, "-no-userns") {
					c.UserNamespaces = containerd.UserNamespacesDisabled
				}
				c.Egress = n.config()
			})
			defer rt.Close()
			for i := 0; i < b.N; i++ {
				s := spec(fmt.Sprintf("bench-%s-%d", mode, i), "sleep", "60")
				s.CPUMillis, s.MemoryBytes = 100, 64<<20
				if egress {
					s.NetworkMode = api.NetworkEgress
				}
				if warm {
					wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					if err := rt.WaitWarm(wctx, s); err != nil {
						b.Fatal(err)
					}
					cancel()
				}
				setTiming(!warm)
				start := time.Now()
				st := rt.CreateSandbox(ctx, s)
				elapsed := time.Since(start)
				setTiming(false)
				if st.State != api.StateRunning {
					b.Fatalf("create: %+v", st)
				}
				b.ReportMetric(0, "ns/op")
				if i == b.N-1 && egress && !warm {
					attachMu.Lock()
					slices.Sort(attaches)
					if len(attaches) > 0 {
						b.ReportMetric(float64(attaches[len(attaches)/2].Microseconds())/1000, "attach-p50-ms")
					}
					attachMu.Unlock()
				}
				report(b, i, elapsed)
				b.StopTimer()
				_ = rt.DeleteSandbox(ctx, s.UID)
				b.StartTimer()
			}
		})
	}
}

var samples = map[string][]time.Duration{}

// report records one start and, at the last, reports p50 and p90.
func report(b *testing.B, i int, d time.Duration) {
	samples[b.Name()] = append(samples[b.Name()], d)
	if i != b.N-1 {
		return
	}
	ds := samples[b.Name()]
	delete(samples, b.Name())
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(ds[len(ds)*9/10].Microseconds())/1000, "p90-ms")
}

// BenchmarkPauseResume measures Pause and Resume of a running sandbox (the
// cgroup freezer, through containerd's shim and the OCI runtime), with one
// process and with 50:
//
//	go test ./pkg/agent/runtime/containerd/ -run '^$' -bench PauseResume -benchtime 200x
//
// It reports the p50 and p99 of each.
func BenchmarkPauseResume(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	rt := e.runtimeWith(b, false, func(c *containerd.Config) { c.Agent = "agent-bench-pause" })
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"1-process", []string{"sleep", "3600"}},
		{"50-processes", []string{"sh", "-c", "i=0; while [ $i -lt 49 ]; do sleep 3600 & i=$((i+1)); done; wait"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			uid := "bench-pause-" + tc.name
			if st := rt.CreateSandbox(ctx, spec(uid, tc.cmd...)); st.State != api.StateRunning {
				b.Fatalf("create: %+v", st)
			}
			defer rt.DeleteSandbox(ctx, uid)
			time.Sleep(200 * time.Millisecond) // its processes started
			var pauses, resumes []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if err := rt.Pause(ctx, uid); err != nil {
					b.Fatal(err)
				}
				paused := time.Now()
				if err := rt.Resume(ctx, uid); err != nil {
					b.Fatal(err)
				}
				pauses, resumes = append(pauses, paused.Sub(start)), append(resumes, time.Since(paused))
			}
			b.StopTimer()
			b.ReportMetric(0, "ns/op")
			for _, m := range []struct {
				name string
				ds   []time.Duration
			}{{"pause", pauses}, {"resume", resumes}} {
				slices.Sort(m.ds)
				p50, p99 := m.ds[len(m.ds)/2], m.ds[min(len(m.ds)-1, len(m.ds)*99/100)]
				b.ReportMetric(float64(p50.Microseconds())/1000, m.name+"-p50-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, m.name+"-p99-ms")
			}
		})
	}
}

// BenchmarkExec measures Exec of `true` into a running sandbox (from the
// call to its return: the process made, started, exited and removed), cold
// and warm, with and without user namespaces, with a 100m CPU limit and
// without one, beside a baseline on the same containerd: a plain container
// made with the containerd client (no agent) under the same 100m quota and
// a task.Exec of `true` into it with the container's process spec and
// FIFO streams, as CRI does for kubelet ("plain": no seccomp profile, as a
// Pod's default; "plain-seccomp": containerd's default profile, as
// sandboxes have; "plain-seccomp-native": that profile for x86_64 alone):
//
//	go test ./pkg/agent/runtime/containerd/ -run '^$' -bench Exec -benchtime 30x
//
// Besides p50 and p99 it reports, per exec, the CPU time charged to the
// container's cgroup (cpu-ms: cpuacct) and the CFS periods in which it was
// throttled (throttled), and the cgroup's CPU use while idle for 300ms
// before the first exec (idle-cpu-ms): a process of the sandbox's
// that burns CPU would show there.
func BenchmarkExec(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	for _, cpu := range []int64{100, 0} {
		limit := "100m"
		if cpu == 0 {
			limit = "nolimit"
		}
		for _, plain := range []struct {
			name string
			opts []oci.SpecOpts
		}{
			{"plain", nil},
			// containerd's default seccomp profile, as sandboxes have
			// (kubelet's Pods have none unless asked: Unconfined is the
			// default without --seccomp-default).
			{"plain-seccomp", []oci.SpecOpts{seccomp.WithDefaultProfile()}},
			// The same profile for the native architecture alone (not
			// x86 nor x32 beside x86_64): what runc init's compilation of
			// the filter costs in each exec is most of it.
			{"plain-seccomp-native", []oci.SpecOpts{seccomp.WithDefaultProfile(), nativeSeccomp}},
		} {
			b.Run(plain.name+"-"+limit, func(b *testing.B) {
				id, task, proc := e.plainContainer(b, "bench-"+plain.name+"-"+limit, cpu, plain.opts...)
				fifos := b.TempDir()
				e.benchExec(b, id, func() error {
					cctx := e.d.Context()
					p, err := task.Exec(cctx, fmt.Sprintf("x%d", time.Now().UnixNano()), proc,
						cio.NewCreator(cio.WithStreams(nil, io.Discard, io.Discard), cio.WithFIFODir(fifos)))
					if err != nil {
						return err
					}
					exitCh, err := p.Wait(cctx)
					if err != nil {
						return err
					}
					if err := p.Start(cctx); err != nil {
						return err
					}
					if code := (<-exitCh).ExitCode(); code != 0 {
						return fmt.Errorf("exit %d", code)
					}
					_, err = p.Delete(cctx)
					return err
				})
			})
		}
		// warm: through the sandbox's exec server (execserver.go); cold
		// and warm-runc: through the OCI runtime.
		for _, mode := range []string{"cold", "warm", "warm-runc", "cold-no-userns", "warm-no-userns"} {
			warm := strings.HasPrefix(mode, "warm")
			b.Run(mode+"-"+limit, func(b *testing.B) {
				rt := e.runtimeWith(b, warm, func(c *containerd.Config) {
					c.Agent = "agent-bench-exec-" + mode + "-" + limit
					if strings.HasSuffix(mode, "-no-userns") {
						c.UserNamespaces = containerd.UserNamespacesDisabled
					}
					if mode == "warm-runc" {
						c.ExecServerIdleTimeout = -1
					}
				})
				defer rt.Close()
				s := spec("bench-exec-"+mode+"-"+limit, "sleep", "3600")
				s.CPUMillis, s.MemoryBytes = cpu, 64<<20
				if warm {
					wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					if err := rt.WaitWarm(wctx, s); err != nil {
						b.Fatal(err)
					}
					cancel()
				}
				st := rt.CreateSandbox(ctx, s)
				if st.State != api.StateRunning {
					b.Fatalf("create: %+v", st)
				}
				defer rt.DeleteSandbox(ctx, s.UID)
				e.benchExec(b, st.ContainerID, func() error {
					code, err := rt.Exec(ctx, s.UID, runtime.ExecOptions{Command: []string{"true"}})
					if err == nil && code != 0 {
						err = fmt.Errorf("exit %d", code)
					}
					return err
				})
			})
		}
	}
}

// benchExec times exec b.N times in container id, one at a time, and
// reports p50, p99 and what the container's cgroup was charged.
func (e *env) benchExec(b *testing.B, id string, exec func() error) {
	time.Sleep(200 * time.Millisecond) // the sandbox's start is over
	procs := e.cgroupComms(b, id)
	u0, _, _ := e.cpuStat(b, id)
	time.Sleep(300 * time.Millisecond)
	u1, n1, t1 := e.cpuStat(b, id)
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := exec(); err != nil {
			b.Fatalf("exec: %v", err)
		}
		ds = append(ds, time.Since(start))
	}
	b.StopTimer()
	u2, n2, t2 := e.cpuStat(b, id)
	b.Logf("%s: processes in the cgroup before the execs: %s; per exec: %.2f ms CPU, %.2f periods throttled for %.2f ms",
		b.Name(), procs, float64(u2-u1)/1e6/float64(b.N), float64(n2-n1)/float64(b.N), float64(t2-t1)/1e6/float64(b.N))
	slices.Sort(ds)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(ds[min(len(ds)-1, len(ds)*99/100)].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(u2-u1)/1e6/float64(b.N), "cpu-ms")
	b.ReportMetric(float64(n2-n1)/float64(b.N), "throttled")
	b.ReportMetric(float64(u1-u0)/1e6, "idle-cpu-ms")
}

// cpuStat is a container cgroup's CPU time (ns), and the periods in which
// it was throttled and for how long (ns).
func (e *env) cpuStat(b *testing.B, id string) (usage, throttled, throttledTime int64) {
	b.Helper()
	data, err := os.ReadFile(e.cgroupFile(id, "cpu", "cpu.stat"))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "usage_usec": // v2
			usage = n * 1000
		case "nr_throttled":
			throttled = n
		case "throttled_usec": // v2
			throttledTime = n * 1000
		case "throttled_time": // v1
			throttledTime = n
		}
	}
	if cgroups.Mode() != cgroups.Unified {
		data, err := os.ReadFile(e.cgroupFile(id, "cpuacct", "cpuacct.usage"))
		if err != nil {
			b.Fatal(err)
		}
		usage, _ = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	}
	return usage, throttled, throttledTime
}

// cgroupComms are the processes in a container's cgroup, as pid:command.
func (e *env) cgroupComms(b *testing.B, id string) string {
	b.Helper()
	data, err := os.ReadFile(e.cgroupFile(id, "cpu", "cgroup.procs"))
	if err != nil {
		b.Fatal(err)
	}
	var out []string
	for _, pid := range strings.Fields(string(data)) {
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		out = append(out, pid+":"+strings.ReplaceAll(strings.TrimSpace(string(cmdline)), "\x00", " "))
	}
	return strings.Join(out, ", ")
}

// nativeSeccomp keeps a spec's seccomp profile to the native architecture.
func nativeSeccomp(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
	s.Linux.Seccomp.Architectures = nil
	return nil
}

// plainContainer runs `sleep 3600` in a container made with the containerd
// client alone (the test image's default spec, no user namespace), under a
// CPU quota of cpuMillis (none for 0) over a 100ms period, and returns its
// ID, its task and its process spec.
func (e *env) plainContainer(b *testing.B, id string, cpuMillis int64, extra ...oci.SpecOpts) (string, client.Task, *specs.Process) {
	b.Helper()
	ctx := e.d.Context()
	img, err := e.d.Client.GetImage(ctx, containerdtest.TestImage)
	if err != nil {
		b.Fatal(err)
	}
	if ok, _ := img.IsUnpacked(ctx, ""); !ok {
		if err := img.Unpack(ctx, ""); err != nil {
			b.Fatal(err)
		}
	}
	opts := []oci.SpecOpts{oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "3600"),
		oci.WithCgroup(e.parent + "/" + id), oci.WithMemoryLimit(64 << 20)}
	if cpuMillis > 0 {
		opts = append(opts, oci.WithCPUCFS(cpuMillis*100, 100000))
	}
	opts = append(opts, extra...)
	c, err := e.d.Client.NewContainer(ctx, id, client.WithImage(img), client.WithNewSnapshot(id, img), client.WithNewSpec(opts...))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = c.Delete(context.WithoutCancel(ctx), client.WithSnapshotCleanup)
	})
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_, _ = task.Delete(context.WithoutCancel(ctx), client.WithProcessKill)
	})
	if err := task.Start(ctx); err != nil {
		b.Fatal(err)
	}
	s, err := c.Spec(ctx)
	if err != nil {
		b.Fatal(err)
	}
	proc := *s.Process
	proc.Args = []string{"true"}
	return id, task, &proc
}
