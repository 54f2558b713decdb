package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/poolcontroller"
	"github.com/fast-sandbox/fast-sandbox/test/e2e/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// The chaos test runs a few hundred short sandboxes (and a few long ones)
// while agents are SIGKILLed, the scheduler and pool-controller Pods deleted,
// one agent Pod deleted and the node's containerd restarted, all at
// seeded-random moments, then checks that every sandbox ended truthfully,
// ran at most once, and that nothing of any of them is left once they and
// their pool are deleted.
//
// Settings (environment):
//
//	FAST_SANDBOX_CHAOS_SEED       the seed (printed by every run; set it to replay one)
//	FAST_SANDBOX_CHAOS_DURATION   soak mode: keep running rounds until this much time passed (e.g. 1h)
//	FAST_SANDBOX_CHAOS_SANDBOXES  sandboxes per round (default 180)
//	FAST_SANDBOX_CHAOS_WINDOW     how long a round submits and injects faults (default 150s)
//	FAST_SANDBOX_CHAOS_ARTIFACTS  where component logs go (default $TMPDIR/fast-sandbox-chaos-<seed>)

const (
	chaosNamespace = "fast-sandbox-chaos"
	chaosPool      = "chaos"
	systemNS       = v1alpha1.DefaultSystemNamespace
	// labels of the chaos Sandboxes
	chaosRoundLabel = "chaos.fast-sandbox.io/round"
	// what the agent's labels are and where it writes (pkg/agent/runtime/containerd)
	labelManagedBy   = "fast-sandbox.io/managed-by"
	labelAgentPodUID = "fast-sandbox.io/agent-pod-uid"
	labelStarted     = "fast-sandbox.io/started-at"
	sandboxIDPrefix  = "fsbx-"
	// settle bounds
	chaosSettleTimeout  = 4 * time.Minute
	chaosCleanupTimeout = 2 * time.Minute
)

type faultKind string

const (
	faultAgentKill         faultKind = "agent-sigkill"
	faultSchedulerDelete   faultKind = "scheduler-pod-delete"
	faultControllerDelete  faultKind = "pool-controller-pod-delete"
	faultAgentPodDelete    faultKind = "agent-pod-delete"
	faultContainerdRestart faultKind = "containerd-restart"
)

// roundFaults are the faults of one round, in an order the seed shuffles.
var roundFaults = []faultKind{
	faultAgentKill, faultAgentKill, faultAgentKill,
	faultSchedulerDelete, faultSchedulerDelete,
	faultControllerDelete, faultControllerDelete,
	faultAgentPodDelete,
	faultContainerdRestart,
}

// chaosSandbox is what the test asked for.
type chaosSandbox struct {
	name, uid string
	mark      string // printed once by the command
	exit      int32  // the command's exit code
	long      bool   // runs for an hour: Running at the end
	round     int
}

type chaosRun struct {
	t         *testing.T
	seed      int64
	start     time.Time
	sbx       versioned.Interface
	sock      string
	artifacts string

	mu            sync.Mutex
	faults        map[faultKind]int
	faultFailures []string
	deletedAgents map[string]string // UID -> name of agent Pods the test deleted
	sandboxes     []*chaosSandbox
	problems      []string // what the checks found, for the summary
	counts        map[string]int
	lost, dups    int
	leaked        int
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

func TestChaos(t *testing.T) {
	requireCluster(t)
	seed := time.Now().UnixNano()
	if v := os.Getenv("FAST_SANDBOX_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("FAST_SANDBOX_CHAOS_SEED=%q: %v", v, err)
		}
	}
	soak := envDuration(t, "FAST_SANDBOX_CHAOS_DURATION", 0)
	perRound := envInt(t, "FAST_SANDBOX_CHAOS_SANDBOXES", 180)
	window := envDuration(t, "FAST_SANDBOX_CHAOS_WINDOW", 150*time.Second)
	artifacts := os.Getenv("FAST_SANDBOX_CHAOS_ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join(os.TempDir(), fmt.Sprintf("fast-sandbox-chaos-%d", seed))
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("chaos seed %d (replay with FAST_SANDBOX_CHAOS_SEED=%d); %d sandboxes per round, window %s, soak %s; component logs in %s",
		seed, seed, perRound, window, soak, artifacts)

	c := &chaosRun{
		t: t, seed: seed, start: time.Now(), sbx: versioned.NewForConfigOrDie(cluster.Config),
		sock: mustSetting(t, "CONTAINERD_SOCK"), artifacts: artifacts,
		faults: map[faultKind]int{}, deletedAgents: map[string]string{}, counts: map[string]int{},
	}
	defer c.summary()
	c.deploy()

	for round := 0; ; round++ {
		c.round(round, perRound, window)
		if t.Failed() || soak == 0 || time.Since(c.start) >= soak {
			break
		}
	}
	c.teardown()
}

func (c *chaosRun) logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("[%s %+7.1fs] %s", time.Now().UTC().Format("15:04:05.0"), time.Since(c.start).Seconds(), fmt.Sprintf(format, args...))
}

