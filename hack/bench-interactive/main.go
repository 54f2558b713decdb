// Command bench-interactive measures interactive use of sandboxes on a
// running fast-sandbox cluster (make up), each figure beside its Pod
// baseline from the same run:
//
//   - exec of `true`: `kubectl sandbox exec NAME -- true` against
//     `kubectl exec POD -- true` (the real binaries, process start
//     included), then in-process: pkg/client Exec against client-go's
//     remote command on the Pod's exec subresource (the same WebSocket
//     executor with SPDY fallback kubectl uses); interleaved.
//   - pause and resume through the API: spec.paused patched, watched until
//     phase Paused, then Running again.
//   - a one-shot command from the CLI: `kubectl sandbox run --rm` against
//     `kubectl run --rm -i --restart=Never`; interleaved.
//
// The sandboxes run in an existing pool (default: make up's sample pool
// "default"); the baseline Pod runs on the node of that pool's agent.
// Everything it creates is deleted at the end (and on interrupt).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/hack/benchstat"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

var (
	kubeconfig = flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	image      = flag.String("image", "docker.io/fast-sandbox/testbox:latest", "image present on the node (it needs sh, sleep, true, echo)")
	pool       = flag.String("pool", "default", "the SandboxPool the sandboxes run in (make up's sample pool by default)")
	ns         = flag.String("namespace", "default", "namespace of the objects")
	kubectl    = flag.String("kubectl", "kubectl", "the kubectl binary")
	plugin     = flag.String("plugin", "_output/bin/kubectl-sandbox", "the kubectl-sandbox plugin binary (kubectl finds it on a PATH this command makes)")
	n          = flag.Int("n", 50, "exec round trips and pause/resume cycles measured, each way")
	nOneShot   = flag.Int("n-oneshot", 20, "one-shot runs measured, each way")
	warmup     = flag.Int("warmup", 3, "unmeasured runs of each kind first (caches, connections, page cache)")
)

var (
	run = time.Now().Unix()
	// ctx ends on SIGINT or SIGTERM: what runs stops, what was made is deleted.
	ctx  context.Context
	cfg  *rest.Config
	kube kubernetes.Interface
	sbx  *client.Client
	// pathEnv is the environment of the kubectl and plugin processes:
	// KUBECONFIG set (kubectl passes no flag given before a plugin's name)
	// and the plugin first on PATH.
	pathEnv []string
	// created is what to delete at the end.
	createdPods, createdSandboxes []string
	// tmpDir holds the plugin's link and kubectl's cache.
	tmpDir string
)

