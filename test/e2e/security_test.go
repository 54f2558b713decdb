package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
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
	if _, err := cluster.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: securityNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
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
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := cluster.Kube.CoreV1().Pods(securityNS).Get(ctx, server.Name, metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return false, nil
		}
		server = p
		return true, nil
	})
	if err != nil {
		t.Fatalf("the egress target Pod never ran: %v", err)
	}

	s = &system{t: t, sbx: versioned.NewForConfigOrDie(cluster.Config), ns: securityNS, pool: name}
	pool := &v1alpha1.SandboxPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.SandboxPoolSpec{
			MinAgents: 1, MaxAgents: 1, SlotsPerAgent: 8, ScaleDownDelaySeconds: 60,
			ImagePullPolicy: v1alpha1.PullNever, WarmImages: []string{cluster.TestImage},
			Network: v1alpha1.PoolNetwork{Egress: v1alpha1.EgressPolicy{AllowCIDRs: []string{server.Status.PodIP + "/32"}}},
			Agent: v1alpha1.AgentTemplate{
				Image: "docker.io/fast-sandbox/agent:" + mustSetting(t, "VERSION"), ImagePullPolicy: corev1.PullNever,
				Resources:        v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("500m")), Memory: ptr.To(resource.MustParse("512Mi"))},
				ContainerdSocket: mustSetting(t, "CONTAINERD_SOCK"),
				ContainerdRoot:   mustSetting(t, "CONTAINERD_ROOT"),
			},
		},
	}
	if _, err := s.sbx.SandboxV1alpha1().SandboxPools().Create(ctx, pool, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	s.waitPool(func(p *v1alpha1.SandboxPool) bool { return p.Status.ReadyAgents == 1 }, "1 ready agent")
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
			s.create(name, func(x *v1alpha1.Sandbox) { x.Spec.NetworkMode = mode }, "sh", "-c", probeScript(denied))
			done := s.waitSandbox(name, "finished", sandboxFinished)
			if done.Status.Phase != v1alpha1.SandboxSucceeded {
				t.Errorf("a %s sandbox reached something it must not: exit %v (%s); log:\n%s", mode, ptrVal(done.Status.ExitCode),
					done.Status.Message, sandboxLog(t, done))
			}
		})
	}
	t.Run("Egress reaches what the policy allows", func(t *testing.T) {
		s.create("egress-allowed", func(x *v1alpha1.Sandbox) { x.Spec.NetworkMode = v1alpha1.NetworkModeEgress },
			"sh", "-c", fmt.Sprintf("echo | nc -w 3 %s %s", server.Status.PodIP, "8080"))
		done := s.waitSandbox("egress-allowed", "finished", sandboxFinished)
		if done.Status.Phase != v1alpha1.SandboxSucceeded || !strings.Contains(sandboxLog(t, done), "reached") {
			t.Errorf("an Egress sandbox could not reach %s, which its pool allows: %+v; log:\n%s", target, done.Status, sandboxLog(t, done))
		}
	})
	t.Run("None reaches nothing, not even what the policy allows", func(t *testing.T) {
		s.create("none-allowed", nil, "sh", "-c", fmt.Sprintf("echo | nc -w 2 %s %s", server.Status.PodIP, "8080"))
		done := s.waitSandbox("none-allowed", "finished", sandboxFinished)
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
	ctx := context.Background()
	for _, mode := range []v1alpha1.SandboxNetworkMode{v1alpha1.NetworkModeNone, v1alpha1.NetworkModeEgress} {
		name := "squat-" + strings.ToLower(string(mode))
		// nc waits for a connection; one that came and went would be logged.
		s.create(name, func(x *v1alpha1.Sandbox) { x.Spec.NetworkMode = mode },
			"sh", "-c", "while true; do nc -l -p 8081; echo '--- connection ended'; done")
		s.waitSandbox(name, "Running", phase(v1alpha1.SandboxRunning))
	}
	time.Sleep(time.Second) // the listeners are up
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
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := cluster.Kube.CoreV1().Pods(agent.Namespace).Get(ctx, agent.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
		}
		return ready && restarts(*p) > restartsBefore, nil
	})
	if err != nil {
		out, _ := kubectlErr("-n", agent.Namespace, "describe", "pod", agent.Name)
		t.Fatalf("the agent did not come back Ready after its restart: %v\n%s", err, out)
	}
	// Polls and syncs go on for a while: give a squatter every chance.
	s.create("after-restart", nil, "echo", "fine")
	s.waitSandbox("after-restart", "Succeeded", phase(v1alpha1.SandboxSucceeded))
	time.Sleep(5 * time.Second)
	for _, mode := range []v1alpha1.SandboxNetworkMode{v1alpha1.NetworkModeNone, v1alpha1.NetworkModeEgress} {
		name := "squat-" + strings.ToLower(string(mode))
		sbx, err := s.sbx.SandboxV1alpha1().Sandboxes(securityNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sbx.Status.Phase != v1alpha1.SandboxRunning {
			t.Errorf("%s: %s (%s: %s, exit %v), want still Running", name, sbx.Status.Phase, sbx.Status.Reason, sbx.Status.Message, ptrVal(sbx.Status.ExitCode))
		}
		log := sandboxLog(t, sbx)
		for _, leak := range []string{"Authorization", "Bearer", "PRIVATE KEY", "CERTIFICATE", "GET /v1", "PUT /v1", "connection ended"} {
			if strings.Contains(log, leak) {
				t.Errorf("%s received %q; log:\n%s", name, leak, log)
			}
		}
	}
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
