// Command bench-e2e measures start latency on a running fast-sandbox cluster
// (make up): plain Pods with the test image (imagePullPolicy Never) against
// Sandboxes with the same image, created one at a time and in bursts,
// measured by a watcher from the create call to the object's Running state,
// plus the share of each Sandbox stage from the objects' own timestamps.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/hack/benchstat"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
)

var (
	kubeconfig = flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	image      = flag.String("image", "docker.io/fast-sandbox/testbox:latest", "image present on the node")
	agentImage = flag.String("agent-image", "docker.io/fast-sandbox/agent:v0.1.0", "agent image of the bench pools")
	socket     = flag.String("containerd-socket", "/run/fast-sandbox/containerd/containerd.sock", "the node's containerd socket")
	ctrdRoot   = flag.String("containerd-root", "/var/lib/fast-sandbox/cluster/containerd/root", "the node's containerd root directory")
	sequential = flag.Int("n", 100, "objects created one at a time")
	burst      = flag.Int("burst", 20, "objects per burst")
	bursts     = flag.Int("bursts", 3, "number of bursts")
	handlers   = flag.String("runtime-handlers", "runc", "runtime handlers to measure Sandboxes with, comma-separated (e.g. runc,crun where crun supports the node's cgroup layout)")
	ns         = flag.String("namespace", "default", "namespace of the objects")
	agentCPU   = flag.String("agent-cpu", "500m", "CPU of the bench pools' agent Pods: sandbox starts run inside this quota")
	warm       = flag.Int("warm", 20, "warm containers per image of the warm pools (each handler is measured with 0 and with this many)")
	pace       = flag.Duration("pace", 250*time.Millisecond, "the paced pattern starts one object per this period (Pods and Sandboxes alike)")
	burstPause = flag.Duration("burst-pause", 5*time.Second, "pause between bursts (Pods and Sandboxes alike)")
	pools      = flag.Bool("pools", true, "also measure pool scaling: creation to N agents Ready, and a burst that needs more agents")
)

// sample is one start: its latency seen by the watcher, and for sandboxes
// the time of each stage relative to the create call.
type sample struct {
	total                           time.Duration
	scheduled, told, started, shown time.Duration
}

func main() {
	flag.Parse()
	var err error
	cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	must(err)
	cfg.QPS, cfg.Burst = 500, 1000
	kube := kubernetes.NewForConfigOrDie(cfg)
	sbx := versioned.NewForConfigOrDie(cfg)
	ctx := context.Background()

	patterns := []string{"one at a time", fmt.Sprintf("paced, one every %v", *pace), fmt.Sprintf("bursts of %d, %v apart", *burst, *burstPause)}
	fmt.Printf("# start latency, create → Running, watcher-observed; agent Pod CPU %s; warm pools keep %d warm containers per image\n\n", *agentCPU, *warm)
	measure := func(start func(int) sample) [][]sample {
		return [][]sample{oneAtATime(*sequential, 0, start), oneAtATime(*sequential, *pace, start), inBursts(*burst, *bursts, *burstPause, start)}
	}
	results := map[string][][]sample{}
	order := []string{"Pod"}
	results["Pod"] = measure(podStarter(ctx, kube))
	for _, h := range strings.Split(*handlers, ",") {
		for _, w := range []int{0, *warm} {
			mode := "cold"
			if w > 0 {
				mode = "warm"
			}
			pool := "bench-" + h + "-" + mode
			ensurePool(ctx, sbx, pool, h, int32(w))
			name := "Sandbox (" + h + ", " + mode + ")"
			order = append(order, name)
			results[name] = measure(sandboxStarter(ctx, sbx, pool))
			deletePool(ctx, sbx, pool)
		}
	}

	fmt.Println("| what | pattern | n | p50 | p90 | p99 | p50 vs Pod |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for i, pattern := range patterns {
		podP50 := pct(results["Pod"][i], 50)
		for _, name := range order {
			s := results[name][i]
			ratio := float64(podP50) / float64(pct(s, 50))
			fmt.Printf("| %s | %s | %d | %s | %s | %s | %.1f× |\n", name, pattern, len(s), benchstat.Millis(pct(s, 50)), benchstat.Millis(pct(s, 90)), benchstat.Millis(pct(s, 99)), ratio)
		}
	}
	fmt.Println("\n# Sandbox stages (p50 of each stage's duration)")
	fmt.Println("| what | pattern | created → scheduled | scheduled → agent told | agent told → container running | running → status seen | total |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for i, pattern := range patterns[:2] {
		for _, name := range order[1:] {
			s := results[name][i]
			stage := func(f func(sample) time.Duration) string {
				var d []time.Duration
				for _, x := range s {
					d = append(d, f(x))
				}
				return benchstat.Millis(benchstat.Percentile(d, 50))
			}
			fmt.Printf("| %s | %s | %s | %s | %s | %s | %s |\n", name, pattern,
				stage(func(x sample) time.Duration { return x.scheduled }),
				stage(func(x sample) time.Duration { return x.told - x.scheduled }),
				stage(func(x sample) time.Duration { return x.started - x.told }),
				stage(func(x sample) time.Duration { return x.shown - x.started }),
				stage(func(x sample) time.Duration { return x.total }))
		}
	}
	if *pools {
		benchPools(ctx, sbx)
	}
}