// problem records a failed check: the test fails, and the summary lists it.
func (c *chaosRun) problem(format string, args ...any) {
	c.t.Helper()
	msg := fmt.Sprintf(format, args...)
	c.mu.Lock()
	c.problems = append(c.problems, msg)
	c.mu.Unlock()
	c.t.Errorf("[%s %+7.1fs] %s", time.Now().UTC().Format("15:04:05.0"), time.Since(c.start).Seconds(), msg)
}

// deploy installs the system (as TestSystem does) and a pool of two agents
// in the chaos namespace, after removing what a previous kept run left.
func (c *chaosRun) deploy() {
	t := c.t
	ctx := context.Background()
	deployComponents(t)
	kubetest.EnsureNamespace(t, cluster.Kube, chaosNamespace)
	sandboxes := c.sbx.SandboxV1alpha1().Sandboxes(chaosNamespace)
	if err := sandboxes.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	createPool(t, c.sbx, localPool(t, chaosPool, 2, 10))
	kubetest.WaitPool(t, c.sbx, chaosPool, poolPoll, readyAgents(2))
	kubetest.Eventually(t, kubetest.Poll{Interval: time.Second, Timeout: 3 * time.Minute}, "the sandboxes of an earlier run gone",
		func(ctx context.Context) error {
			left, err := sandboxes.List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			if len(left.Items) > 0 {
				return fmt.Errorf("%d Sandboxes in %s", len(left.Items), chaosNamespace)
			}
			return nil
		})
	c.logf("deployed: pool %s/%s has 2 ready agents", chaosNamespace, chaosPool)
}

// round submits perRound sandboxes in bursts over window while faults are
// injected, waits for them to settle, checks them, deletes them, and checks
// that their containers, logs and files are gone.
func (c *chaosRun) round(round, perRound int, window time.Duration) {
	ctx := context.Background()
	c.logf("round %d: %d sandboxes in bursts over %s, faults %v", round, perRound, window, roundFaults)
	var wg sync.WaitGroup
	wg.Add(2)
	roundStart := time.Now()
	go func() {
		defer wg.Done()
		c.submit(ctx, round, perRound, window, roundStart)
	}()
	go func() {
		defer wg.Done()
		c.injectFaults(ctx, round, window, roundStart)
	}()
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		c.sampleDuplicates(sampleCtx)
	}()
	wg.Wait()
	c.logf("round %d: submitted, faults done; waiting up to %s for every sandbox to settle", round, chaosSettleTimeout)

	mine := c.roundSandboxes(round)
	final := c.settle(ctx, round, mine)
	stopSampling()
	<-sampled
	c.checkOutcomes(ctx, mine, final)
	if c.t.Failed() {
		c.dumpArtifacts(fmt.Sprintf("round-%d-failed", round))
	}
	c.deleteRound(ctx, round, mine)
}

func (c *chaosRun) roundSandboxes(round int) []*chaosSandbox {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*chaosSandbox
	for _, s := range c.sandboxes {
		if s.round == round {
			out = append(out, s)
		}
	}
	return out
}

