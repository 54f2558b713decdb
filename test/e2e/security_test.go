package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// The attacks of issue 11, tried on the real cluster: from inside
// sandboxes (each network mode) and as the sandbox that once squatted the
// agent's port to steal its credential.

const securityNS = "e2e-security"

// securityEnv deploys a one-agent pool of its own (name: each test's own,
// so that one test's pool being deleted never meets the next one's) whose
// egress policy allows one address (a Pod serving on 8080, the positive
// control of Egress) and returns the pool's agent Pod and that server Pod.
func securityEnv(t *testing.T, name string) (s *system, agent, server *corev1.Pod) {
	t.Helper()
	deployComponents(t)
	ctx := context.Background()
	kubetest.EnsureNamespace(t, cluster.Kube, securityNS)
	// The positive control: a Pod on the cluster network that answers on 8080.
	server = &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-target", Namespace: securityNS},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "serve", Image: cluster.TestImage, ImagePullPolicy: corev1.PullNever,
			Command: []string{"sh", "-c", "while true; do echo reached | nc -l -p 8080; done"},
		}}, AutomountServiceAccountToken: ptr.To(false), TerminationGracePeriodSeconds: ptr.To[int64](0)},
	}
	if _, err := cluster.Kube.CoreV1().Pods(securityNS).Create(ctx, server, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	server = kubetest.WaitPod(t, cluster.Kube, securityNS, server.Name, kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: 2 * time.Minute},
		kubetest.Where("phase Running with an IP", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" }))

	s = &system{sbx: versioned.NewForConfigOrDie(cluster.Config), ns: securityNS, pool: name}
	pool := localPool(t, name, 1, 8)
	pool.Spec.Network.Egress.AllowCIDRs = []string{server.Status.PodIP + "/32"}
	createPool(t, s.sbx, pool)
	kubetest.WaitPool(t, s.sbx, name, poolPoll, readyAgents(1))
	pods, err := cluster.Kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + name})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			agent = p
		}
	}
	if agent == nil {
		t.Fatal("no running agent Pod")
	}
	t.Cleanup(func() {
		_ = s.sbx.SandboxV1alpha1().Sandboxes(securityNS).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = s.sbx.SandboxV1alpha1().SandboxPools().Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = cluster.Kube.CoreV1().Pods(securityNS).Delete(context.Background(), server.Name, metav1.DeleteOptions{})
	})
	return s, agent, server
}

// reachable says whether this process (on the node) connects to addr: the
// positive control of every "unreachable from the sandbox" below.
func reachable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// probeScript tries each target from inside the sandbox and exits with the
// first one's code that connected (0: none did). busybox nc exits 0 when it
// connected.
func probeScript(targets map[string]int) string {
	var b strings.Builder
	b.WriteString(`try() { if echo | nc -w 2 "$1" "$2" >/dev/null 2>&1; then echo "REACHED $1:$2"; exit "$3"; fi; echo "blocked $1:$2"; }; `)
	for addr, code := range targets {
		host, port, _ := net.SplitHostPort(addr)
		fmt.Fprintf(&b, "try %s %s %d; ", host, port, code)
	}
	b.WriteString("echo all-blocked")
	return b.String()
}

func TestSandboxCannotReachTheNode(t *testing.T) {
	s, agent, server := securityEnv(t, "e2e-reach")
	agentAPI := net.JoinHostPort(agent.Status.PodIP, "8081")
	agentProbe := net.JoinHostPort(agent.Status.PodIP, "8082")
	kubelet := net.JoinHostPort(agent.Status.HostIP, "10250")
	for _, addr := range []string{agentAPI, agentProbe, kubelet} {
		if !reachable(addr) {
			t.Fatalf("the control failed: %s is not reachable from the node itself", addr)
		}
	}
	denied := map[string]int{agentAPI: 10, agentProbe: 11, kubelet: 12, "169.254.169.254:80": 13,
		net.JoinHostPort(agent.Status.HostIP, "6443"): 14}
	target := net.JoinHostPort(server.Status.PodIP, "8080")

	for _, mode := range []v1alpha1.SandboxNetworkMode{v1alpha1.NetworkModeNone, v1alpha1.NetworkModeEgress} {
		t.Run(string(mode), func(t *testing.T) {
			name := "probe-" + strings.ToLower(string(mode))
			s.create(t, name, func(x *v1alpha1.Sandbox) { x.Spec.NetworkMode = mode }, "sh", "-c", probeScript(denied))
			done := s.waitSandbox(t, name, kubetest.Finished())
			if done.Status.Phase != v1alpha1.SandboxSucceeded {
				t.Errorf("a %s sandbox reached something it must not: exit %v (%s); log:\n%s", mode, ptrVal(done.Status.ExitCode),
					done.Status.Message, sandboxLog(t, done))
			}
		})
	}
	t.Run("Egress reaches what the policy allows", func(t *testing.T) {
		s.create(t, "egress-allowed", func(x *v1alpha1.Sandbox) { x.Spec.NetworkMode = v1alpha1.NetworkModeEgress },
			"sh", "-c", fmt.Sprintf("echo | nc -w 3 %s %s", server.Status.PodIP, "8080"))
		done := s.waitSandbox(t, "egress-allowed", kubetest.Finished())
		if done.Status.Phase != v1alpha1.SandboxSucceeded || !strings.Contains(sandboxLog(t, done), "reached") {
			t.Errorf("an Egress sandbox could not reach %s, which its pool allows: %+v; log:\n%s", target, done.Status, sandboxLog(t, done))
		}
	})
	t.Run("None reaches nothing, not even what the policy allows", func(t *testing.T) {
		s.create(t, "none-allowed", nil, "sh", "-c", fmt.Sprintf("echo | nc -w 2 %s %s", server.Status.PodIP, "8080"))
		done := s.waitSandbox(t, "none-allowed", kubetest.Finished())
		if done.Status.Phase != v1alpha1.SandboxFailed {
			t.Errorf("a None sandbox reached %s: %+v", target, done.Status)
		}
	})
}

