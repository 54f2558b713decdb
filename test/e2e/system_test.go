package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/test/e2e/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// system is fast-sandbox deployed on the local cluster with manifests/local.
type system struct {
	sbx  versioned.Interface
	ns   string
	pool string
}

// How the tests wait for a Sandbox, and for a pool (whose agents are Pods
// that start, or go, on the node).
var (
	sandboxPoll = kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 90 * time.Second}
	poolPoll    = kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: 3 * time.Minute}
)

// deployComponents applies manifests/local and waits for the scheduler, the
// pool controller, the sandbox-apiserver and its APIService. Should the test fail, it logs the cluster's Pods,
// Sandboxes and pools.
func deployComponents(t *testing.T) {
	t.Helper()
	requireCluster(t)
	kubectl(t, "apply", "-k", filepath.Join(framework.RepoRoot(), "manifests", "local"))
	for _, d := range []string{"fast-sandbox-scheduler", "fast-sandbox-pool-controller", "fast-sandbox-apiserver"} {
		kubectl(t, "-n", v1alpha1.DefaultSystemNamespace, "rollout", "status", "deployment/"+d, "--timeout=180s")
	}
	// kube-apiserver routes subresources.fast-sandbox.io (exec, log, files)
	// once its APIService is Available.
	kubectl(t, "wait", "--for=condition=Available", "apiservice/v1alpha1.subresources.fast-sandbox.io", "--timeout=180s")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := kubectlErr("get", "pods,sbx,sbxpool", "-A", "-o", "wide")
			t.Logf("the cluster when the test failed:\n%s", out)
		}
	})
}

func deploy(t *testing.T) *system {
	t.Helper()
	deployComponents(t)
	s := &system{sbx: versioned.NewForConfigOrDie(cluster.Config), ns: "default", pool: "e2e"}
	createPool(t, s.sbx, localPool(t, s.pool, 2, 8))
	kubetest.WaitPool(t, s.sbx, s.pool, poolPoll, readyAgents(2))
	return s
}

// localPool is a pool of agents agents with slots slots each, of the agent
// image built for the local cluster, warm with its test image.
func localPool(t *testing.T, name string, agents, slots int32) *v1alpha1.SandboxPool {
	t.Helper()
	p := kubetest.Pool(name, agents, agents, slots, "docker.io/fast-sandbox/agent:"+mustSetting(t, "VERSION"), kubetest.Resources("500m", "512Mi"))
	p.Spec.ScaleDownDelaySeconds = 60
	p.Spec.ImagePullPolicy = v1alpha1.PullNever
	p.Spec.WarmImages = []string{cluster.TestImage}
	p.Spec.Agent.ImagePullPolicy = corev1.PullNever
	p.Spec.Agent.ContainerdSocket = mustSetting(t, "CONTAINERD_SOCK")
	p.Spec.Agent.ContainerdRoot = mustSetting(t, "CONTAINERD_ROOT")
	return p
}

// createPool creates p, unless a cluster kept from an earlier run has it.
func createPool(t *testing.T, c versioned.Interface, p *v1alpha1.SandboxPool) {
	t.Helper()
	if _, err := c.SandboxV1alpha1().SandboxPools().Create(context.Background(), p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating SandboxPool %s: %v", p.Name, err)
	}
}

// readyAgents wants a pool with n ready agents.
func readyAgents(n int32) kubetest.Want[*v1alpha1.SandboxPool] {
	return kubetest.Where(fmt.Sprintf("%d ready agents", n), func(p *v1alpha1.SandboxPool) bool { return p.Status.ReadyAgents == n })
}

