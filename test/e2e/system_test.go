package e2e

import (
	"context"
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
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/test/e2e/framework"
)

// system is fast-sandbox deployed on the local cluster with manifests/local.
type system struct {
	t    *testing.T
	sbx  versioned.Interface
	ns   string
	pool string
}

// deployComponents applies manifests/local and waits for the scheduler and
// the pool controller.
func deployComponents(t *testing.T) {
	t.Helper()
	requireCluster(t)
	kubectl(t, "apply", "-k", filepath.Join(framework.RepoRoot(), "manifests", "local"))
	for _, d := range []string{"fast-sandbox-scheduler", "fast-sandbox-pool-controller"} {
		kubectl(t, "-n", v1alpha1.DefaultSystemNamespace, "rollout", "status", "deployment/"+d, "--timeout=120s")
	}
}

func deploy(t *testing.T) *system {
	t.Helper()
	deployComponents(t)
	s := &system{t: t, sbx: versioned.NewForConfigOrDie(cluster.Config), ns: "default", pool: "e2e"}
	pool := &v1alpha1.SandboxPool{
		ObjectMeta: metav1.ObjectMeta{Name: s.pool},
		Spec: v1alpha1.SandboxPoolSpec{
			MinAgents: 2, MaxAgents: 2, SlotsPerAgent: 8, ScaleDownDelaySeconds: 60,
			ImagePullPolicy: v1alpha1.PullNever, WarmImages: []string{cluster.TestImage},
			Agent: v1alpha1.AgentTemplate{
				Image: "docker.io/fast-sandbox/agent:" + mustSetting(t, "VERSION"), ImagePullPolicy: corev1.PullNever,
				Resources:        v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("500m")), Memory: ptr.To(resource.MustParse("512Mi"))},
				ContainerdSocket: mustSetting(t, "CONTAINERD_SOCK"),
				ContainerdRoot:   mustSetting(t, "CONTAINERD_ROOT"),
			},
		},
	}
	if _, err := s.sbx.SandboxV1alpha1().SandboxPools().Create(context.Background(), pool, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	s.waitPool(func(p *v1alpha1.SandboxPool) bool { return p.Status.ReadyAgents == 2 }, "2 ready agents")
	return s
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

func (s *system) waitPool(cond func(*v1alpha1.SandboxPool) bool, what string) *v1alpha1.SandboxPool {
	s.t.Helper()
	var last *v1alpha1.SandboxPool
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := s.sbx.SandboxV1alpha1().SandboxPools().Get(ctx, s.pool, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		out, _ := kubectlErr("get", "pods", "-A", "-o", "wide")
		s.t.Fatalf("pool never had %s: last status %+v\n%s", what, last.Status, out)
	}
	return last
}

func (s *system) create(name string, mutate func(*v1alpha1.Sandbox), cmd ...string) *v1alpha1.Sandbox {
	s.t.Helper()
	sbx := &v1alpha1.Sandbox{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.SandboxSpec{PoolName: s.pool, Image: cluster.TestImage, Command: cmd}}
	if mutate != nil {
		mutate(sbx)
	}
	out, err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Create(context.Background(), sbx, metav1.CreateOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

func (s *system) waitSandbox(name, what string, cond func(*v1alpha1.Sandbox) bool) *v1alpha1.Sandbox {
	s.t.Helper()
	var last *v1alpha1.Sandbox
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		sbx, err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = sbx
		return cond(sbx), nil
	})
	if err != nil {
		s.t.Fatalf("sandbox %s never became %s; last status %+v", name, what, last.Status)
	}
	return last
}

func phase(p v1alpha1.SandboxPhase) func(*v1alpha1.Sandbox) bool {
	return func(s *v1alpha1.Sandbox) bool { return s.Status.Phase == p }
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
		s.create("hello", func(x *v1alpha1.Sandbox) {
			x.Spec.Resources = v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("200m")), Memory: ptr.To(resource.MustParse("64Mi"))}
		}, "sh", "-c", "echo hello; sleep 3")
		r := s.waitSandbox("hello", "Running", phase(v1alpha1.SandboxRunning))
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
		done := s.waitSandbox("hello", "Succeeded", phase(v1alpha1.SandboxSucceeded))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 0 {
			t.Errorf("exit code %v", done.Status.ExitCode)
		}
	})

	t.Run("a sandbox of the pool's warm image starts in a warm container", func(t *testing.T) {
		// Every agent keeps warm containers for the pool's warmImages.
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
			return len(warmContainers(t)) > 0, nil
		})
		if err != nil {
			t.Fatalf("no warm container appeared: %v", err)
		}
		s.create("warm", nil, "sh", "-c", "echo warm on $(hostname); sleep 2")
		r := s.waitSandbox("warm", "Running", phase(v1alpha1.SandboxRunning))
		ready := meta.FindStatusCondition(r.Status.Conditions, v1alpha1.SandboxConditionReady)
		if !strings.HasPrefix(r.Status.ContainerID, "fsbx-w-") || ready == nil || !strings.Contains(ready.Message, "warm container") {
			t.Errorf("container %q, Ready %+v: want a warm container", r.Status.ContainerID, ready)
		}
		done := s.waitSandbox("warm", "Succeeded", phase(v1alpha1.SandboxSucceeded))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 0 {
			t.Errorf("status %+v", done.Status)
		}
	})

	t.Run("a failing command fails with its exit code", func(t *testing.T) {
		s.create("fails", nil, "sh", "-c", "exit 3")
		done := s.waitSandbox("fails", "Failed", phase(v1alpha1.SandboxFailed))
		if done.Status.ExitCode == nil || *done.Status.ExitCode != 3 {
			t.Errorf("status %+v", done.Status)
		}
	})

	t.Run("a sandbox over its memory is OOMKilled", func(t *testing.T) {
		s.create("oom", func(x *v1alpha1.Sandbox) {
			x.Spec.Resources.Memory = ptr.To(resource.MustParse("16Mi"))
		}, "sh", "-c", "tail /dev/zero")
		done := s.waitSandbox("oom", "Failed", phase(v1alpha1.SandboxFailed))
		if done.Status.Reason != v1alpha1.ReasonOOMKilled {
			t.Errorf("reason %q, want OOMKilled", done.Status.Reason)
		}
	})

	t.Run("a missing image fails with ImageNotPresent", func(t *testing.T) {
		s.create("noimage", func(x *v1alpha1.Sandbox) { x.Spec.Image = "docker.io/library/not-on-this-node:1" })
		done := s.waitSandbox("noimage", "Failed", phase(v1alpha1.SandboxFailed))
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
		sbx := s.create("deleted", nil, "sleep", "300")
		s.waitSandbox("deleted", "Running", phase(v1alpha1.SandboxRunning))
		if n := len(containers(t, string(sbx.UID))); n != 1 {
			t.Fatalf("%d containers, want 1", n)
		}
		if err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Delete(ctx, "deleted", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Get(ctx, "deleted", metav1.GetOptions{})
			return apierrors.IsNotFound(err) && len(containers(t, string(sbx.UID))) == 0, nil
		})
		if err != nil {
			t.Errorf("sandbox or container still there: %v", err)
		}
	})

	t.Run("restarting the scheduler and the agents mid-burst leaves exactly one container per sandbox", func(t *testing.T) {
		const n = 12
		var names, uids []string
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("burst-%d", i)
			sbx := s.create(name, nil, "sleep", "600")
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
			s.waitSandbox(name, "Running", phase(v1alpha1.SandboxRunning))
			if got := containers(t, uids[i]); len(got) != 1 {
				t.Errorf("sandbox %s has %d containers: %v", name, len(got), got)
			}
		}
		// The scheduler that took over and the restarted agents agree, and stay so.
		time.Sleep(3 * time.Second)
		for i, name := range names {
			sbx, err := s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil || sbx.Status.Phase != v1alpha1.SandboxRunning {
				t.Errorf("sandbox %s: %v %+v", name, err, sbx.Status)
			}
			if got := containers(t, uids[i]); len(got) != 1 {
				t.Errorf("sandbox %s has %d containers after settling: %v", name, len(got), got)
			}
		}
		for _, name := range names {
			_ = s.sbx.SandboxV1alpha1().Sandboxes(s.ns).Delete(ctx, name, metav1.DeleteOptions{})
		}
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
			for i := range names {
				if len(containers(t, uids[i])) != 0 {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			t.Errorf("containers of deleted sandboxes remain: %v", err)
		}
	})

	t.Run("a lost agent fails its sandboxes and is replaced", func(t *testing.T) {
		s.create("orphaned", nil, "sleep", "300")
		r := s.waitSandbox("orphaned", "Running", phase(v1alpha1.SandboxRunning))
		if err := cluster.Kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).Delete(ctx, r.Status.Agent, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		done := s.waitSandbox("orphaned", "Failed", phase(v1alpha1.SandboxFailed))
		if done.Status.Reason != v1alpha1.ReasonAgentLost {
			t.Errorf("reason %q, want AgentLost", done.Status.Reason)
		}
		s.waitPool(func(p *v1alpha1.SandboxPool) bool { return p.Status.ReadyAgents == 2 }, "its lost agent replaced")
		// Its container belongs to nobody now: an agent on the node sweeps it.
		err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
			return len(containers(t, string(done.UID))) == 0, nil
		})
		if err != nil {
			t.Errorf("the lost agent's container is still on the node: %v", err)
		}
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
		s.waitPool(func(p *v1alpha1.SandboxPool) bool { return p.Status.ReadyAgents == 3 && p.Status.Agents == 3 }, "3 ready agents")
		setSize(1)
		s.waitPool(func(p *v1alpha1.SandboxPool) bool { return p.Status.Agents == 1 && p.Status.ReadyAgents == 1 }, "1 agent")
	})
}
