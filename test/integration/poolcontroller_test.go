package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/kubernetes/pkg/capabilities"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
	"github.com/fast-sandbox/fast-sandbox/pkg/poolcontroller"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// TestPoolController runs the pool controller against a real kube-apiserver.
// There is no kubelet, kube-scheduler or garbage collector: the test plays
// the kubelet (Pod status) and the fast-sandbox scheduler (Sandbox status).
//
// SandboxPools are cluster-scoped and every agent Pod, cleanup Pod and
// certificate Secret lives in the system namespace, which all subtests
// share: each subtest uses pools of its own names, and removes its pools,
// Pods and Secrets when it ends (after its controller stopped), so that
// the next subtest's controller does not manage them.
func TestPoolController(t *testing.T) {
	cp := framework.Start(t)
	allowPrivileged(t)
	cp.SystemNamespace(t)

	t.Run("min agents, certificates and status", func(t *testing.T) { testPoolMinAgents(t, cp) })
	t.Run("certificates renewed, reissued and collected", func(t *testing.T) { testPoolCertificates(t, cp) })
	t.Run("grows for pending sandboxes up to max", func(t *testing.T) { testPoolGrowth(t, cp) })
	t.Run("targeted node choice", func(t *testing.T) { testPoolTargetedNode(t, cp) })
	t.Run("scale-down drains idle agents only", func(t *testing.T) { testPoolScaleDown(t, cp) })
	t.Run("replaces a failed agent", func(t *testing.T) { testPoolReplacesFailed(t, cp) })
	t.Run("no double creation under a slow informer", func(t *testing.T) { testPoolSlowInformer(t, cp) })
	t.Run("a stopped agent's node is cleaned before its Pod goes", func(t *testing.T) { testPoolCleansNode(t, cp) })
	t.Run("an agent without a node or Node loses its finalizer", func(t *testing.T) { testPoolCleanupNotNeeded(t, cp) })
	t.Run("the node is cleaned after a deleted pool's agent", func(t *testing.T) { testPoolCleanupAfterPool(t, cp) })
}

// allowPrivileged is the in-process kube-apiserver's --allow-privileged=true
// (what kubeadm and every real cluster set): agent Pods are privileged. The
// setting is global to the process, so it is restored when the test ends.
func allowPrivileged(t *testing.T) {
	t.Helper()
	capabilities.ResetForTest()
	capabilities.Initialize(capabilities.Capabilities{AllowPrivileged: true})
	if !capabilities.Get().AllowPrivileged {
		t.Fatal("could not allow privileged Pods in the test apiserver")
	}
	t.Cleanup(capabilities.ResetForTest)
}

// poll is how the pool controller tests wait.
var poll = kubetest.Poll{Interval: 20 * time.Millisecond, Timeout: 15 * time.Second}

// systemNS is the system namespace: the agent Pods, their cleanup Pods and
// their Secrets are there (and nowhere else).
const systemNS = v1alpha1.DefaultSystemNamespace

// removePoolsWhenDone removes, when the test ends, every SandboxPool and
// every Pod and agent certificate Secret of the system namespace (the CA
// and the scheduler's Secret stay, as they would across controller
// restarts). Call it before startPoolController, so that it runs once the
// controller has stopped.
func removePoolsWhenDone(t *testing.T, cp *framework.ControlPlane) {
	t.Helper()
	t.Cleanup(func() {
		ctx := context.Background()
		if err := cp.Sandbox.SandboxV1alpha1().SandboxPools().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Errorf("deleting the pools: %v", err)
		}
		pods, err := cp.Kube.CoreV1().Pods(systemNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Errorf("listing the Pods of %s: %v", systemNS, err)
			return
		}
		for _, pod := range pods.Items {
			if len(pod.Finalizers) > 0 {
				patch := []byte(`{"metadata":{"finalizers":null}}`)
				if _, err := cp.Kube.CoreV1().Pods(systemNS).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("removing the finalizers of Pod %s: %v", pod.Name, err)
				}
			}
			if err := cp.Kube.CoreV1().Pods(systemNS).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting Pod %s: %v", pod.Name, err)
			}
		}
		err = cp.Kube.CoreV1().Secrets(systemNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName})
		if err != nil {
			t.Errorf("deleting the agent Secrets: %v", err)
		}
	})
}

// startPoolController runs a controller as cmd/pool-controller does: its Pod
// and Secret informers show only the system namespace's objects labelled
// with a pool name, its cleanup Pod informer only the system namespace's
// cleanup Pods; Sandboxes, pools and Nodes are watched everywhere. With
// podWatchDelay > 0 its Pod informer sees every change that much later.
func startPoolController(t *testing.T, cp *framework.ControlPlane, podWatchDelay time.Duration) {
	t.Helper()
	startPoolControllerWithClock(t, cp, podWatchDelay, nil)
}

// startPoolControllerWithClock is startPoolController with the controller
// on the given clock (the real one when nil). It returns a function that
// stops the controller before the test ends.
func startPoolControllerWithClock(t *testing.T, cp *framework.ControlPlane, podWatchDelay time.Duration, clk clock.WithTicker) (stop func()) {
	t.Helper()
	return startPoolControllerWithOptions(t, cp, podWatchDelay, poolcontroller.Options{Clock: clk})
}

// startPoolControllerWithOptions is startPoolController with opts.
func startPoolControllerWithOptions(t *testing.T, cp *framework.ControlPlane, podWatchDelay time.Duration, opts poolcontroller.Options) (stop func()) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	var (
		c        *poolcontroller.Controller
		err      error
		start    func(stop <-chan struct{})
		shutdown func()
		wg       sync.WaitGroup
	)
	if podWatchDelay == 0 {
		// The informers of cmd/pool-controller.
		inf := poolcontroller.NewInformers(cp.Kube, cp.Sandbox, systemNS, 0)
		c, err = poolcontroller.NewControllerWithInformers(ctx, cp.Kube, cp.Sandbox, inf, systemNS, opts)
		start, shutdown = inf.Start, inf.Shutdown
	} else {
		// The same (see poolcontroller.NewInformers), but for the Pod
		// informer, which lags.
		selectPool := informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelPoolName })
		labelled := informers.NewSharedInformerFactoryWithOptions(cp.Kube, 0, informers.WithNamespace(systemNS), selectPool)
		nodes := informers.NewSharedInformerFactory(cp.Kube, 0)
		sbx := externalversions.NewSharedInformerFactory(cp.Sandbox, 0)
		cleanup := informers.NewSharedInformerFactoryWithOptions(cp.Kube, 0, informers.WithNamespace(systemNS),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = v1alpha1.LabelCleanupAgentPodUID }))
		pods := newSlowPodInformer(cp.Kube, systemNS, podWatchDelay)
		opts.SystemNamespace, opts.CleanupPods = systemNS, cleanup.Core().V1().Pods()
		c, err = poolcontroller.NewController(ctx, cp.Kube, cp.Sandbox, pods, nodes.Core().V1().Nodes(),
			labelled.Core().V1().Secrets(), sbx.Sandbox().V1alpha1().SandboxPools(), sbx.Sandbox().V1alpha1().Sandboxes(), opts)
		start = func(stop <-chan struct{}) {
			labelled.Start(stop)
			nodes.Start(stop)
			sbx.Start(stop)
			cleanup.Start(stop)
			wg.Go(func() { pods.Informer().RunWithContext(ctx) })
		}
		shutdown = func() {
			labelled.Shutdown()
			nodes.Shutdown()
			sbx.Shutdown()
			cleanup.Shutdown()
		}
	}
	if err != nil {
		t.Fatalf("NewController: %v", err)
	}
	start(ctx.Done())
	wg.Go(func() {
		if err := c.Run(ctx, 2); err != nil {
			t.Errorf("controller: %v", err)
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			shutdown()
		})
	}
	t.Cleanup(stop)
	return stop
}