// submit creates the round's sandboxes in bursts of 20 to 30, spread over
// the window; three of them run for an hour, a fifth exit non-zero.
func (c *chaosRun) submit(ctx context.Context, round, n int, window time.Duration, roundStart time.Time) {
	rng := rand.New(rand.NewSource(c.seed + int64(round)*1_000_003))
	var bursts []int
	for left := n; left > 0; {
		b := min(20+rng.Intn(11), left)
		bursts = append(bursts, b)
		left -= b
	}
	longs := map[int]bool{}
	for len(longs) < min(3, n) {
		longs[rng.Intn(n)] = true
	}
	exits := []int32{1, 2, 3, 7, 42}
	sleeps := []int{0, 0, 1, 1, 1, 2, 2, 3, 5}
	i := 0
	for b, size := range bursts {
		at := roundStart.Add(time.Duration(float64(window) * 0.85 * (float64(b) + rng.Float64()*0.5) / float64(len(bursts))))
		time.Sleep(time.Until(at))
		for k := 0; k < size; k, i = k+1, i+1 {
			s := &chaosSandbox{name: fmt.Sprintf("r%d-%03d", round, i), round: round, long: longs[i]}
			s.mark = fmt.Sprintf("<<chaos-mark %s %d>>", s.name, c.seed)
			var script string
			if s.long {
				script = `echo "$MARK"; exec sleep 3600`
			} else {
				if rng.Intn(5) == 0 {
					s.exit = exits[rng.Intn(len(exits))]
				}
				script = fmt.Sprintf(`echo "$MARK"; sleep %d; exit %d`, sleeps[rng.Intn(len(sleeps))], s.exit)
			}
			obj := kubetest.Sandbox(s.name, chaosPool, cluster.TestImage, "sh", "-c", script)
			obj.Labels = map[string]string{chaosRoundLabel: strconv.Itoa(round)}
			obj.Spec.Env = []v1alpha1.EnvVar{{Name: "MARK", Value: s.mark}}
			obj.Spec.Resources = kubetest.Resources("40m", "32Mi")
			var created *v1alpha1.Sandbox
			// Not the test's goroutine: a failure is a problem, not a Fatal.
			err := kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: 30 * time.Second}.Until(ctx, func(ctx context.Context) (err error) {
				created, err = c.sbx.SandboxV1alpha1().Sandboxes(chaosNamespace).Create(ctx, obj, metav1.CreateOptions{})
				if apierrors.IsAlreadyExists(err) {
					created, err = c.sbx.SandboxV1alpha1().Sandboxes(chaosNamespace).Get(ctx, s.name, metav1.GetOptions{})
				}
				return err
			})
			if err != nil {
				c.problem("creating sandbox %s: %v", s.name, err)
				continue
			}
			s.uid = string(created.UID)
			c.mu.Lock()
			c.sandboxes = append(c.sandboxes, s)
			c.mu.Unlock()
		}
		c.logf("round %d: burst %d/%d: %d sandboxes submitted (%d in all)", round, b+1, len(bursts), size, i)
	}
}

// injectFaults injects the round's faults in a seeded order, each at a
// seeded moment of its share of the window.
func (c *chaosRun) injectFaults(ctx context.Context, round int, window time.Duration, roundStart time.Time) {
	rng := rand.New(rand.NewSource(c.seed + int64(round)*1_000_003 + 1))
	plan := append([]faultKind(nil), roundFaults...)
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	slot := window / time.Duration(len(plan))
	for i, f := range plan {
		at := roundStart.Add(slot*time.Duration(i) + time.Duration(float64(slot)*(0.2+0.6*rng.Float64())))
		time.Sleep(time.Until(at))
		if err := c.inject(ctx, f, rng); err != nil {
			c.mu.Lock()
			c.faultFailures = append(c.faultFailures, fmt.Sprintf("%s: %v", f, err))
			c.mu.Unlock()
			c.logf("FAULT %s could not be injected: %v", f, err)
			continue
		}
		c.mu.Lock()
		c.faults[f]++
		c.mu.Unlock()
	}
}