func main() {
	flag.Parse()
	var err error
	cfg, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	must(err)
	cfg.QPS, cfg.Burst = 500, 1000
	kube = kubernetes.NewForConfigOrDie(cfg)
	sbx, err = client.New(cfg)
	must(err)
	var stop context.CancelFunc
	ctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer cleanup()
	setupPluginPath()

	node := poolNode(ctx)
	sbName := fmt.Sprintf("bench-int-%d", run)
	podName := fmt.Sprintf("bench-int-pod-%d", run)
	// The same Pod confined like a sandbox: kubelet runs containers
	// Unconfined by default, a sandbox with the runtime's default seccomp
	// profile, which runc compiles again in every exec.
	podSeccompName := fmt.Sprintf("bench-int-pod-seccomp-%d", run)
	startSandbox(ctx, sbName)
	startPod(ctx, podName, node, false)
	startPod(ctx, podSeccompName, node, true)

	fmt.Printf("# interactive use: sandboxes in pool %q, the baseline Pod on its agent's node %s; image %s\n\n", *pool, node, *image)

	// exec of true, CLI and in-process, interleaved (the order alternates).
	cliSandbox := func() time.Duration {
		return timeCommand(nil, *kubectl, "sandbox", "exec", "-n", *ns, sbName, "--", "true")
	}
	cliPluginDirect := func() time.Duration {
		return timeCommand(nil, *plugin, "exec", "-n", *ns, sbName, "--", "true")
	}
	cliPod := func() time.Duration {
		return timeCommand(nil, *kubectl, "exec", "-n", *ns, podName, "--", "true")
	}
	goSandbox := func() time.Duration { return timeIt(func() error { return execSandbox(ctx, sbName) }) }
	goPod := func() time.Duration { return timeIt(func() error { return execPod(ctx, podName) }) }
	cliPodSeccomp := func() time.Duration {
		return timeCommand(nil, *kubectl, "exec", "-n", *ns, podSeccompName, "--", "true")
	}
	goPodSeccomp := func() time.Duration { return timeIt(func() error { return execPod(ctx, podSeccompName) }) }
	execs := interleave(*n, *warmup, cliSandbox, cliPluginDirect, cliPod, goSandbox, goPod, cliPodSeccomp, goPodSeccomp)

	// pause → Paused, resume → Running, through the API.
	pauses, resumes := pauseResume(ctx, sbName, *n, *warmup)

	// one-shot runs from the CLI, interleaved.
	i := 0
	oneSandbox := func() time.Duration {
		i++
		name := fmt.Sprintf("bench-int-once-%d-%d", run, i)
		createdSandboxes = append(createdSandboxes, name)
		return timeCommand([]byte("hi"), *kubectl, "sandbox", "run", "-n", *ns, "--rm", name, "--pool", *pool, "--image", *image, "--", "sh", "-c", "echo hi")
	}
	onePod := func() time.Duration {
		i++
		name := fmt.Sprintf("bench-int-once-pod-%d-%d", run, i)
		createdPods = append(createdPods, name)
		return timeCommand([]byte("hi"), *kubectl, "run", "-n", *ns, "--rm", "-i", "--restart=Never", "--image-pull-policy=Never",
			"--overrides", fmt.Sprintf(`{"spec":{"nodeName":%q,"terminationGracePeriodSeconds":0}}`, node),
			"--image", *image, name, "--", "sh", "-c", "echo hi")
	}
	once := interleave(*nOneShot, 1, oneSandbox, onePod)

	fmt.Println("| what | n | p50 | p90 | p99 | p50 vs Pod | p50 vs Pod (RuntimeDefault) |")
	fmt.Println("|---|---|---|---|---|---|---|")
	ratio := func(s, base []time.Duration) string {
		if base == nil {
			return ""
		}
		return fmt.Sprintf("%.2f×", float64(benchstat.Percentile(s, 50))/float64(benchstat.Percentile(base, 50)))
	}
	row := func(what string, s []time.Duration, base, baseSeccomp []time.Duration) {
		fmt.Printf("| %s | %d | %s | %s | %s | %s | %s |\n", what, len(s), benchstat.Millis(benchstat.Percentile(s, 50)), benchstat.Millis(benchstat.Percentile(s, 90)), benchstat.Millis(benchstat.Percentile(s, 99)),
			ratio(s, base), ratio(s, baseSeccomp))
	}
	row("`kubectl exec POD -- true` (Pod)", execs[2], nil, nil)
	row("`kubectl exec POD -- true` (Pod, seccomp RuntimeDefault)", execs[5], execs[2], nil)
	row("`kubectl sandbox exec NAME -- true`", execs[0], execs[2], execs[5])
	row("`kubectl-sandbox exec NAME -- true` (plugin run directly)", execs[1], execs[2], execs[5])
	row("in-process: remotecommand on pods/exec (Pod)", execs[4], nil, nil)
	row("in-process: remotecommand on pods/exec (Pod, seccomp RuntimeDefault)", execs[6], execs[4], nil)
	row("in-process: pkg/client Exec", execs[3], execs[4], execs[6])
	row("pause: patch spec.paused → phase Paused", pauses, nil, nil)
	row("resume: patch spec.paused → phase Running", resumes, nil, nil)
	row("`kubectl run --rm -i --restart=Never … -- sh -c 'echo hi'` (Pod)", once[1], nil, nil)
	row("`kubectl sandbox run --rm … -- sh -c 'echo hi'`", once[0], once[1], nil)
	fmt.Println("\n(\"p50 vs Pod\" is the p50 over the Pod's: below 1 is faster; the pause and resume rows have no Pod counterpart.)")
}