// testPool is a pool whose agents stay idle for 300s before they may go.
func testPool(name string, minAgents, maxAgents, slots int32) *v1alpha1.SandboxPool {
	p := kubetest.Pool(name, minAgents, maxAgents, slots, "fast-sandbox/agent:dev", kubetest.Resources("1", "1Gi"))
	p.Spec.ScaleDownDelaySeconds = 300
	return p
}

// createPendingSandbox creates a Sandbox of the pool that no scheduler runs.
func createPendingSandbox(t *testing.T, cp *framework.ControlPlane, ns, pool, name, image string) *v1alpha1.Sandbox {
	t.Helper()
	return kubetest.CreateSandbox(t, cp.Sandbox, ns, kubetest.Sandbox(name, pool, image, "true"))
}

// bindSandbox plays the scheduler: the Sandbox runs on agent.
func bindSandbox(t *testing.T, cp *framework.ControlPlane, s *v1alpha1.Sandbox, agent *corev1.Pod, phase v1alpha1.SandboxPhase) *v1alpha1.Sandbox {
	t.Helper()
	s = s.DeepCopy()
	s.Status.Agent, s.Status.AgentUID, s.Status.Phase = agent.Name, string(agent.UID), phase
	if phase == v1alpha1.SandboxSucceeded {
		s.Status.FinishTime = ptr.To(metav1.NowMicro())
		s.Status.ExitCode = ptr.To[int32](0)
	}
	got, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(s.Namespace).UpdateStatus(context.Background(), s, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("updating the status of sandbox %s: %v", s.Name, err)
	}
	return got
}

// listAgents lists the agent Pods of a pool (in the system namespace).
func listAgents(t *testing.T, cp *framework.ControlPlane, pool string) []corev1.Pod {
	t.Helper()
	l, err := cp.Kube.CoreV1().Pods(systemNS).List(context.Background(), metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + pool})
	if err != nil {
		t.Fatalf("listing agent Pods: %v", err)
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
	return l.Items
}

func podNames(pods []corev1.Pod) []string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Name
	}
	return names
}

// waitForAgents waits until the pool has exactly n agent Pods.
func waitForAgents(t *testing.T, cp *framework.ControlPlane, pool string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	kubetest.Eventually(t, poll, fmt.Sprintf("pool %s has %d agent Pods", pool, n), func(context.Context) error {
		if pods = listAgents(t, cp, pool); len(pods) != n {
			return fmt.Errorf("%d agent Pods: %v", len(pods), podNames(pods))
		}
		return nil
	})
	return pods
}

// consistentlyAgents checks that the pool keeps n agent Pods for d.
func consistentlyAgents(t *testing.T, cp *framework.ControlPlane, pool string, n int, d time.Duration) {
	t.Helper()
	kubetest.Consistently(t, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: d}, fmt.Sprintf("pool %s keeps %d agent Pods", pool, n),
		func(context.Context) error {
			if pods := listAgents(t, cp, pool); len(pods) != n {
				return fmt.Errorf("%d agent Pods: %v", len(pods), podNames(pods))
			}
			return nil
		})
}

// markReady plays the kubelet: the Pod runs and is Ready.
func markReady(t *testing.T, cp *framework.ControlPlane, pod *corev1.Pod) {
	t.Helper()
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := cp.Kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("marking Pod %s ready: %v", p.Name, err)
	}
}