// agentPods lists the pool's agent Pods that run and are not being deleted.
func (c *chaosRun) agentPods(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := cluster.Kube.CoreV1().Pods(systemNS).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + chaosPool})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (c *chaosRun) inject(ctx context.Context, f faultKind, rng *rand.Rand) error {
	switch f {
	case faultAgentKill:
		pods, err := c.agentPods(ctx)
		if err != nil || len(pods) == 0 {
			return fmt.Errorf("no agent Pod to kill (%v)", err)
		}
		victims := pods
		if rng.Intn(3) != 0 { // mostly one agent, sometimes all of them
			victims = []corev1.Pod{pods[rng.Intn(len(pods))]}
		}
		var killed []string
		for _, p := range victims {
			pids := agentProcesses(string(p.UID))
			if len(pids) == 0 {
				c.logf("FAULT %s: no agent process in Pod %s (restarting?)", f, p.Name)
				continue
			}
			for _, pid := range pids {
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					return fmt.Errorf("killing agent pid %d of %s: %w", pid, p.Name, err)
				}
			}
			killed = append(killed, fmt.Sprintf("%s(pid %v, restarts so far %d)", p.Name, pids, restarts(p)))
		}
		if len(killed) == 0 {
			return errors.New("no agent process found")
		}
		c.logf("FAULT %s: %s", f, strings.Join(killed, ", "))
	case faultSchedulerDelete, faultControllerDelete:
		app := "fast-sandbox-scheduler"
		if f == faultControllerDelete {
			app = "fast-sandbox-pool-controller"
		}
		pods, err := cluster.Kube.CoreV1().Pods(systemNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + app})
		if err != nil {
			return err
		}
		var deleted []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			c.saveLogs(systemNS, p.Name, "before-delete")
			if err := cluster.Kube.CoreV1().Pods(systemNS).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			deleted = append(deleted, p.Name)
		}
		if len(deleted) == 0 {
			return fmt.Errorf("no %s Pod to delete", app)
		}
		c.logf("FAULT %s: deleted %v", f, deleted)
	case faultAgentPodDelete:
		pods, err := c.agentPods(ctx)
		if err != nil || len(pods) == 0 {
			return fmt.Errorf("no agent Pod to delete (%v)", err)
		}
		p := pods[rng.Intn(len(pods))]
		// Recorded first: from now on its sandboxes may fail with AgentLost.
		c.mu.Lock()
		c.deletedAgents[string(p.UID)] = p.Name
		c.mu.Unlock()
		bound := 0
		if list, err := c.sbx.SandboxV1alpha1().Sandboxes(chaosNamespace).List(ctx, metav1.ListOptions{}); err == nil {
			for _, s := range list.Items {
				if s.Status.AgentUID == string(p.UID) && !kubetest.IsFinished(&s) {
					bound++
				}
			}
		}
		c.saveLogs(systemNS, p.Name, "before-delete")
		if err := cluster.Kube.CoreV1().Pods(systemNS).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
		c.logf("FAULT %s: deleted %s (UID %s) with %d unfinished sandboxes bound to it", f, p.Name, p.UID, bound)
	case faultContainerdRestart:
		began := time.Now()
		if err := framework.RestartContainerd(func(s string) { c.logf("%s", strings.TrimSpace(s)) }); err != nil {
			return err
		}
		c.logf("FAULT %s: containerd answers again after %s", f, time.Since(began).Round(time.Millisecond))
	default:
		return fmt.Errorf("unknown fault %s", f)
	}
	return nil
}

func restarts(p corev1.Pod) int32 {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == poolcontroller.ContainerName {
			return s.RestartCount
		}
	}
	return 0
}