func mustSetting(t *testing.T, name string) string {
	t.Helper()
	v, err := framework.Setting(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kubectlErr(args ...string) (string, error) {
	bin := filepath.Join(mustSettingNoT("BIN_DIR"), "kubectl")
	cacheDir := filepath.Join(mustSettingNoT("CLUSTER_DIR"), "kubectl-cache")
	out, err := exec.Command(bin, append([]string{"--kubeconfig", cluster.Kubeconfig, "--cache-dir", cacheDir}, args...)...).CombinedOutput()
	return string(out), err
}

func mustSettingNoT(name string) string {
	v, _ := framework.Setting(name)
	return v
}

// create creates a Sandbox of the test image in the system's pool and
// namespace, changed by mutate (when not nil).
func (s *system) create(t *testing.T, name string, mutate func(*v1alpha1.Sandbox), cmd ...string) *v1alpha1.Sandbox {
	t.Helper()
	sbx := kubetest.Sandbox(name, s.pool, cluster.TestImage, cmd...)
	if mutate != nil {
		mutate(sbx)
	}
	return kubetest.CreateSandbox(t, s.sbx, s.ns, sbx)
}

// waitSandbox waits until want holds of the Sandbox name of the system's
// namespace.
func (s *system) waitSandbox(t *testing.T, name string, want kubetest.Want[*v1alpha1.Sandbox]) *v1alpha1.Sandbox {
	t.Helper()
	return kubetest.WaitSandbox(t, s.sbx, s.ns, name, sandboxPoll, want)
}

// containers lists the node's containerd containers of a sandbox UID.
func containers(t *testing.T, uid string) []string {
	t.Helper()
	out, err := exec.Command("ctr", "-a", mustSetting(t, "CONTAINERD_SOCK"), "-n", "k8s.io", "containers", "ls", "-q",
		fmt.Sprintf("labels.%q==%s", "fast-sandbox.io/sandbox-uid", uid)).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr containers ls: %v: %s", err, out)
	}
	return strings.Fields(string(out))
}

// noContainers says which containers of a sandbox UID are on the node,
// nil if none is.
func noContainers(t *testing.T, uid string) error {
	t.Helper()
	if ids := containers(t, uid); len(ids) > 0 {
		return fmt.Errorf("sandbox UID %s has containers %v", uid, ids)
	}
	return nil
}

// warmContainers lists the node's warm containers that wait for a sandbox.
func warmContainers(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ctr", "-a", mustSetting(t, "CONTAINERD_SOCK"), "-n", "k8s.io", "containers", "ls", "-q",
		fmt.Sprintf("labels.%q==true", "fast-sandbox.io/warm")).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr containers ls: %v: %s", err, out)
	}
	var free []string
	for _, id := range strings.Fields(string(out)) {
		info, err := exec.Command("ctr", "-a", mustSetting(t, "CONTAINERD_SOCK"), "-n", "k8s.io", "containers", "info", id).CombinedOutput()
		if err == nil && !strings.Contains(string(info), "fast-sandbox.io/sandbox-uid") {
			free = append(free, id)
		}
	}
	return free
}