// waitForEvent waits for an event about the pool. Pools are cluster-scoped:
// their events are recorded in the "default" namespace.
func waitForEvent(t *testing.T, cp *framework.ControlPlane, pool, reason string) {
	t.Helper()
	kubetest.Eventually(t, poll, fmt.Sprintf("a %s event for pool %s", reason, pool), func(ctx context.Context) error {
		l, err := cp.Kube.CoreV1().Events(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var reasons []string
		for _, e := range l.Items {
			if e.InvolvedObject.Kind == "SandboxPool" && e.InvolvedObject.Name == pool {
				reasons = append(reasons, e.Reason)
			}
		}
		if !slices.Contains(reasons, reason) {
			return fmt.Errorf("events: %v", reasons)
		}
		return nil
	})
}

func testPoolMinAgents(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := kubetest.CreateNamespace(t, cp.Kube, "pc-min")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	pool := kubetest.CreatePool(t, cp.Sandbox, testPool("py", 2, 4, 3))
	// A Sandbox of a pool that does not exist is left alone.
	ghost := createPendingSandbox(t, cp, ns, "ghost", "ghost-orphan", "busybox")

	pods := waitForAgents(t, cp, "py", 2)
	ca := agentCA(t, cp)
	for _, pod := range pods {
		if pod.Namespace != systemNS || pod.GenerateName != "" || !strings.HasPrefix(pod.Name, "py-agent-") || pod.Labels[v1alpha1.LabelPoolName] != "py" {
			t.Errorf("Pod %s/%s: generateName %q labels %v, want a name py-agent-xxxxx chosen by the controller in %s",
				pod.Namespace, pod.Name, pod.GenerateName, pod.Labels, systemNS)
		}
		// Without a garbage collector here, the owner reference is what deleting the pool relies on.
		ref := metav1.GetControllerOf(&pod)
		if ref == nil || ref.UID != pool.UID || !ptr.Deref(ref.BlockOwnerDeletion, false) {
			t.Errorf("Pod %s: controller reference %+v, want the pool %s", pod.Name, ref, pool.UID)
		}
		if _, ok := pod.Annotations[poolcontroller.AnnotationIdleSince]; !ok {
			t.Errorf("Pod %s has no %s annotation", pod.Name, poolcontroller.AnnotationIdleSince)
		}
		checkAgentPorts(t, &pod)
		// Each agent Pod has its own certificate, naming it, issued before
		// the Pod, and mounts only that.
		if s := checkAgentSecret(t, cp, ca, pool, &pod); s != nil && s.CreationTimestamp.After(pod.CreationTimestamp.Time) {
			t.Errorf("Secret %s was created at %v, after its Pod (%v)", s.Name, s.CreationTimestamp, pod.CreationTimestamp)
		}
	}
	checkSchedulerSecret(t, cp, ca)
	// No shared credential: the pool's Secrets are its agents' certificates, one each.
	checkPoolSecrets(t, cp, "py", pods)
	waitForEvent(t, cp, "py", poolcontroller.EventIssuedCertificate)

	got := kubetest.WaitPool(t, cp.Sandbox, "py", poll, kubetest.Where("agents=2, Ready=False", func(p *v1alpha1.SandboxPool) bool {
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.PoolConditionReady)
		return p.Status.Agents == 2 && c != nil && c.Status == metav1.ConditionFalse
	}))
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.PoolConditionReady); c.Reason != poolcontroller.ReasonWaitingForAgents {
		t.Errorf("Ready reason %q", c.Reason)
	}
	for i := range pods {
		markReady(t, cp, &pods[i])
	}
	got = kubetest.WaitPool(t, cp.Sandbox, "py", poll, kubetest.Where("two ready agents", func(p *v1alpha1.SandboxPool) bool {
		return p.Status.ReadyAgents == 2 && meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.PoolConditionReady)
	}))
	st := got.Status
	if st.Agents != 2 || st.FreeSlots != 6 || st.UsedSlots != 0 || st.ObservedGeneration != got.Generation {
		t.Errorf("status %+v, want 2 agents, 6 free slots, observedGeneration %d", st, got.Generation)
	}
	ready := meta.FindStatusCondition(st.Conditions, v1alpha1.PoolConditionReady)
	if ready.Reason != poolcontroller.ReasonMinAgentsReady || ready.ObservedGeneration != got.Generation {
		t.Errorf("Ready condition %+v", ready)
	}
	if meta.IsStatusConditionTrue(st.Conditions, v1alpha1.PoolConditionScalingLimited) {
		t.Errorf("ScalingLimited is True: %+v", st.Conditions)
	}
	waitForEvent(t, cp, "py", poolcontroller.EventCreatedAgent)

	// Raising min is a spec change: observedGeneration follows.
	got.Spec.MinAgents = 3
	if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods = waitForAgents(t, cp, "py", 3)
	kubetest.WaitPool(t, cp.Sandbox, "py", poll, kubetest.Where("the new generation observed", func(p *v1alpha1.SandboxPool) bool {
		return p.Status.ObservedGeneration == p.Generation && p.Generation > 1 && p.Status.Agents == 3
	}))
	for _, pod := range pods {
		checkAgentSecret(t, cp, ca, pool, &pod)
	}
	checkPoolSecrets(t, cp, "py", pods)

	g, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Get(ctx, "ghost-orphan", metav1.GetOptions{})
	if err != nil || g.ResourceVersion != ghost.ResourceVersion {
		t.Errorf("the Sandbox of a missing pool was touched: %v, resourceVersion %s -> %s", err, ghost.ResourceVersion, g.ResourceVersion)
	}
	if pods := listAgents(t, cp, "ghost"); len(pods) != 0 {
		t.Errorf("%d agent Pods for a missing pool", len(pods))
	}
	if l := listPoolSecrets(t, cp, "ghost"); len(l) != 0 {
		t.Errorf("%d Secrets for a missing pool", len(l))
	}
}

// agentCA waits for the CA Secret of the agent API in the system namespace
// and parses it.
func agentCA(t *testing.T, cp *framework.ControlPlane) *agentpki.CA {
	t.Helper()
	secret := kubetest.WaitSecret(t, cp.Kube, systemNS, v1alpha1.AgentCASecretName, poll)
	ca, err := agentpki.ParseCA(secret.Data[agentpki.KeyCACert], secret.Data[agentpki.KeyCAKey])
	if err != nil {
		t.Fatalf("the CA Secret: %v", err)
	}
	return ca
}

// verifyCert checks that certPEM is signed by ca for usage, valid now, that
// keyPEM is its key, that caPEM is ca, and that it names want.
func verifyCert(ca *agentpki.CA, certPEM, keyPEM, caPEM []byte, usage x509.ExtKeyUsage, want string) error {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return fmt.Errorf("%s holds no PEM certificate", agentpki.KeyCert)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("the certificate does not verify against the CA: %w", err)
	}
	if id, err := agentpki.IdentityOf(cert); err != nil || id != want {
		return fmt.Errorf("identity %q (%v), want %q", id, err, want)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("%s does not match %s: %w", agentpki.KeyKey, agentpki.KeyCert, err)
	}
	block, _ = pem.Decode(caPEM)
	if block == nil || !bytes.Equal(block.Bytes, ca.Cert.Raw) {
		return fmt.Errorf("%s is not the CA of %s", agentpki.KeyCACert, v1alpha1.AgentCASecretName)
	}
	return nil
}

// checkAgentSecret checks the agent Pod's certificate Secret
// ("<pod>-tls"), and that the Pod mounts it and no other Secret.
func checkAgentSecret(t *testing.T, cp *framework.ControlPlane, ca *agentpki.CA, pool *v1alpha1.SandboxPool, pod *corev1.Pod) *corev1.Secret {
	t.Helper()
	secret, problems := agentSecretProblems(cp, ca, pool, pod)
	for _, p := range problems {
		t.Error(p)
	}
	return secret
}

// waitForAgentSecret waits until checkAgentSecret would find nothing wrong.
func waitForAgentSecret(t *testing.T, cp *framework.ControlPlane, ca *agentpki.CA, pool *v1alpha1.SandboxPool, pod *corev1.Pod) *corev1.Secret {
	t.Helper()
	var secret *corev1.Secret
	kubetest.Eventually(t, poll, "the certificate Secret of agent Pod "+pod.Name, func(context.Context) error {
		var problems []string
		secret, problems = agentSecretProblems(cp, ca, pool, pod)
		if len(problems) > 0 {
			return errors.New(strings.Join(problems, "; "))
		}
		return nil
	})
	return secret
}