// agentProcesses finds the agent processes of an agent Pod: the processes
// named agent in the Pod's cgroup (its sandboxes live in sub-cgroups of the
// same Pod cgroup, and never under that name).
func agentProcesses(uid string) []int {
	markers := []string{"/pod" + uid + "/", "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != "agent" {
			continue
		}
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err != nil {
			continue
		}
		for _, m := range markers {
			if strings.Contains(string(cg), m) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// settled says whether a sandbox reached where it should be: short ones
// finished, long ones running (or finished: the check says whether rightly).
// One still bound to an agent Pod the test deleted has not settled until the
// scheduler noticed (the deletion may be the last fault, a moment ago).
func (s *chaosSandbox) settled(obj *v1alpha1.Sandbox, deleted map[string]string) bool {
	if kubetest.IsFinished(obj) {
		return true
	}
	if _, gone := deleted[obj.Status.AgentUID]; gone {
		return false
	}
	return s.long && obj.Status.Phase == v1alpha1.SandboxRunning
}

// settle polls until every sandbox of the round settled, or the bound passes.
func (c *chaosRun) settle(ctx context.Context, round int, mine []*chaosSandbox) map[string]*v1alpha1.Sandbox {
	var last map[string]*v1alpha1.Sandbox
	lastLog := time.Now()
	began := time.Now()
	err := kubetest.Poll{Interval: time.Second, Timeout: chaosSettleTimeout}.Until(ctx, func(ctx context.Context) error {
		list, err := c.sbx.SandboxV1alpha1().Sandboxes(chaosNamespace).List(ctx, metav1.ListOptions{LabelSelector: chaosRoundLabel + "=" + strconv.Itoa(round)})
		if err != nil {
			return err
		}
		last = map[string]*v1alpha1.Sandbox{}
		for i := range list.Items {
			last[list.Items[i].Name] = &list.Items[i]
		}
		c.mu.Lock()
		deleted := maps.Clone(c.deletedAgents)
		c.mu.Unlock()
		waiting := map[string]int{}
		n := 0
		for _, s := range mine {
			obj := last[s.name]
			if obj == nil {
				waiting["missing"]++
				n++
			} else if !s.settled(obj, deleted) {
				waiting[string(obj.Status.Phase)]++
				n++
			}
		}
		if n == 0 {
			return nil
		}
		if time.Since(lastLog) > 15*time.Second {
			c.logf("round %d: %d sandboxes not settled yet: %v", round, n, waiting)
			lastLog = time.Now()
		}
		return fmt.Errorf("%d sandboxes not settled: %v", n, waiting)
	})
	if err != nil {
		// checkOutcomes says which, and how.
		c.logf("round %d: %v", round, err)
	} else {
		c.logf("round %d: every sandbox settled %s after the faults ended", round, time.Since(began).Round(time.Second))
	}
	return last
}

// checkOutcomes checks every sandbox's final status against its command and
// the faults, and that at most one container ran it, printing its marker once.
func (c *chaosRun) checkOutcomes(ctx context.Context, mine []*chaosSandbox, final map[string]*v1alpha1.Sandbox) {
	byUID, err := c.containersByUID(ctx)
	if err != nil {
		c.problem("listing the node's sandbox containers: %v", err)
		return
	}
	stateDir := poolcontroller.StateDir
	c.mu.Lock()
	deleted := map[string]string{}
	for k, v := range c.deletedAgents {
		deleted[k] = v
	}
	c.mu.Unlock()
	deletedName := map[string]bool{}
	for _, name := range deleted {
		deletedName[name] = true
	}
	for _, s := range mine {
		obj := final[s.name]
		if obj == nil {
			c.count("lost (no Sandbox)")
			c.lost++
			c.problem("sandbox %s (UID %s) is gone", s.name, s.uid)
			continue
		}
		st := obj.Status
		desc := fmt.Sprintf("sandbox %s (UID %s, long %v, command exits %d): phase %q reason %q exit %s agent %s/%s container %q message %q",
			s.name, s.uid, s.long, s.exit, st.Phase, st.Reason, fmtExit(st.ExitCode), st.Agent, st.AgentUID, st.ContainerID, st.Message)
		key := string(st.Phase)
		if st.Reason != "" {
			key += "/" + st.Reason
		}
		c.count(key)
		onDeleted := deleted[st.AgentUID] != "" || (st.AgentUID == "" && deletedName[st.Agent])
		ran := true
		switch {
		case !s.settled(obj, deleted):
			c.lost++
			c.problem("never settled: %s", desc)
			ran = false
		case st.Phase == v1alpha1.SandboxFailed && st.Reason == v1alpha1.ReasonAgentLost:
			if !onDeleted {
				c.problem("AgentLost although its agent Pod was not deleted (deleted: %v): %s", deleted, desc)
			}
			ran = false
		case s.long:
			if st.Phase != v1alpha1.SandboxRunning {
				c.problem("a long-running sandbox is not Running: %s", desc)
			}
			if deleted[st.AgentUID] != "" {
				c.problem("Running on an agent Pod that was deleted: %s", desc)
			}
		case s.exit == 0:
			if st.Phase != v1alpha1.SandboxSucceeded || st.ExitCode == nil || *st.ExitCode != 0 {
				c.problem("want Succeeded with exit code 0: %s", desc)
			}
		default:
			if st.Phase != v1alpha1.SandboxFailed || st.ExitCode == nil || *st.ExitCode != s.exit {
				c.problem("want Failed with exit code %d: %s", s.exit, desc)
			}
		}

		ids := byUID[s.uid]
		if len(ids) > 1 {
			c.dups++
			c.problem("%d containers for one sandbox %v: %s", len(ids), ids, desc)
		}
		for _, id := range ids {
			logs, _ := filepath.Glob(filepath.Join(stateDir, "pods", "*", "logs", id+".log"))
			if len(logs) == 0 {
				continue
			}
			data, err := os.ReadFile(logs[0])
			if err != nil {
				continue
			}
			switch n := strings.Count(string(data), s.mark); {
			case n > 1:
				c.dups++
				c.problem("container %s printed the marker %d times (%q): %s", id, n, data, desc)
			case n == 0 && ran:
				c.problem("container %s never printed the marker (log %q): %s", id, data, desc)
			}
		}
		if len(ids) == 0 && ran && st.Phase == v1alpha1.SandboxRunning {
			c.problem("Running without a container on the node: %s", desc)
		}
	}
}

func fmtExit(e *int32) string {
	if e == nil {
		return "none"
	}
	return strconv.Itoa(int(*e))
}

func (c *chaosRun) count(key string) {
	c.mu.Lock()
	c.counts[key]++
	c.mu.Unlock()
}

// containerd opens a client of the node's containerd in namespace k8s.io.
// done closes it.
func (c *chaosRun) containerd() (cl *client.Client, ctx context.Context, done func(), err error) {
	cl, err = client.New(c.sock, client.WithDefaultNamespace("k8s.io"), client.WithTimeout(10*time.Second))
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "k8s.io"), time.Minute)
	return cl, ctx, func() { cancel(); cl.Close() }, nil
}

