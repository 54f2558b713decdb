package containerd_test

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
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