// agentSecretProblems says what is wrong with the certificate Secret of an
// agent Pod and the Pod's mount of it.
func agentSecretProblems(cp *framework.ControlPlane, ca *agentpki.CA, pool *v1alpha1.SandboxPool, pod *corev1.Pod) (*corev1.Secret, []string) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	name := v1alpha1.AgentTLSSecretName(pod.Name)
	if name != pod.Name+"-tls" {
		bad("the certificate Secret of %s is named %q, want %q", pod.Name, name, pod.Name+"-tls")
	}
	secret, err := cp.Kube.CoreV1().Secrets(systemNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		bad("the certificate Secret of agent Pod %s: %v", pod.Name, err)
		return nil, problems
	}
	if secret.Type != corev1.SecretTypeTLS || secret.Labels[v1alpha1.LabelPoolName] != pool.Name || secret.Labels[v1alpha1.LabelAgentTLS] != pod.Name {
		bad("Secret %s: type %q labels %v", name, secret.Type, secret.Labels)
	}
	if !metav1.IsControlledBy(secret, pool) {
		bad("Secret %s is not owned by the pool: %+v", name, secret.OwnerReferences)
	}
	if len(secret.Data) != 3 {
		bad("Secret %s has keys %v, want %s, %s, %s", name, slices.Sorted(maps.Keys(secret.Data)), agentpki.KeyCert, agentpki.KeyKey, agentpki.KeyCACert)
	}
	if err := verifyCert(ca, secret.Data[agentpki.KeyCert], secret.Data[agentpki.KeyKey], secret.Data[agentpki.KeyCACert],
		x509.ExtKeyUsageServerAuth, agentpki.AgentIdentity(systemNS, pod.Name)); err != nil {
		bad("Secret %s of agent Pod %s: %v", name, pod.Name, err)
	}

	var mounted []string
	volume := ""
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil {
			mounted = append(mounted, v.Secret.SecretName)
			volume = v.Name
		}
	}
	if len(mounted) != 1 || mounted[0] != name {
		bad("Pod %s mounts Secrets %v, want exactly %s", pod.Name, mounted, name)
		return secret, problems
	}
	var at []string
	for _, m := range pod.Spec.Containers[0].VolumeMounts {
		if m.Name == volume {
			at = append(at, m.MountPath)
			if !m.ReadOnly {
				bad("Pod %s mounts its certificate writable", pod.Name)
			}
		}
	}
	if len(at) != 1 || at[0] != poolcontroller.TLSDir {
		bad("Pod %s mounts its certificate at %v, want %s", pod.Name, at, poolcontroller.TLSDir)
	}
	return secret, problems
}

// checkAgentPorts checks that the agent API is served on its own port and
// kubelet's probes use the plain probe port.
func checkAgentPorts(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	c := pod.Spec.Containers[0]
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports[v1alpha1.AgentAPIPortName] != v1alpha1.AgentAPIPort || ports[v1alpha1.AgentProbePortName] != v1alpha1.AgentProbePort ||
		len(ports) != 2 {
		t.Errorf("Pod %s ports %v, want %s %d and %s %d", pod.Name, ports, v1alpha1.AgentAPIPortName, v1alpha1.AgentAPIPort,
			v1alpha1.AgentProbePortName, v1alpha1.AgentProbePort)
	}
	for what, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Port.IntValue() != v1alpha1.AgentProbePort {
			t.Errorf("Pod %s: the %s probe %+v is not on the probe port %d", pod.Name, what, probe, v1alpha1.AgentProbePort)
		}
	}
}

// checkSchedulerSecret waits for the scheduler's client certificate Secret
// and checks it.
func checkSchedulerSecret(t *testing.T, cp *framework.ControlPlane, ca *agentpki.CA) {
	t.Helper()
	secret := kubetest.WaitSecret(t, cp.Kube, systemNS, v1alpha1.SchedulerClientSecretName, poll)
	if secret.Type != corev1.SecretTypeTLS {
		t.Errorf("the scheduler's Secret has type %q", secret.Type)
	}
	if err := verifyCert(ca, secret.Data[agentpki.KeyCert], secret.Data[agentpki.KeyKey], secret.Data[agentpki.KeyCACert],
		x509.ExtKeyUsageClientAuth, agentpki.SchedulerIdentity); err != nil {
		t.Errorf("the scheduler's Secret: %v", err)
	}
}

// listPoolSecrets lists the Secrets labelled with the pool's name.
func listPoolSecrets(t *testing.T, cp *framework.ControlPlane, pool string) []corev1.Secret {
	t.Helper()
	l, err := cp.Kube.CoreV1().Secrets(systemNS).List(context.Background(), metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + pool})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// checkPoolSecrets checks that the pool's Secrets are exactly the
// certificate Secrets of pods.
func checkPoolSecrets(t *testing.T, cp *framework.ControlPlane, pool string, pods []corev1.Pod) {
	t.Helper()
	if err := poolSecretsProblem(t, cp, pool, pods); err != nil {
		t.Error(err)
	}
}

// poolSecretsProblem says how the pool's Secrets are not exactly the
// certificate Secrets of pods, nil if they are.
func poolSecretsProblem(t *testing.T, cp *framework.ControlPlane, pool string, pods []corev1.Pod) error {
	t.Helper()
	var got, want []string
	for _, s := range listPoolSecrets(t, cp, pool) {
		got = append(got, s.Name)
	}
	for _, p := range pods {
		want = append(want, v1alpha1.AgentTLSSecretName(p.Name))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("pool %s has Secrets %v, want one per agent Pod: %v", pool, got, want)
	}
	return nil
}

// pokePool makes the controller reconcile the pool: it writes an
// annotation (an update that changes nothing the controller reads).
func pokePool(t *testing.T, cp *framework.ControlPlane, pool string, i int) {
	t.Helper()
	kubetest.Eventually(t, poll, "poking pool "+pool, func(ctx context.Context) error {
		p, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Get(ctx, pool, metav1.GetOptions{})
		if err != nil {
			return err
		}
		metav1.SetMetaDataAnnotation(&p.ObjectMeta, "test/poke", fmt.Sprint(i))
		_, err = cp.Sandbox.SandboxV1alpha1().SandboxPools().Update(ctx, p, metav1.UpdateOptions{})
		return err
	})
}