// containersByUID maps sandbox UIDs to the IDs of the containers labelled with them.
func (c *chaosRun) containersByUID(context.Context) (map[string][]string, error) {
	cl, ctx, done, err := c.containerd()
	if err != nil {
		return nil, err
	}
	defer done()
	cs, err := cl.ContainerService().List(ctx, fmt.Sprintf("labels.%q", v1alpha1.LabelSandboxUID))
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, ct := range cs {
		uid := ct.Labels[v1alpha1.LabelSandboxUID]
		out[uid] = append(out[uid], ct.ID)
	}
	return out, nil
}

// sampleDuplicates looks at the node's containers every two seconds while
// the faults go on: two containers of one sandbox both marked started mean
// that its command ran twice, even if one of them is gone by the end.
func (c *chaosRun) sampleDuplicates(ctx context.Context) {
	reported := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
		cl, cctx, done, err := c.containerd()
		if err != nil {
			continue
		}
		cs, err := cl.ContainerService().List(cctx, fmt.Sprintf("labels.%q", labelStarted))
		done()
		if err != nil {
			continue // containerd restarts
		}
		started := map[string][]string{}
		for _, ct := range cs {
			if uid := ct.Labels[v1alpha1.LabelSandboxUID]; uid != "" {
				started[uid] = append(started[uid], ct.ID)
			}
		}
		for uid, ids := range started {
			if len(ids) > 1 && !reported[uid] {
				reported[uid] = true
				c.mu.Lock()
				c.dups++
				c.mu.Unlock()
				c.problem("sandbox UID %s has %d containers marked started at once: %v", uid, len(ids), ids)
			}
		}
	}
}

// deleteRound deletes the round's sandboxes and waits until they, their
// containers and their log files are gone.
func (c *chaosRun) deleteRound(ctx context.Context, round int, mine []*chaosSandbox) {
	sandboxes := c.sbx.SandboxV1alpha1().Sandboxes(chaosNamespace)
	sel := chaosRoundLabel + "=" + strconv.Itoa(round)
	if err := sandboxes.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: sel}); err != nil {
		c.problem("deleting the sandboxes of round %d: %v", round, err)
		return
	}
	c.logf("round %d: deleted its %d sandboxes; waiting for them and their containers to go", round, len(mine))
	var why []string
	err := kubetest.Poll{Interval: time.Second, Timeout: chaosCleanupTimeout}.Until(ctx, func(ctx context.Context) error {
		why = nil
		list, err := sandboxes.List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return err
		}
		for _, s := range list.Items {
			why = append(why, fmt.Sprintf("Sandbox %s (phase %s, agent %s, finalizers %v)", s.Name, s.Status.Phase, s.Status.Agent, s.Finalizers))
		}
		byUID, err := c.containersByUID(ctx)
		if err != nil {
			why = append(why, "containerd: "+err.Error())
			return err
		}
		for _, s := range mine {
			for _, id := range byUID[s.uid] {
				why = append(why, fmt.Sprintf("container %s of deleted sandbox %s", id, s.name))
			}
		}
		if len(why) > 0 {
			return fmt.Errorf("%d things left", len(why))
		}
		return nil
	})
	if err != nil {
		c.leaked += len(why)
		byAgent := map[string]int{}
		for _, w := range why {
			if i := strings.Index(w, "agent "); i >= 0 {
				byAgent[strings.Fields(w[i+len("agent "):])[0]]++
			}
		}
		shown := why
		if len(shown) > 20 {
			shown = shown[:20]
		}
		c.problem("round %d: %d things left %s after deleting its sandboxes (Sandboxes by agent: %v), e.g.:\n  %s",
			round, len(why), chaosCleanupTimeout, byAgent, strings.Join(shown, "\n  "))
		c.dumpArtifacts(fmt.Sprintf("round-%d-cleanup", round))
		return
	}
	c.logf("round %d: its sandboxes and their containers are gone", round)
}