// oneAtATime runs n starts, each after the previous one, at most one per
// pace (0: back to back).
var seq int

func oneAtATime(n int, pace time.Duration, start func(i int) sample) []sample {
	out := make([]sample, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		seq++
		out = append(out, start(seq))
		time.Sleep(pace - time.Since(t0))
	}
	return out
}

// inBursts runs rounds of n concurrent starts, pause apart.
func inBursts(n, rounds int, pause time.Duration, start func(i int) sample) []sample {
	var (
		out []sample
		mu  sync.Mutex
	)
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for j := 0; j < n; j++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				s := start(i)
				mu.Lock()
				out = append(out, s)
				mu.Unlock()
			}(100000 + r*n + j)
		}
		wg.Wait()
		time.Sleep(pause)
	}
	return out
}

var (
	run = time.Now().Unix()
	cfg *rest.Config
)

func podStarter(ctx context.Context, kube kubernetes.Interface) func(int) sample {
	return func(i int) sample {
		name := fmt.Sprintf("bench-pod-%d-%d", run, i)
		w, err := kube.CoreV1().Pods(*ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		must(err)
		defer w.Stop()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, TerminationGracePeriodSeconds: ptr.To[int64](0),
				Containers: []corev1.Container{{Name: "main", Image: *image, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}}}},
		}
		t0 := time.Now()
		_, err = kube.CoreV1().Pods(*ns).Create(ctx, pod, metav1.CreateOptions{})
		must(err)
		must(benchstat.WaitEvent(w, 2*time.Minute, func(obj any) bool {
			p := obj.(*corev1.Pod)
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					return true
				}
			}
			return false
		}))
		total := time.Since(t0)
		_ = kube.CoreV1().Pods(*ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		return sample{total: total}
	}
}

func sandboxStarter(ctx context.Context, c versioned.Interface, pool string) func(int) sample {
	return func(i int) sample {
		name := fmt.Sprintf("bench-%s-%d-%d", pool, run, i)
		w, err := c.SandboxV1alpha1().Sandboxes(*ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		must(err)
		defer w.Stop()
		s := &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.SandboxSpec{PoolName: pool, Image: *image, Command: []string{"sleep", "3600"},
				Resources: v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("10m")), Memory: ptr.To(resource.MustParse("16Mi"))}}}
		t0 := time.Now()
		_, err = c.SandboxV1alpha1().Sandboxes(*ns).Create(ctx, s, metav1.CreateOptions{})
		must(err)
		var last *v1alpha1.Sandbox
		must(benchstat.WaitEvent(w, 2*time.Minute, func(obj any) bool {
			last = obj.(*v1alpha1.Sandbox)
			if last.Status.Phase == v1alpha1.SandboxFailed {
				fmt.Fprintf(os.Stderr, "sandbox %s failed: %s %s\n", name, last.Status.Reason, last.Status.Message)
				os.Exit(1)
			}
			return last.Status.Phase == v1alpha1.SandboxRunning
		}))
		out := sample{total: time.Since(t0), shown: time.Since(t0)}
		st := last.Status
		if st.ScheduleTime != nil && st.AgentToldTime != nil && st.StartTime != nil {
			out.scheduled, out.told, out.started = st.ScheduleTime.Sub(t0), st.AgentToldTime.Sub(t0), st.StartTime.Sub(t0)
		}
		_ = c.SandboxV1alpha1().Sandboxes(*ns).Delete(ctx, name, metav1.DeleteOptions{})
		return out
	}
}

func ensurePool(ctx context.Context, c versioned.Interface, name, handler string, warm int32) {
	pool := &v1alpha1.SandboxPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.SandboxPoolSpec{
		MinAgents: 1, MaxAgents: 1, SlotsPerAgent: int32(*burst) + 4, RuntimeHandler: handler, ImagePullPolicy: v1alpha1.PullNever,
		ScaleDownDelaySeconds: 600, WarmContainersPerImage: &warm, WarmImages: []string{*image},
		Agent: v1alpha1.AgentTemplate{Image: *agentImage, ImagePullPolicy: corev1.PullNever, ContainerdSocket: *socket, ContainerdRoot: *ctrdRoot,
			Resources: v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse(*agentCPU)), Memory: ptr.To(resource.MustParse("1Gi"))}},
	}}
	_, err := c.SandboxV1alpha1().SandboxPools().Create(ctx, pool, metav1.CreateOptions{})
	must(err)
	waitReadyAgents(ctx, c, name, 1)
	time.Sleep(2 * time.Second) // let the scheduler see the agent's first status (and the warm containers start)
}

// deletePool deletes a pool and waits until its agent Pods are gone, so
// that the next measurement has the node to itself.
func deletePool(ctx context.Context, c versioned.Interface, name string) {
	must(c.SandboxV1alpha1().SandboxPools().Delete(ctx, name, metav1.DeleteOptions{}))
	kube := kubernetes.NewForConfigOrDie(cfg)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + name})
		return err == nil && len(pods.Items) == 0, nil
	})
	must(err)
}

func pct(s []sample, p int) time.Duration {
	d := make([]time.Duration, len(s))
	for i, x := range s {
		d[i] = x.total
	}
	return benchstat.Percentile(d, p)
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