// testPoolCertificates covers the lives of agent certificates after their
// issue: renewal when due, a deleted one issued again, and the collection of
// a gone agent's Secret. The controller deletes that Secret once it is a
// minute old (it is made just before its Pod, which the controller's
// informer may not show yet); rather than wait for that minute, the test
// restarts the controller on a clock two minutes ahead. (Certificates are
// valid from five minutes before they are issued, so they verify by the
// real clock.)
func testPoolCertificates(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	removePoolsWhenDone(t, cp)
	stop := startPoolControllerWithClock(t, cp, 0, nil)
	pool := kubetest.CreatePool(t, cp.Sandbox, testPool("certs", 2, 2, 2))
	pods := waitForAgents(t, cp, "certs", 2)
	ca := agentCA(t, cp)
	secrets := map[string]*corev1.Secret{}
	for _, pod := range pods {
		secrets[pod.Name] = checkAgentSecret(t, cp, ca, pool, &pod)
	}
	if t.Failed() {
		t.FailNow()
	}
	getSecret := func(name string) (*corev1.Secret, bool) {
		s, err := cp.Kube.CoreV1().Secrets(systemNS).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return s, true
	}
	// poke makes the controller reconcile the pool (a Secret's update is no
	// event it acts on).
	poke := func(i int) { t.Helper(); pokePool(t, cp, "certs", i) }

	// A certificate due for renewal (here: expired) is renewed on the next
	// reconcile, in place.
	dueCert, dueKey, err := ca.IssueAgent(systemNS, pods[0].Name, time.Now().Add(-10*time.Minute), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	due := secrets[pods[0].Name].DeepCopy()
	due.Data[agentpki.KeyCert], due.Data[agentpki.KeyKey] = dueCert, dueKey
	if due, err = cp.Kube.CoreV1().Secrets(systemNS).Update(ctx, due, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poke(1)
	var renewed *corev1.Secret
	kubetest.Eventually(t, poll, "the due certificate of "+pods[0].Name+" renewed", func(context.Context) error {
		var ok bool
		switch renewed, ok = getSecret(due.Name); {
		case !ok:
			return errors.New("its Secret is gone")
		case bytes.Equal(renewed.Data[agentpki.KeyCert], dueCert):
			return errors.New("its Secret holds the due certificate")
		}
		return nil
	})
	if renewed.UID != due.UID {
		t.Errorf("Secret %s was replaced, not updated", due.Name)
	}
	checkAgentSecret(t, cp, ca, pool, &pods[0])
	if agentpki.NeedsRenewal(renewed.Data[agentpki.KeyCert], time.Now()) {
		t.Errorf("the renewed certificate of %s is due for renewal", pods[0].Name)
	}

	// A live agent's Secret that is deleted is issued again.
	if err := cp.Kube.CoreV1().Secrets(systemNS).Delete(ctx, secrets[pods[1].Name].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Eventually(t, poll, "the deleted Secret of live agent "+pods[1].Name+" issued again", func(context.Context) error {
		if s, ok := getSecret(secrets[pods[1].Name].Name); !ok || s.UID == secrets[pods[1].Name].UID {
			return fmt.Errorf("Secret %s there %v", secrets[pods[1].Name].Name, ok)
		}
		return nil
	})
	secrets[pods[1].Name] = checkAgentSecret(t, cp, ca, pool, &pods[1])

	// With a short grace for orphaned certificates, an agent Pod goes (it
	// never had a node: its finalizer goes at once). The gone Pod's Secret
	// is deleted once the grace has passed; the live agent's Secret is kept
	// as it is; the replacement gets a certificate of its own.
	stop()
	startPoolControllerWithOptions(t, cp, 0, poolcontroller.Options{OrphanedCertificateGrace: 2 * time.Second})
	if err := cp.Kube.CoreV1().Pods(systemNS).Delete(ctx, pods[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitPodGone(t, cp.Kube, systemNS, pods[0].Name, poll)
	kubetest.Eventually(t, poll, "the Secret of gone agent Pod "+pods[0].Name+" deleted", func(context.Context) error {
		if _, ok := getSecret(due.Name); ok {
			return fmt.Errorf("Secret %s is there", due.Name)
		}
		return nil
	})
	var now []corev1.Pod
	kubetest.Eventually(t, poll, "the gone agent replaced", func(context.Context) error {
		now = listAgents(t, cp, "certs")
		if len(now) != 2 || slices.ContainsFunc(now, func(p corev1.Pod) bool { return p.Name == pods[0].Name }) {
			return fmt.Errorf("agent Pods %v", podNames(now))
		}
		return nil
	})
	for _, pod := range now {
		s := waitForAgentSecret(t, cp, ca, pool, &pod)
		if pod.Name == pods[1].Name && (s.UID != secrets[pod.Name].UID || s.ResourceVersion != secrets[pod.Name].ResourceVersion) {
			t.Errorf("the Secret of live agent %s changed: %s/%s -> %s/%s", pod.Name, secrets[pod.Name].UID,
				secrets[pod.Name].ResourceVersion, s.UID, s.ResourceVersion)
		}
	}
	// The reconcile a poke makes leaves them so.
	poke(2)
	kubetest.Consistently(t, kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond},
		"the pool's Secrets stay its agents' certificates", func(context.Context) error {
			problems := []error{poolSecretsProblem(t, cp, "certs", now)}
			for _, pod := range now {
				if _, p := agentSecretProblems(cp, ca, pool, &pod); len(p) > 0 {
					problems = append(problems, errors.New(strings.Join(p, "; ")))
				}
			}
			return errors.Join(problems...)
		})
}

func testPoolGrowth(t *testing.T, cp *framework.ControlPlane) {
	ns := kubetest.CreateNamespace(t, cp.Kube, "pc-grow")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	kubetest.CreatePool(t, cp.Sandbox, testPool("grow", 1, 3, 2))
	pods := waitForAgents(t, cp, "grow", 1)
	markReady(t, cp, &pods[0])

	// 3 pending sandboxes need 2 agents of 2 slots.
	for i := range 3 {
		createPendingSandbox(t, cp, ns, "grow", fmt.Sprintf("s%d", i), "docker.io/example/grow-only:v1")
	}
	waitForAgents(t, cp, "grow", 2)
	consistentlyAgents(t, cp, "grow", 2, 500*time.Millisecond)

	// 10 pending want 5 agents; max is 3.
	for i := 3; i < 10; i++ {
		createPendingSandbox(t, cp, ns, "grow", fmt.Sprintf("s%d", i), "docker.io/example/grow-only:v1")
	}
	waitForAgents(t, cp, "grow", 3)
	got := kubetest.WaitPool(t, cp.Sandbox, "grow", poll, kubetest.Where("ScalingLimited=True", func(p *v1alpha1.SandboxPool) bool {
		return meta.IsStatusConditionTrue(p.Status.Conditions, v1alpha1.PoolConditionScalingLimited)
	}))
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.PoolConditionScalingLimited); c.Reason != poolcontroller.ReasonMaxAgentsReached {
		t.Errorf("ScalingLimited reason %q", c.Reason)
	}
	waitForEvent(t, cp, "grow", poolcontroller.EventScalingLimited)
	consistentlyAgents(t, cp, "grow", 3, time.Second)
}

// createNode creates a Ready, schedulable Node with the given images.
func createNode(t *testing.T, cp *framework.ControlPlane, name string, images ...string) {
	t.Helper()
	ctx := context.Background()
	node, err := cp.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = cp.Kube.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if len(node.Spec.Taints) > 0 { // the not-ready taint added at admission; no node lifecycle controller here
		node.Spec.Taints = nil
		if node, err = cp.Kube.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("untainting node %s: %v", name, err)
		}
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods: resource.MustParse("110")}
	node.Status.Capacity, node.Status.Allocatable = res, res
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "KubeletReady"}}
	for _, img := range images {
		node.Status.Images = append(node.Status.Images, corev1.ContainerImage{Names: []string{img}, SizeBytes: 1 << 20})
	}
	if _, err := cp.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the status of node %s: %v", name, err)
	}
}