// teardown deletes the pool and checks that nothing of any chaos sandbox
// or chaos agent is left on the node.
func (c *chaosRun) teardown() {
	ctx := context.Background()
	if err := c.sbx.SandboxV1alpha1().SandboxPools().Delete(ctx, chaosPool, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		c.problem("deleting the pool: %v", err)
		return
	}
	c.logf("deleted the pool; waiting for its agent Pods to go and for the node to be clean")
	var leaks []string
	err := kubetest.Poll{Interval: time.Second, Timeout: chaosCleanupTimeout}.Until(ctx, func(ctx context.Context) error {
		pods, err := cluster.Kube.CoreV1().Pods(systemNS).List(ctx, metav1.ListOptions{
			LabelSelector: v1alpha1.LabelPoolName + "=" + chaosPool})
		if err != nil {
			return err
		}
		leaks = nil
		for _, p := range pods.Items {
			leaks = append(leaks, "Pod "+p.Name)
		}
		l, err := c.nodeLeftovers()
		if err != nil {
			leaks = append(leaks, err.Error())
		}
		leaks = append(leaks, l...)
		if len(leaks) > 0 {
			return fmt.Errorf("%d leftovers", len(leaks))
		}
		return nil
	})
	if err != nil {
		c.leaked += len(leaks)
		c.problem("%d leftovers %s after deleting every sandbox and the pool:\n  %s", len(leaks), chaosCleanupTimeout, strings.Join(leaks, "\n  "))
		c.dumpArtifacts("teardown")
		return
	}
	c.logf("the node is clean: no container, task, snapshot, mount, cgroup or file of a chaos sandbox or agent")
}

// nodeLeftovers lists what is left on the node of the chaos pool: its
// containers and tasks in containerd, and every fsbx- snapshot, mount,
// cgroup, log file and warm directory that no other pool's live container
// accounts for (other tests' pools may still run on the node).
func (c *chaosRun) nodeLeftovers() ([]string, error) {
	cl, ctx, done, err := c.containerd()
	if err != nil {
		return nil, err
	}
	defer done()
	cs, err := cl.ContainerService().List(ctx)
	if err != nil {
		return nil, err
	}
	others := map[string]bool{} // live containers of other pools' agents
	var left []string
	mineAgent := chaosPool + "-agent-"
	for _, ct := range cs {
		if !strings.HasPrefix(ct.ID, sandboxIDPrefix) && ct.Labels[labelManagedBy] == "" {
			continue
		}
		if strings.HasPrefix(ct.Labels[v1alpha1.LabelAgentName], mineAgent) || ct.Labels[v1alpha1.LabelSandboxNamespace] == chaosNamespace {
			left = append(left, fmt.Sprintf("container %s (labels %v)", ct.ID, ct.Labels))
			continue
		}
		if ct.Labels[labelAgentPodUID] != "" {
			others[ct.ID] = true
		} else {
			left = append(left, fmt.Sprintf("container %s of no agent (labels %v)", ct.ID, ct.Labels))
		}
	}
	resp, err := cl.TaskService().List(ctx, &tasksapi.ListTasksRequest{})
	if err != nil {
		return nil, err
	}
	for _, tk := range resp.Tasks {
		if strings.HasPrefix(tk.ID, sandboxIDPrefix) && !others[tk.ID] {
			left = append(left, fmt.Sprintf("task %s (pid %d, status %v)", tk.ID, tk.Pid, tk.Status))
		}
	}
	err = cl.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if strings.HasPrefix(info.Name, sandboxIDPrefix) && !others[info.Name] {
			left = append(left, "snapshot "+info.Name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	isOther := func(name string) bool {
		name = strings.TrimSuffix(strings.TrimSuffix(name, ".log"), ".scope")
		if others[name] {
			return true
		}
		for id := range others { // systemd scopes drop the prefix: fsbx-<rest>.scope
			if "fsbx-"+strings.TrimPrefix(id, sandboxIDPrefix) == name {
				return true
			}
		}
		return false
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	// Only the cluster's: tests of other packages run containerds of their own.
	var dirs []string
	for _, name := range []string{"CLUSTER_DIR", "RUN_DIR"} {
		d, err := framework.Setting(name)
		if err != nil {
			return nil, err
		}
		dirs = append(dirs, d+"/")
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.Contains(f[1], "/"+sandboxIDPrefix) ||
			(!strings.HasPrefix(f[1], dirs[0]) && !strings.HasPrefix(f[1], dirs[1])) {
			continue
		}
		owned := false
		for _, part := range strings.Split(f[1], "/") {
			if strings.HasPrefix(part, sandboxIDPrefix) && isOther(part) {
				owned = true
			}
		}
		if !owned {
			left = append(left, "mount "+f[1])
		}
	}
	// Sandboxes live in their agent Pod's cgroup: the kubepods subtree of
	// every hierarchy (v1) or of the unified one (v2). Tests of other
	// packages make fsbx- cgroups elsewhere.
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods*")
	more, _ := filepath.Glob("/sys/fs/cgroup/kubepods*")
	for _, root := range append(roots, more...) {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.HasPrefix(d.Name(), sandboxIDPrefix) {
				if !isOther(d.Name()) {
					left = append(left, "cgroup "+path)
				}
				return fs.SkipDir
			}
			return nil
		})
	}
	// Agents keep their files in a directory per agent Pod (pods/<uid>/{logs,warm});
	// logs and warm at the top are the layout without a Pod UID.
	stateDirs := []string{filepath.Join(poolcontroller.StateDir, "logs"), filepath.Join(poolcontroller.StateDir, "warm")}
	pods, _ := os.ReadDir(filepath.Join(poolcontroller.StateDir, "pods"))
	for _, p := range pods {
		stateDirs = append(stateDirs, filepath.Join(poolcontroller.StateDir, "pods", p.Name()))
	}
	for _, dir := range stateDirs {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || path == dir || d.IsDir() && (d.Name() == "logs" || d.Name() == "warm") {
				return nil
			}
			if !isOther(d.Name()) {
				left = append(left, "file "+path)
			}
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		})
	}
	sort.Strings(left)
	return left, nil
}