func TestSystem(t *testing.T) {
	s := deploy(t)
	ctx := context.Background()

	t.Run("agent Pods run with the containerd socket's directory mounted", func(t *testing.T) {
		pods, err := cluster.Kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + s.pool})
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				running++
			}
			// The socket's directory, so that a restarted containerd's new
			// socket is seen through the mount.
			found := false
			sock := mustSetting(t, "CONTAINERD_SOCK")
			for _, v := range p.Spec.Volumes {
				if v.HostPath != nil && v.HostPath.Path == filepath.Dir(sock) {
					found = true
				}
			}
			if !found {
				t.Errorf("agent Pod %s does not mount the directory of the containerd socket %s", p.Name, sock)
			}
		}
		if running != 2 {
			t.Errorf("%d agent Pods Running, want 2", running)
		}
	})

	t.Run("a sandbox runs in its agent Pod's cgroup with its own limits and succeeds", func(t *testing.T) {
		s.create(t, "hello", func(x *v1alpha1.Sandbox) {
			x.Spec.Resources = kubetest.Resources("200m", "64Mi")
		}, "sh", "-c", "echo hello; sleep 3")
		r := s.waitSandbox(t, "hello", kubetest.Phase(v1alpha1.SandboxRunning))
		agentPod, err := cluster.Kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).Get(ctx, r.Status.Agent, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Guaranteed agent Pods live in /kubepods/pod<UID> (cgroupfs driver).
		dir := filepath.Join("/sys/fs/cgroup/memory/kubepods", "pod"+string(agentPod.UID), r.Status.ContainerID)
		limit, err := os.ReadFile(filepath.Join(dir, "memory.limit_in_bytes"))
		if err != nil {
			t.Fatalf("the sandbox's cgroup is not under its agent Pod's: %v", err)
		}
		if got := strings.TrimSpace(string(limit)); got != fmt.Sprint(64<<20) {
			t.Errorf("sandbox memory limit %s, want %d", got, 64<<20)
		}
		podLimit, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory/kubepods", "pod"+string(agentPod.UID), "memory.limit_in_bytes"))
		if got := strings.TrimSpace(string(podLimit)); got != fmt.Sprint(512<<20) {
			t.Errorf("agent Pod memory limit %s, want %d: the Pod bounds the sum of its sandboxes", got, 512<<20)
		}
		done := s.waitSandbox(t, "hello", kubetest.Phase(v1alpha1.SandboxSucceeded))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 0 {
			t.Errorf("exit code %v", done.Status.ExitCode)
		}
	})

	t.Run("a sandbox of the pool's warm image starts in a warm container", func(t *testing.T) {
		// Every agent keeps warm containers for the pool's warmImages.
		kubetest.Eventually(t, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: time.Minute}, "a warm container", func(context.Context) error {
			if len(warmContainers(t)) == 0 {
				return errors.New("none on the node")
			}
			return nil
		})
		s.create(t, "warm", nil, "sh", "-c", "echo warm on $(hostname); sleep 2")
		r := s.waitSandbox(t, "warm", kubetest.Phase(v1alpha1.SandboxRunning))
		ready := meta.FindStatusCondition(r.Status.Conditions, v1alpha1.SandboxConditionReady)
		if !strings.HasPrefix(r.Status.ContainerID, "fsbx-w-") || ready == nil || !strings.Contains(ready.Message, "warm container") {
			t.Errorf("container %q, Ready %+v: want a warm container", r.Status.ContainerID, ready)
		}
		done := s.waitSandbox(t, "warm", kubetest.Phase(v1alpha1.SandboxSucceeded))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 0 {
			t.Errorf("status %+v", done.Status)
		}
	})

	t.Run("a failing command fails with its exit code", func(t *testing.T) {
		s.create(t, "fails", nil, "sh", "-c", "exit 3")
		done := s.waitSandbox(t, "fails", kubetest.Phase(v1alpha1.SandboxFailed))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 3 {
			t.Errorf("status %+v", done.Status)
		}
	})

	t.Run("a sandbox over its memory is OOMKilled", func(t *testing.T) {
		s.create(t, "oom", func(x *v1alpha1.Sandbox) {
			x.Spec.Resources.Memory = ptr.To(resource.MustParse("16Mi"))
		}, "sh", "-c", "tail /dev/zero")
		done := s.waitSandbox(t, "oom", kubetest.Phase(v1alpha1.SandboxFailed))
		if done.Status.Reason != v1alpha1.ReasonOOMKilled {
			t.Errorf("reason %q, want OOMKilled", done.Status.Reason)
		}
	})

	t.Run("a missing image fails with ImageNotPresent", func(t *testing.T) {
		s.create(t, "noimage", func(x *v1alpha1.Sandbox) { x.Spec.Image = "docker.io/library/not-on-this-node:1" })
		done := s.waitSandbox(t, "noimage", kubetest.Phase(v1alpha1.SandboxFailed))
		if done.Status.Reason != v1alpha1.ReasonImageNotPresent {
			t.Errorf("reason %q, want ImageNotPresent", done.Status.Reason)
		}
	})

	t.Run("an invalid sandbox is refused by kubectl apply", func(t *testing.T) {
		out, err := kubectlErr("apply", "-f", filepath.Join(framework.RepoRoot(), "manifests", "samples", "sandbox-invalid.yaml"))
		if err == nil || !strings.Contains(out, "spec.poolName") || !strings.Contains(out, "cpu must be positive") {
			t.Errorf("kubectl apply: %v\n%s", err, out)
		}
	})

	t.Run("deleting a sandbox removes its container", func(t *testing.T) {
		sbx := s.create(t, "deleted", nil, "sleep", "300")
		s.waitSandbox(t, "deleted", kubetest.Phase(v1alpha1.SandboxRunning))
		if n := len(containers(t, string(sbx.UID))); n != 1 {
			t.Fatalf("%d containers, want 1", n)
		}
		if err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Delete(ctx, "deleted", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		gone := kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 30 * time.Second}
		kubetest.WaitSandboxGone(t, s.sbx, s.ns, "deleted", gone)
		kubetest.Eventually(t, gone, "the deleted sandbox's container removed", func(context.Context) error {
			return noContainers(t, string(sbx.UID))
		})
	})

	t.Run("restarting the scheduler and the agents mid-burst leaves exactly one container per sandbox", func(t *testing.T) {
		const n = 12
		var names, uids []string
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("burst-%d", i)
			sbx := s.create(t, name, nil, "sleep", "600")
			names, uids = append(names, name), append(uids, string(sbx.UID))
			switch i {
			case n / 3:
				// Every agent process dies; kubelet restarts it in the same Pod.
				if out, err := exec.Command("pkill", "-KILL", "-x", "agent").CombinedOutput(); err != nil {
					t.Fatalf("killing the agents: %v %s", err, out)
				}
			case 2 * n / 3:
				kubectl(t, "-n", "fast-sandbox-system", "delete", "pod", "-l", "app.kubernetes.io/name=fast-sandbox-scheduler", "--wait=false")
			}
		}
		for i, name := range names {
			s.waitSandbox(t, name, kubetest.Phase(v1alpha1.SandboxRunning))
			if got := containers(t, uids[i]); len(got) != 1 {
				t.Errorf("sandbox %s has %d containers: %v", name, len(got), got)
			}
		}
		// The scheduler that took over and the restarted agents agree, and stay so.
		kubetest.Consistently(t, kubetest.Poll{Interval: time.Second, Timeout: 3 * time.Second}, "every sandbox Running in one container",
			func(ctx context.Context) error {
				var wrong []error
				for i, name := range names {
					sbx, err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Get(ctx, name, metav1.GetOptions{})
					if err != nil {
						wrong = append(wrong, err)
					} else if sbx.Status.Phase != v1alpha1.SandboxRunning {
						wrong = append(wrong, fmt.Errorf("sandbox %s: %s", name, kubetest.DescribeSandbox(sbx)))
					}
					if got := containers(t, uids[i]); len(got) != 1 {
						wrong = append(wrong, fmt.Errorf("sandbox %s has %d containers: %v", name, len(got), got))
					}
				}
				return errors.Join(wrong...)
			})
		for _, name := range names {
			_ = s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Delete(ctx, name, metav1.DeleteOptions{})
		}
		kubetest.Eventually(t, kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: time.Minute}, "the containers of the deleted sandboxes removed",
			func(context.Context) error {
				var left []error
				for _, uid := range uids {
					left = append(left, noContainers(t, uid))
				}
				return errors.Join(left...)
			})
	})

	t.Run("a lost agent fails its sandboxes and is replaced", func(t *testing.T) {
		s.create(t, "orphaned", nil, "sleep", "300")
		r := s.waitSandbox(t, "orphaned", kubetest.Phase(v1alpha1.SandboxRunning))
		if err := cluster.Kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).Delete(ctx, r.Status.Agent, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		done := s.waitSandbox(t, "orphaned", kubetest.Phase(v1alpha1.SandboxFailed))
		if done.Status.Reason != v1alpha1.ReasonAgentLost {
			t.Errorf("reason %q, want AgentLost", done.Status.Reason)
		}
		// Its lost agent is replaced.
		kubetest.WaitPool(t, s.sbx, s.pool, poolPoll, readyAgents(2))
		// Its container belongs to nobody now: an agent on the node sweeps it.
		kubetest.Eventually(t, kubetest.Poll{Interval: time.Second, Timeout: 90 * time.Second}, "the lost agent's container swept",
			func(context.Context) error { return noContainers(t, string(done.UID)) })
	})

	t.Run("the pool scales up and down with real Pods", func(t *testing.T) {
		setSize := func(n int32) {
			// The pool controller writes status meanwhile: retry on conflicts.
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				p, err := s.sbx.SandboxV1alpha1().SandboxPools().Get(ctx, s.pool, metav1.GetOptions{})
				if err != nil {
					return err
				}
				p.Spec.MinAgents, p.Spec.MaxAgents = n, n
				_, err = s.sbx.SandboxV1alpha1().SandboxPools().Update(ctx, p, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		setSize(3)
		kubetest.WaitPool(t, s.sbx, s.pool, poolPoll, kubetest.Where("3 agents, all ready", func(p *v1alpha1.SandboxPool) bool {
			return p.Status.ReadyAgents == 3 && p.Status.Agents == 3
		}))
		setSize(1)
		kubetest.WaitPool(t, s.sbx, s.pool, poolPoll, kubetest.Where("1 agent, ready", func(p *v1alpha1.SandboxPool) bool {
			return p.Status.Agents == 1 && p.Status.ReadyAgents == 1
		}))
	})
}