func pinnedHostname(pod *corev1.Pod) string {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == corev1.LabelHostname && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

func testPoolTargetedNode(t *testing.T, cp *framework.ControlPlane) {
	ns := kubetest.CreateNamespace(t, cp.Kube, "pc-target")
	createNode(t, cp, "pc-node-cached", "docker.io/example/targeted:v1", "docker.io/library/python:3.12")
	createNode(t, cp, "pc-node-empty", "docker.io/library/python:3.12")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)

	kubetest.CreatePool(t, cp.Sandbox, testPool("target", 0, 2, 4))
	kubetest.CreatePool(t, cp.Sandbox, testPool("anywhere", 0, 2, 4))
	consistentlyAgents(t, cp, "target", 0, 300*time.Millisecond)

	// Only pc-node-cached has the image; the reference is written short.
	createPendingSandbox(t, cp, ns, "target", "t1", "example/targeted:v1")
	pods := waitForAgents(t, cp, "target", 1)
	if got := pinnedHostname(&pods[0]); got != "pc-node-cached" {
		t.Errorf("the new agent is pinned to %q, want pc-node-cached; affinity %+v", got, pods[0].Spec.Affinity)
	}
	if pods[0].Spec.NodeName != "" {
		t.Errorf("nodeName %q set; kube-scheduler must place the Pod", pods[0].Spec.NodeName)
	}

	// No node has this image: kube-scheduler picks.
	createPendingSandbox(t, cp, ns, "anywhere", "a1", "docker.io/example/nowhere:v1")
	pods = waitForAgents(t, cp, "anywhere", 1)
	if pods[0].Spec.Affinity != nil {
		t.Errorf("an agent for an image no node has got an affinity: %+v", pods[0].Spec.Affinity)
	}
}

func getPod(t *testing.T, cp *framework.ControlPlane, ns, name string) (*corev1.Pod, bool) {
	t.Helper()
	pod, err := cp.Kube.CoreV1().Pods(systemNS).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("getting Pod %s: %v", name, err)
	}
	return pod, true
}

func testPoolScaleDown(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	ns := kubetest.CreateNamespace(t, cp.Kube, "pc-down")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	p := testPool("down", 1, 3, 1)
	p.Spec.ScaleDownDelaySeconds = 1
	kubetest.CreatePool(t, cp.Sandbox, p)

	var sandboxes []*v1alpha1.Sandbox
	for i := range 3 {
		sandboxes = append(sandboxes, createPendingSandbox(t, cp, ns, "down", fmt.Sprintf("s%d", i), "docker.io/example/down:v1"))
	}
	pods := waitForAgents(t, cp, "down", 3)
	for i := range pods {
		markReady(t, cp, &pods[i])
	}
	// s0 runs on pods[0], s1 on pods[1]; s2 is gone, so pods[2] is idle.
	busy0 := bindSandbox(t, cp, sandboxes[0], &pods[0], v1alpha1.SandboxRunning)
	busy1 := bindSandbox(t, cp, sandboxes[1], &pods[1], v1alpha1.SandboxRunning)
	if err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Delete(ctx, "s2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The idle agent is marked draining, then deleted.
	idle := pods[2].Name
	kubetest.WaitPod(t, cp.Kube, systemNS, idle, poll, draining(true))
	kubetest.WaitPodGone(t, cp.Kube, systemNS, idle, poll)
	waitForEvent(t, cp, "down", poolcontroller.EventDrainingAgent)
	waitForEvent(t, cp, "down", poolcontroller.EventDeletedAgent)
	for _, pod := range pods[:2] {
		got, ok := getPod(t, cp, systemNS, pod.Name)
		if !ok {
			t.Fatalf("agent %s with a running Sandbox was deleted", pod.Name)
		}
		if _, draining := got.Annotations[v1alpha1.AnnotationDraining]; draining {
			t.Errorf("agent %s with a running Sandbox is draining", pod.Name)
		}
	}

	// s1 finishes: pods[1] turns idle and is marked draining; a Sandbox bound
	// to it within the grace (a bind racing the mark) cancels the drain.
	bindSandbox(t, cp, busy1, &pods[1], v1alpha1.SandboxSucceeded)
	// Polled often: the mark is there only for the grace.
	kubetest.WaitPod(t, cp.Kube, systemNS, pods[1].Name, kubetest.Poll{Interval: 5 * time.Millisecond, Timeout: poll.Timeout}, draining(true))
	late := createPendingSandbox(t, cp, ns, "down", "late", "docker.io/example/down:v1")
	bindSandbox(t, cp, late, &pods[1], v1alpha1.SandboxScheduled)
	kubetest.WaitPod(t, cp.Kube, systemNS, pods[1].Name, poll, draining(false))
	waitForEvent(t, cp, "down", poolcontroller.EventDrainCancelled)
	consistentlyAgents(t, cp, "down", 2, 3*time.Second)
	if pod, _ := getPod(t, cp, systemNS, pods[0].Name); pod == nil || pod.Annotations[v1alpha1.AnnotationDraining] != "" {
		t.Errorf("agent %s with a running Sandbox (%s) was drained", pods[0].Name, busy0.Name)
	}
	kubetest.WaitPool(t, cp.Sandbox, "down", poll, kubetest.Where("usedSlots=2", func(p *v1alpha1.SandboxPool) bool {
		return p.Status.Agents == 2 && p.Status.UsedSlots == 2 && p.Status.FreeSlots == 0
	}))
}

// draining wants an agent Pod marked draining (or not).
func draining(want bool) kubetest.Want[*corev1.Pod] {
	what := "the draining mark"
	if !want {
		what = "no draining mark"
	}
	return kubetest.Where(what, func(p *corev1.Pod) bool {
		_, marked := p.Annotations[v1alpha1.AnnotationDraining]
		return marked == want
	})
}

func testPoolReplacesFailed(t *testing.T, cp *framework.ControlPlane) {
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	pool := kubetest.CreatePool(t, cp.Sandbox, testPool("fail", 1, 2, 2))
	pods := waitForAgents(t, cp, "fail", 1)
	ca := agentCA(t, cp)
	failedSecret := checkAgentSecret(t, cp, ca, pool, &pods[0])

	failed := pods[0].DeepCopy()
	failed.Status.Phase, failed.Status.Reason = corev1.PodFailed, "Evicted"
	if _, err := cp.Kube.CoreV1().Pods(systemNS).UpdateStatus(context.Background(), failed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var now []corev1.Pod
	kubetest.Eventually(t, poll, "the failed agent replaced", func(context.Context) error {
		if now = listAgents(t, cp, "fail"); len(now) != 1 || now[0].UID == failed.UID {
			return fmt.Errorf("agent Pods %v", podNames(now))
		}
		return nil
	})
	waitForEvent(t, cp, "fail", poolcontroller.EventDeletedAgent)
	consistentlyAgents(t, cp, "fail", 1, 500*time.Millisecond)
	// The replacement has a certificate of its own; the failed agent's
	// Secret is kept for a minute after it was made (the controller's
	// informer may show a Pod after its Secret; testPoolCertificates sees it
	// deleted after that).
	checkAgentSecret(t, cp, ca, pool, &now[0])
	if failedSecret != nil {
		s, err := cp.Kube.CoreV1().Secrets(systemNS).Get(context.Background(), failedSecret.Name, metav1.GetOptions{})
		if err != nil || s.UID != failedSecret.UID {
			t.Errorf("the Secret of the failed agent went within a minute of its creation: %v", err)
		}
	}
}

func testPoolSlowInformer(t *testing.T, cp *framework.ControlPlane) {
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 2*time.Second)
	kubetest.CreatePool(t, cp.Sandbox, testPool("slow", 3, 10, 2))
	waitForAgents(t, cp, "slow", 3)
	// Force reconciles while the informer has not shown the new Pods yet.
	for i := range 5 {
		pokePool(t, cp, "slow", i)
		// Pacing, not a wait: the pokes spread over the informer's delay.
		time.Sleep(100 * time.Millisecond)
	}
	consistentlyAgents(t, cp, "slow", 3, 3*time.Second)
	kubetest.WaitPool(t, cp.Sandbox, "slow", poll, kubetest.Where("three agents", func(p *v1alpha1.SandboxPool) bool { return p.Status.Agents == 3 }))
	// Nor a certificate issued twice, or for a Pod that was never made.
	checkPoolSecrets(t, cp, "slow", listAgents(t, cp, "slow"))
}

// slowPodInformer is a Pod informer whose watch delivers every event late,
// like an informer lagging behind the API server.
type slowPodInformer struct{ informer cache.SharedIndexInformer }

func newSlowPodInformer(client kubernetes.Interface, ns string, delay time.Duration) *slowPodInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = v1alpha1.LabelPoolName
			return client.CoreV1().Pods(ns).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = v1alpha1.LabelPoolName
			w, err := client.CoreV1().Pods(ns).Watch(ctx, o)
			if err != nil {
				return nil, err
			}
			return newDelayedWatch(w, delay), nil
		},
	}
	return &slowPodInformer{informer: cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 0,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})}
}