// interleave runs warm unmeasured rounds, then n measured rounds of every
// function, the order alternating from one round to the next.
func interleave(n, warm int, fs ...func() time.Duration) [][]time.Duration {
	out := make([][]time.Duration, len(fs))
	for r := 0; r < warm+n; r++ {
		for k := range fs {
			j := k
			if r%2 == 1 {
				j = len(fs) - 1 - k
			}
			d := fs[j]()
			if r >= warm {
				out[j] = append(out[j], d)
			}
		}
	}
	return out
}

// setupPluginPath puts the plugin, as kubectl-sandbox, in a directory of its
// own first on PATH.
func setupPluginPath() {
	abs, err := filepath.Abs(*plugin)
	must(err)
	if _, err := os.Stat(abs); err != nil {
		fail("the plugin: %v (go build -o _output/bin/ ./cmd/kubectl-sandbox)", err)
	}
	*plugin = abs
	dir, err := os.MkdirTemp("", "bench-interactive-")
	must(err)
	tmpDir = dir
	must(os.Symlink(abs, filepath.Join(dir, "kubectl-sandbox")))
	kc, err := filepath.Abs(*kubeconfig)
	must(err)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PATH=") && !strings.HasPrefix(e, "KUBECONFIG=") && !strings.HasPrefix(e, "KUBECACHEDIR=") {
			pathEnv = append(pathEnv, e)
		}
	}
	// A discovery cache of this run's own (one of an earlier cluster could
	// be stale), filled by the warm-up runs.
	pathEnv = append(pathEnv, "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"), "KUBECONFIG="+kc,
		"KUBECACHEDIR="+filepath.Join(dir, "cache"))
}

// timeCommand runs a command and returns its wall time; it fails when the
// command fails or (want not nil) its output's first line is not want.
func timeCommand(want []byte, name string, args ...string) time.Duration {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = pathEnv
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		fail("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	if first, _, _ := bytes.Cut(out.Bytes(), []byte("\n")); want != nil && !bytes.Equal(first, want) {
		fail("%s %s: output %q, want %q (stderr %q)", name, strings.Join(args, " "), out.String(), want, errOut.String())
	}
	return d
}

func timeIt(f func() error) time.Duration {
	t0 := time.Now()
	err := f()
	d := time.Since(t0)
	must(err)
	return d
}

// execSandbox runs true in the sandbox as kubectl sandbox exec does
// (stdout and stderr opened, no stdin).
func execSandbox(ctx context.Context, name string) error {
	code, err := sbx.Exec(ctx, *ns, name, client.ExecOptions{Command: []string{"true"}, Stdout: io.Discard, Stderr: io.Discard})
	if err == nil && code != 0 {
		err = fmt.Errorf("exit code %d", code)
	}
	return err
}

// execPod runs true in the Pod as kubectl exec does: WebSocket first, SPDY
// when the upgrade fails.
func execPod(ctx context.Context, name string) error {
	u := kube.CoreV1().RESTClient().Post().Namespace(*ns).Resource("pods").Name(name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: "main", Command: []string{"true"}, Stdout: true, Stderr: true}, scheme.ParameterCodec).URL()
	spdy, err := remotecommand.NewSPDYExecutor(cfg, http.MethodPost, u)
	if err != nil {
		return err
	}
	ws, err := remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, u.String())
	if err != nil {
		return err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	return ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: io.Discard, Stderr: io.Discard})
}