// The attack that started issue 11: a sandbox listens on the agent's port
// and waits for the agent to restart, to receive the scheduler's requests
// (and, once, the pool's bearer token). Now the sandbox's port is its own:
// the agent comes back healthy, and nothing reaches the sandbox.
func TestPortSquatGetsNothing(t *testing.T) {
	s, agent, _ := securityEnv(t, "e2e-squat")
	for _, mode := range []v1alpha1.SandboxNetworkMode{v1alpha1.NetworkModeNone, v1alpha1.NetworkModeEgress} {
		name := "squat-" + strings.ToLower(string(mode))
		// nc waits for a connection; one that came and went would be logged.
		s.create(t, name, func(x *v1alpha1.Sandbox) { x.Spec.NetworkMode = mode },
			"sh", "-c", "while true; do nc -l -p 8081; echo '--- connection ended'; done")
		running := s.waitSandbox(t, name, kubetest.Phase(v1alpha1.SandboxRunning))
		kubetest.Eventually(t, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 30 * time.Second}, name+" listens on 8081",
			func(context.Context) error { return listens(t, running, 8081) })
	}
	restartsBefore := restarts(*agent)
	pids := agentProcesses(string(agent.UID))
	if len(pids) == 0 {
		t.Fatal("no agent process found")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	// The agent restarts and is Ready again, not crash-looping on a taken port.
	kubetest.WaitPod(t, cluster.Kube, agent.Namespace, agent.Name, kubetest.Poll{Interval: 500 * time.Millisecond, Timeout: 2 * time.Minute},
		kubetest.Where("condition Ready after a restart", func(p *corev1.Pod) bool { return kubetest.IsPodReady(p) && restarts(*p) > restartsBefore }))
	s.create(t, "after-restart", nil, "echo", "fine")
	s.waitSandbox(t, "after-restart", kubetest.Phase(v1alpha1.SandboxSucceeded))
	// Polls and syncs go on for a while: through them, give a squatter
	// every chance, and see it get nothing.
	kubetest.Consistently(t, kubetest.Poll{Interval: 500 * time.Millisecond, Timeout: 5 * time.Second}, "the squatters run and receive nothing",
		func(ctx context.Context) error {
			var wrong []error
			for _, mode := range []v1alpha1.SandboxNetworkMode{v1alpha1.NetworkModeNone, v1alpha1.NetworkModeEgress} {
				name := "squat-" + strings.ToLower(string(mode))
				sbx, err := s.sbx.SandboxV1alpha1().Sandboxes(securityNS).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					wrong = append(wrong, err)
					continue
				}
				if sbx.Status.Phase != v1alpha1.SandboxRunning {
					wrong = append(wrong, fmt.Errorf("%s is no longer Running: %s", name, kubetest.DescribeSandbox(sbx)))
				}
				log := sandboxLog(t, sbx)
				for _, leak := range []string{"Authorization", "Bearer", "PRIVATE KEY", "CERTIFICATE", "GET /v1", "PUT /v1", "connection ended"} {
					if strings.Contains(log, leak) {
						wrong = append(wrong, fmt.Errorf("%s received %q; log:\n%s", name, leak, log))
					}
				}
			}
			return errors.Join(wrong...)
		})
}

// listens says whether a process of the sandbox's container listens on TCP
// port in the container's network namespace (nil), or why not.
func listens(t *testing.T, sbx *v1alpha1.Sandbox, port int) error {
	t.Helper()
	out, err := exec.Command("ctr", "-a", mustSetting(t, "CONTAINERD_SOCK"), "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr tasks ls: %v: %s", err, out)
	}
	pid := ""
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == sbx.Status.ContainerID {
			pid = f[1]
		}
	}
	if pid == "" {
		return fmt.Errorf("no task of container %q", sbx.Status.ContainerID)
	}
	// /proc/PID/net shows the network namespace of PID. A listening
	// socket's state is 0A; its local address ends in the port in hex.
	suffix := fmt.Sprintf(":%04X", port)
	for _, file := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(filepath.Join("/proc", pid, "net", file))
		if errors.Is(err, fs.ErrNotExist) && file == "tcp6" {
			continue // no IPv6 here
		}
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 3 && strings.HasSuffix(f[1], suffix) && f[3] == "0A" {
				return nil
			}
		}
	}
	return fmt.Errorf("nothing listens on %d in the network namespace of pid %s", port, pid)
}

// sandboxLog reads a sandbox's log files on the node (the agent's state
// directory, rotated file first).
func sandboxLog(t *testing.T, sbx *v1alpha1.Sandbox) string {
	t.Helper()
	if sbx.Status.ContainerID == "" {
		return "(no container)"
	}
	files, _ := filepath.Glob(filepath.Join("/var/lib/fast-sandbox/agent/pods/*/logs", sbx.Status.ContainerID+".log*"))
	var b strings.Builder
	for i := len(files) - 1; i >= 0; i-- {
		data, err := os.ReadFile(files[i])
		if err == nil {
			b.Write(data)
		}
	}
	return b.String()
}

func ptrVal[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