func (s *slowPodInformer) Informer() cache.SharedIndexInformer { return s.informer }
func (s *slowPodInformer) Lister() corelisters.PodLister {
	return corelisters.NewPodLister(s.informer.GetIndexer())
}

type delayedWatch struct {
	inner watch.Interface
	out   chan watch.Event
	stop  chan struct{}
	once  sync.Once
}

func newDelayedWatch(inner watch.Interface, delay time.Duration) *delayedWatch {
	d := &delayedWatch{inner: inner, out: make(chan watch.Event), stop: make(chan struct{})}
	type timed struct {
		ev watch.Event
		at time.Time
	}
	buf := make(chan timed, 1024)
	go func() {
		defer close(buf)
		for ev := range inner.ResultChan() {
			select {
			case buf <- timed{ev, time.Now().Add(delay)}:
			case <-d.stop:
				return
			}
		}
	}()
	go func() {
		defer close(d.out)
		for e := range buf {
			select {
			case <-time.After(time.Until(e.at)):
			case <-d.stop:
				return
			}
			select {
			case d.out <- e.ev:
			case <-d.stop:
				return
			}
		}
	}()
	return d
}

func (d *delayedWatch) Stop() {
	d.once.Do(func() {
		close(d.stop)
		d.inner.Stop()
	})
}

func (d *delayedWatch) ResultChan() <-chan watch.Event { return d.out }

// bindToNode plays kube-scheduler and kubelet: the agent Pod is bound to
// node and its agent container runs.
func bindToNode(t *testing.T, cp *framework.ControlPlane, pod *corev1.Pod, node string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	err := cp.Kube.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("binding Pod %s to %s: %v", pod.Name, node, err)
	}
	got, _ := getPod(t, cp, pod.Namespace, pod.Name)
	got.Status.Phase = corev1.PodRunning
	got.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: poolcontroller.ContainerName, Image: got.Spec.Containers[0].Image,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
	got, err = cp.Kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("setting the status of Pod %s: %v", pod.Name, err)
	}
	return got
}

// stopAgent plays kubelet after a Pod's deletion: its container is
// terminated, then the Pod is deleted for good (grace period 0).
func stopAgent(t *testing.T, cp *framework.ControlPlane, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	got, ok := getPod(t, cp, pod.Namespace, pod.Name)
	if !ok {
		t.Fatalf("Pod %s is gone", pod.Name)
	}
	got.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: poolcontroller.ContainerName, Image: got.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 143, Reason: "Error", FinishedAt: metav1.Now()}}}}
	if _, err := cp.Kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting the status of Pod %s: %v", pod.Name, err)
	}
	if err := cp.Kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil &&
		!apierrors.IsNotFound(err) {
		t.Fatalf("deleting Pod %s: %v", pod.Name, err)
	}
}