// pauseResume patches spec.paused and times each change until a watcher
// (opened before) sees the phase.
func pauseResume(ctx context.Context, name string, n, warm int) (pauses, resumes []time.Duration) {
	w, err := sbx.Clientset().SandboxV1alpha1().Sandboxes(*ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	must(err)
	defer w.Stop()
	phase := func(p v1alpha1.SandboxPhase) func(any) bool {
		return func(obj any) bool { return obj.(*v1alpha1.Sandbox).Status.Phase == p }
	}
	// The watch's first event is the object as it is (Running).
	must(benchstat.WaitEvent(w, 2*time.Minute, phase(v1alpha1.SandboxRunning)))
	for i := 0; i < warm+n; i++ {
		t0 := time.Now()
		_, err := sbx.Pause(ctx, *ns, name)
		must(err)
		must(benchstat.WaitEvent(w, 2*time.Minute, phase(v1alpha1.SandboxPaused)))
		p := time.Since(t0)
		t1 := time.Now()
		_, err = sbx.Resume(ctx, *ns, name)
		must(err)
		must(benchstat.WaitEvent(w, 2*time.Minute, phase(v1alpha1.SandboxRunning)))
		r := time.Since(t1)
		if i >= warm {
			pauses, resumes = append(pauses, p), append(resumes, r)
		}
	}
	return pauses, resumes
}

// poolNode is the node of the pool's (first Ready) agent.
func poolNode(ctx context.Context) string {
	var node string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + *pool})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.Spec.NodeName != "" {
					node = p.Spec.NodeName
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		fail("no Ready agent of pool %q: %v", *pool, err)
	}
	return node
}

// startSandbox creates a long-lived sandbox and waits until it runs.
func startSandbox(ctx context.Context, name string) {
	createdSandboxes = append(createdSandboxes, name)
	_, err := sbx.Run(ctx, &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: *ns},
		Spec: v1alpha1.SandboxSpec{PoolName: *pool, Image: *image, Command: []string{"sleep", "3600"},
			Resources: v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("100m")), Memory: ptr.To(resource.MustParse("64Mi"))}}})
	must(err)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	_, err = sbx.Wait(wctx, *ns, name, client.Running)
	must(err)
}

// startPod creates a baseline Pod on node (same image, command and
// resources as the sandbox; with seccomp, the runtime's default seccomp
// profile as sandboxes have) and waits until it is Ready.
func startPod(ctx context.Context, name, node string, seccomp bool) {
	w, err := kube.CoreV1().Pods(*ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	must(err)
	defer w.Stop()
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
	createdPods = append(createdPods, name)
	var sc *corev1.PodSecurityContext
	if seccomp {
		sc = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	}
	_, err = kube.CoreV1().Pods(*ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: node, RestartPolicy: corev1.RestartPolicyNever, TerminationGracePeriodSeconds: ptr.To[int64](0),
			SecurityContext: sc,
			Containers: []corev1.Container{{Name: "main", Image: *image, ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"},
				Resources: corev1.ResourceRequirements{Requests: res, Limits: res}}}},
	}, metav1.CreateOptions{})
	must(err)
	must(benchstat.WaitEvent(w, 2*time.Minute, func(obj any) bool {
		for _, c := range obj.(*corev1.Pod).Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	}))
}

// cleanup deletes every object this run created (those already gone are
// fine) and waits until they are gone.
func cleanup() {
	if tmpDir != "" {
		_ = os.RemoveAll(tmpDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, name := range createdSandboxes {
		_ = sbx.Delete(ctx, *ns, name)
	}
	for _, name := range createdPods {
		_ = kube.CoreV1().Pods(*ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	}
	_ = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, name := range createdSandboxes {
			if _, err := sbx.Get(ctx, *ns, name); err == nil {
				return false, nil
			}
		}
		for _, name := range createdPods {
			if _, err := kube.CoreV1().Pods(*ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				return false, nil
			}
		}
		return true, nil
	})
}

func must(err error) {
	if err != nil {
		fail("%v", err)
	}
}

// fail cleans up and exits: what was created does not outlive a failed run.
func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	cleanup()
	os.Exit(1)
}