// saveLogs keeps a Pod's logs (and its previous container's) in the
// artifacts directory, e.g. before the test deletes the Pod.
func (c *chaosRun) saveLogs(ns, pod, when string) {
	for _, prev := range []bool{false, true} {
		args := []string{"-n", ns, "logs", pod, "--all-containers", "--timestamps"}
		suffix := ""
		if prev {
			args = append(args, "--previous")
			suffix = "-previous"
		}
		out, err := kubectlErr(args...)
		if err != nil && prev {
			continue
		}
		name := fmt.Sprintf("%s-%s%s-%s-%d.log", ns, pod, suffix, when, time.Now().UnixMilli())
		_ = os.WriteFile(filepath.Join(c.artifacts, name), []byte(out), 0o644)
	}
}

// dumpArtifacts writes what explains a failure: the Sandboxes, the Pods,
// the logs of every component and the tails of containerd's and kubelet's.
func (c *chaosRun) dumpArtifacts(when string) {
	dir := filepath.Join(c.artifacts, when)
	_ = os.MkdirAll(dir, 0o755)
	write := func(name, content string) { _ = os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644) }
	out, _ := kubectlErr("-n", chaosNamespace, "get", "sbx", "-o", "yaml")
	write("sandboxes.yaml", out)
	out, _ = kubectlErr("get", "pods,sbxpool", "-A", "-o", "wide")
	write("pods.txt", out)
	out, _ = kubectlErr("get", "events", "-A", "--sort-by=.lastTimestamp")
	write("events.txt", out)
	for _, ns := range []string{systemNS, chaosNamespace} {
		pods, err := cluster.Kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, p := range pods.Items {
			c.saveLogs(ns, p.Name, when)
		}
	}
	if logs, err := framework.Setting("CLUSTER_DIR"); err == nil {
		for _, comp := range []string{"containerd", "kubelet"} {
			data, err := os.ReadFile(filepath.Join(logs, "logs", comp+".log"))
			if err == nil {
				if len(data) > 4<<20 {
					data = data[len(data)-4<<20:]
				}
				write(comp+".log", string(data))
			}
		}
	}
	c.logf("artifacts written to %s", dir)
}

// summary logs the numbers of the run.
func (c *chaosRun) summary() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "chaos summary (seed %d, %s):\n", c.seed, time.Since(c.start).Round(time.Second))
	fmt.Fprintf(&b, "  sandboxes created: %d\n", len(c.sandboxes))
	kinds := []faultKind{faultAgentKill, faultSchedulerDelete, faultControllerDelete, faultAgentPodDelete, faultContainerdRestart}
	total := 0
	for _, k := range kinds {
		total += c.faults[k]
	}
	fmt.Fprintf(&b, "  faults injected: %d:", total)
	for _, k := range kinds {
		fmt.Fprintf(&b, " %s=%d", k, c.faults[k])
	}
	b.WriteString("\n")
	if len(c.faultFailures) > 0 {
		fmt.Fprintf(&b, "  faults that could not be injected: %v\n", c.faultFailures)
	}
	keys := make([]string, 0, len(c.counts))
	for k := range c.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b.WriteString("  final phase/reason:")
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, c.counts[k])
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "  lost: %d, duplicated: %d, leaked: %d, problems: %d\n", c.lost, c.dups, c.leaked, len(c.problems))
	fmt.Fprintf(&b, "  deleted agent Pods: %v\n", c.deletedAgents)
	c.t.Log(b.String())
}