// listCleanupPods lists the cleanup Pods of a pool's agents.
func listCleanupPods(t *testing.T, cp *framework.ControlPlane, pool string) []corev1.Pod {
	t.Helper()
	l, err := cp.Kube.CoreV1().Pods(systemNS).List(context.Background(), metav1.ListOptions{
		LabelSelector: v1alpha1.LabelCleanupAgentPodUID + "," + v1alpha1.LabelCleanupPoolName + "=" + pool})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func testPoolCleansNode(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	createNode(t, cp, "pc-node-clean")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	pool := kubetest.CreatePool(t, cp.Sandbox, testPool("clean", 1, 2, 2))
	agent := waitForAgents(t, cp, "clean", 1)[0]
	if !slices.Contains(agent.Finalizers, v1alpha1.FinalizerAgentPodCleanup) {
		t.Fatalf("agent Pod %s has finalizers %v, want %s", agent.Name, agent.Finalizers, v1alpha1.FinalizerAgentPodCleanup)
	}
	running := bindToNode(t, cp, &agent, "pc-node-clean")

	// Deleted, its agent still running: nothing happens yet.
	if err := cp.Kube.CoreV1().Pods(systemNS).Delete(ctx, agent.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.Consistently(t, kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond},
		"no cleanup while the agent container runs", func(context.Context) error {
			if l := listCleanupPods(t, cp, "clean"); len(l) != 0 {
				return fmt.Errorf("cleanup Pods %v", podNames(l))
			}
			if _, ok := getPod(t, cp, systemNS, agent.Name); !ok {
				return errors.New("the agent Pod went")
			}
			return nil
		})

	// kubelet stops it: a cleanup Pod runs on its node.
	stopAgent(t, cp, running)
	name := agent.Name + "-cleanup"
	cleanup := kubetest.WaitPod(t, cp.Kube, systemNS, name, poll, kubetest.Exists[*corev1.Pod]())
	waitForEvent(t, cp, "clean", poolcontroller.EventCleaningUp)
	if cleanup.Spec.NodeName != "pc-node-clean" {
		t.Errorf("cleanup Pod on node %q, want pc-node-clean", cleanup.Spec.NodeName)
	}
	if _, ok := cleanup.Labels[v1alpha1.LabelPoolName]; ok || cleanup.Labels[v1alpha1.LabelCleanupAgentPodUID] != string(agent.UID) {
		t.Errorf("cleanup Pod labels %v", cleanup.Labels)
	}
	if ref := metav1.GetControllerOf(cleanup); ref == nil || ref.UID != pool.UID {
		t.Errorf("cleanup Pod controller %+v, want the pool", ref)
	}
	c := cleanup.Spec.Containers[0]
	if c.Image != agent.Spec.Containers[0].Image || !slices.Contains(c.Args, "--cleanup-agent-pod-uid="+string(agent.UID)) ||
		cleanup.Spec.RestartPolicy != corev1.RestartPolicyOnFailure || c.SecurityContext == nil || !ptr.Deref(c.SecurityContext.Privileged, false) {
		t.Errorf("cleanup container %+v, restartPolicy %s", c, cleanup.Spec.RestartPolicy)
	}
	// The pool is still kept: a new agent replaces the deleted one; the
	// cleanup Pod is no agent.
	kubetest.WaitPool(t, cp.Sandbox, "clean", poll, kubetest.Where("one agent", func(p *v1alpha1.SandboxPool) bool { return p.Status.Agents == 1 }))

	// The cleanup runs, then fails: kubelet would restart it (OnFailure);
	// the agent Pod stays until it succeeds.
	cleanup.Status.Phase = corev1.PodRunning
	cleanup, err := cp.Kube.CoreV1().Pods(systemNS).UpdateStatus(ctx, cleanup, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubetest.Consistently(t, kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond},
		"the agent Pod keeps its finalizer until the cleanup succeeds", func(context.Context) error {
			if got, ok := getPod(t, cp, systemNS, agent.Name); !ok || !slices.Contains(got.Finalizers, v1alpha1.FinalizerAgentPodCleanup) {
				return fmt.Errorf("agent Pod %s: %s", agent.Name, kubetest.DescribePod(got))
			}
			return nil
		})

	cleanup.Status.Phase = corev1.PodSucceeded
	if _, err := cp.Kube.CoreV1().Pods(systemNS).UpdateStatus(ctx, cleanup, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitPodGone(t, cp.Kube, systemNS, agent.Name, poll)
	kubetest.WaitPodGone(t, cp.Kube, systemNS, name, poll)
	waitForEvent(t, cp, "clean", poolcontroller.EventCleanedUp)
	kubetest.Consistently(t, kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 300 * time.Millisecond},
		"no cleanup Pod is made again", func(context.Context) error {
			if l := listCleanupPods(t, cp, "clean"); len(l) != 0 {
				return fmt.Errorf("cleanup Pods %v", podNames(l))
			}
			return nil
		})
}

func testPoolCleanupNotNeeded(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	createNode(t, cp, "pc-node-gone")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	kubetest.CreatePool(t, cp.Sandbox, testPool("noclean", 2, 2, 2))
	agents := waitForAgents(t, cp, "noclean", 2)

	// Never got a node: the deletion goes through.
	if err := cp.Kube.CoreV1().Pods(systemNS).Delete(ctx, agents[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitPodGone(t, cp.Kube, systemNS, agents[0].Name, poll)

	// Its Node is gone, its container said to run (no kubelet will say
	// otherwise): the deletion goes through too.
	bindToNode(t, cp, &agents[1], "pc-node-gone")
	if err := cp.Kube.CoreV1().Nodes().Delete(ctx, "pc-node-gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Kube.CoreV1().Pods(systemNS).Delete(ctx, agents[1].Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitPodGone(t, cp.Kube, systemNS, agents[1].Name, poll)
	waitForEvent(t, cp, "noclean", poolcontroller.EventCleanupSkipped)
	if l := listCleanupPods(t, cp, "noclean"); len(l) != 0 {
		t.Errorf("cleanup Pods made: %v", l)
	}
}

func testPoolCleanupAfterPool(t *testing.T, cp *framework.ControlPlane) {
	ctx := context.Background()
	createNode(t, cp, "pc-node-gone-pool")
	removePoolsWhenDone(t, cp)
	startPoolController(t, cp, 0)
	kubetest.CreatePool(t, cp.Sandbox, testPool("gone", 1, 1, 2))
	agent := waitForAgents(t, cp, "gone", 1)[0]
	running := bindToNode(t, cp, &agent, "pc-node-gone-pool")

	// The pool goes; the garbage collector (played here) deletes its agent.
	if err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Kube.CoreV1().Pods(systemNS).Delete(ctx, agent.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stopAgent(t, cp, running)
	name := agent.Name + "-cleanup"
	// After the pool went.
	cleanup := kubetest.WaitPod(t, cp.Kube, systemNS, name, poll, kubetest.Exists[*corev1.Pod]())
	if len(cleanup.OwnerReferences) != 0 || cleanup.Spec.NodeName != "pc-node-gone-pool" {
		t.Errorf("cleanup Pod owners %+v node %q: want none (the pool is gone), pc-node-gone-pool", cleanup.OwnerReferences, cleanup.Spec.NodeName)
	}
	cleanup.Status.Phase = corev1.PodSucceeded
	if _, err := cp.Kube.CoreV1().Pods(systemNS).UpdateStatus(ctx, cleanup, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.WaitPodGone(t, cp.Kube, systemNS, agent.Name, poll)
	kubetest.WaitPodGone(t, cp.Kube, systemNS, name, poll)
}
