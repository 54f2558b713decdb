package poolcontroller

// Cleaning a node after an agent Pod.
//
// The sandbox and warm containers an agent creates live in the node's
// containerd, not in its Pod: when the agent Pod goes they stay, with their
// snapshots and logs. Every agent Pod therefore carries
// v1alpha1.FinalizerAgentPodCleanup. Once an agent Pod is being deleted or
// has finished, and its agent container no longer runs, the controller runs
// a cleanup Pod on the agent's node (spec.nodeName, no scheduler): the agent
// image in its cleanup mode, `--cleanup-agent-pod-uid=<uid>`, which removes
// every container labelled with that agent Pod's UID and exits 0 only when
// nothing of them is left (restartPolicy OnFailure: kubelet retries). When
// the cleanup Pod has Succeeded the controller removes the finalizer, so the
// agent Pod object goes, then deletes the cleanup Pod. An agent Pod that never
// got a node, whose Node is gone, or whose namespace is terminating (no Pod
// can be created there) loses the finalizer without a cleanup Pod.
//
// Cleanup Pods are named after their agent Pod (CleanupPodName), so creating
// one twice fails with AlreadyExists, and carry
// v1alpha1.LabelCleanupAgentPodUID and v1alpha1.LabelCleanupPoolName, never
// v1alpha1.LabelPoolName: nothing takes them for agents. They are owned by
// the pool while it lives; they are made without an owner once the pool is
// being deleted or gone (the garbage collector would delete them at once),
// and deleted by the controller when done either way.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// Event reasons of the cleanup.
const (
	// EventCleaningUp: a cleanup Pod was created for an agent Pod.
	EventCleaningUp = "CleaningUp"
	// EventCleanedUp: the cleanup Pod Succeeded; the finalizer is removed.
	EventCleanedUp = "CleanedUp"
	// EventCleanupSkipped: the finalizer is removed without a cleanup Pod
	// (no node, Node gone, namespace terminating).
	EventCleanupSkipped = "CleanupSkipped"
)

const (
	// CleanupContainerName is the container of a cleanup Pod.
	CleanupContainerName = "cleanup"
	// CleanupFlag is the agent's flag for its cleanup mode.
	CleanupFlag = "--cleanup-agent-pod-uid"
	// cleanupRecheck is how often a pool waiting on a cleanup is looked at
	// again even if no event comes.
	cleanupRecheck = 5 * time.Second
	cleanupSuffix  = "-cleanup"
)

// CleanupStep is what the controller does next for an agent Pod.
type CleanupStep string

const (
	// CleanupNotNeeded means the Pod has no finalizer, or its agent is not stopping.
	CleanupNotNeeded CleanupStep = ""
	// CleanupWaitForAgent means the agent container may still run.
	CleanupWaitForAgent CleanupStep = "WaitForAgent"
	// CleanupRelease means remove the finalizer: there is nothing to clean.
	CleanupRelease CleanupStep = "Release"
	// CleanupCreatePod means create the cleanup Pod.
	CleanupCreatePod CleanupStep = "CreatePod"
	// CleanupWaitForPod means the cleanup Pod runs, or is going.
	CleanupWaitForPod CleanupStep = "WaitForPod"
	// CleanupReplacePod means delete the cleanup Pod (it failed, or it is not
	// this agent Pod's); the next round creates one.
	CleanupReplacePod CleanupStep = "ReplacePod"
	// CleanupDone means the cleanup Pod Succeeded: remove the finalizer, then
	// delete the cleanup Pod.
	CleanupDone CleanupStep = "Done"
)

// CleanupInput is what DecideCleanup looks at.
type CleanupInput struct {
	// Agent is the agent Pod.
	Agent *corev1.Pod
	// NodeExists says whether the Node of Agent.Spec.NodeName exists.
	NodeExists bool
	// CleanupPod is the Pod named CleanupPodName(Agent), or nil.
	CleanupPod *corev1.Pod
}

// DecideCleanup says what to do for one agent Pod, and why.
func DecideCleanup(in CleanupInput) (CleanupStep, string) {
	agent, cp := in.Agent, in.CleanupPod
	switch {
	case !hasCleanupFinalizer(agent):
		return CleanupNotNeeded, "no cleanup finalizer"
	case agent.DeletionTimestamp == nil && !podFinished(agent):
		return CleanupNotNeeded, "the agent Pod is neither being deleted nor finished"
	case agent.Spec.NodeName == "":
		return CleanupRelease, fmt.Sprintf("agent Pod %s never ran on a node: nothing to clean up", agent.Name)
	case !in.NodeExists:
		return CleanupRelease, fmt.Sprintf("node %s of agent Pod %s no longer exists: nothing to clean up", agent.Spec.NodeName, agent.Name)
	case !agentStopped(agent):
		return CleanupWaitForAgent, fmt.Sprintf("the agent container of Pod %s still runs", agent.Name)
	case cp == nil:
		return CleanupCreatePod, fmt.Sprintf("agent Pod %s stopped on node %s", agent.Name, agent.Spec.NodeName)
	case cp.Labels[v1alpha1.LabelCleanupAgentPodUID] != string(agent.UID):
		return CleanupReplacePod, fmt.Sprintf("Pod %s cleans up after another agent Pod (UID %q)", cp.Name, cp.Labels[v1alpha1.LabelCleanupAgentPodUID])
	case cp.DeletionTimestamp != nil:
		return CleanupWaitForPod, fmt.Sprintf("cleanup Pod %s is being deleted", cp.Name)
	case cp.Status.Phase == corev1.PodSucceeded:
		return CleanupDone, fmt.Sprintf("cleanup Pod %s succeeded", cp.Name)
	case cp.Status.Phase == corev1.PodFailed:
		return CleanupReplacePod, fmt.Sprintf("cleanup Pod %s failed (%s)", cp.Name, cp.Status.Reason)
	default:
		return CleanupWaitForPod, fmt.Sprintf("cleanup Pod %s is %s", cp.Name, cp.Status.Phase)
	}
}

func hasCleanupFinalizer(pod *corev1.Pod) bool {
	return slices.Contains(pod.Finalizers, v1alpha1.FinalizerAgentPodCleanup)
}

// agentStopped says that none of the Pod's containers runs, nor will again:
// the Pod finished, or it reports every container terminated.
func agentStopped(pod *corev1.Pod) bool {
	if podFinished(pod) {
		return true
	}
	if pod.DeletionTimestamp == nil || len(pod.Status.ContainerStatuses) == 0 {
		// Not deleted, kubelet may restart it; no statuses, it may be starting.
		return false
	}
	for _, s := range pod.Status.ContainerStatuses {
		if s.State.Terminated == nil {
			return false
		}
	}
	return true
}

// CleanupPodName is the name of the cleanup Pod of an agent Pod.
func CleanupPodName(agent *corev1.Pod) string {
	name := agent.Name + cleanupSuffix
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(agent.UID))
	hash := hex.EncodeToString(sum[:])[:10]
	return agent.Name[:253-len(cleanupSuffix)-len(hash)-1] + "-" + hash + cleanupSuffix
}

// CleanupPod builds the cleanup Pod of an agent Pod of pool poolName: the
// agent's image in its cleanup mode, pinned to the agent's node, with the
// node's containerd socket, state directory and cgroupfs mounted as the
// agent had them (read from the agent Pod, which is what ran), and no API
// access. owner, when set, is the pool, its controller.
func CleanupPod(agent *corev1.Pod, poolName string, owner *v1alpha1.SandboxPool) *corev1.Pod {
	var ac *corev1.Container
	for i := range agent.Spec.Containers {
		if agent.Spec.Containers[i].Name == ContainerName {
			ac = &agent.Spec.Containers[i]
		}
	}
	if ac == nil && len(agent.Spec.Containers) > 0 {
		ac = &agent.Spec.Containers[0]
	}
	envOr := func(name, def string) string {
		if ac != nil {
			for _, e := range ac.Env {
				if e.Name == name && e.Value != "" {
					return e.Value
				}
			}
		}
		return def
	}
	socket := envOr("CONTAINERD_SOCKET", v1alpha1.DefaultContainerdSocket)
	volumes, mounts := nodeVolumes(socket)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      CleanupPodName(agent),
			Namespace: agent.Namespace,
			Labels: map[string]string{
				v1alpha1.LabelCleanupAgentPodUID: string(agent.UID),
				v1alpha1.LabelCleanupPoolName:    poolName,
			},
			Annotations: map[string]string{v1alpha1.AnnotationCleanupAgentPodName: agent.Name},
		},
		Spec: corev1.PodSpec{
			NodeName: agent.Spec.NodeName,
			Containers: []corev1.Container{{
				Name: CleanupContainerName,
				Args: []string{
					CleanupFlag + "=" + string(agent.UID),
					"--containerd-socket=" + socket,
					"--containerd-namespace=" + envOr("CONTAINERD_NAMESPACE", v1alpha1.DefaultContainerdNamespace),
					"--state-dir=" + StateDir,
				},
				SecurityContext:          &corev1.SecurityContext{Privileged: ptr.To(true)},
				VolumeMounts:             mounts,
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
			Volumes:       volumes,
			RestartPolicy: corev1.RestartPolicyOnFailure,
			// It needs no network: the host's spares the node's CNI.
			HostNetwork: true,
			// It must run wherever the agent ran, whatever taints came since.
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			PriorityClassName:             agent.Spec.PriorityClassName,
			TerminationGracePeriodSeconds: ptr.To[int64](5),
			EnableServiceLinks:            ptr.To(false),
			AutomountServiceAccountToken:  ptr.To(false),
		},
	}
	if ac != nil {
		pod.Spec.Containers[0].Image, pod.Spec.Containers[0].ImagePullPolicy = ac.Image, ac.ImagePullPolicy
	}
	if owner != nil {
		pod.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(owner, poolGVK)}
	}
	return pod
}

// syncCleanups takes every agent Pod of the pool key (pods: those labelled
// with its name) that carries the finalizer one step further, and deletes
// the finished cleanup Pods nobody waits on. pool is nil when it is gone;
// cleanup Pods are owned by it only while it is not being deleted. The
// duration, when positive, is when to look again.
func (c *Controller) syncCleanups(ctx context.Context, key, namespace, poolName string, pool *v1alpha1.SandboxPool,
	pods []*corev1.Pod,
) (time.Duration, error) {
	logger := klog.FromContext(ctx)
	cleanupPods, err := c.cleanupLister.Pods(namespace).List(labels.SelectorFromSet(labels.Set{v1alpha1.LabelCleanupPoolName: poolName}))
	if err != nil {
		return 0, fmt.Errorf("listing the cleanup Pods of %s: %w", key, err)
	}
	byName := make(map[string]*corev1.Pod, len(cleanupPods))
	for _, cp := range cleanupPods {
		byName[cp.Name] = cp
	}
	owner := pool
	if owner != nil && owner.DeletionTimestamp != nil {
		owner = nil
	}
	var requeue time.Duration
	wait := func() { requeue = cleanupRecheck }
	var errs []error
	inUse := map[string]bool{}
	for _, pod := range pods {
		if ownerKey(pod) != key || !hasCleanupFinalizer(pod) || (pod.DeletionTimestamp == nil && !podFinished(pod)) {
			continue
		}
		in := CleanupInput{Agent: pod, CleanupPod: byName[CleanupPodName(pod)]}
		if pod.Spec.NodeName != "" {
			exists, err := c.nodeExists(ctx, pod.Spec.NodeName)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			in.NodeExists = exists
		}
		step, why := DecideCleanup(in)
		logger.V(4).Info("Agent Pod cleanup", "pod", klog.KObj(pod), "step", step, "why", why)
		if in.CleanupPod != nil && step != CleanupReplacePod {
			inUse[in.CleanupPod.Name] = true
		}
		switch step {
		case CleanupWaitForAgent, CleanupWaitForPod:
			wait()
		case CleanupRelease:
			errs = append(errs, c.releaseAgentPod(ctx, key, pool, pod, corev1.EventTypeNormal, EventCleanupSkipped,
				"Removed the cleanup finalizer of agent Pod %s: %s", pod.Name, why))
		case CleanupCreatePod:
			wait()
			errs = append(errs, c.createCleanupPod(ctx, key, poolName, pool, owner, pod, why))
		case CleanupReplacePod:
			wait()
			errs = append(errs, c.deleteCleanupPod(ctx, in.CleanupPod, why))
		case CleanupDone:
			err := c.releaseAgentPod(ctx, key, pool, pod, corev1.EventTypeNormal, EventCleanedUp,
				"Node %s has no containers of agent Pod %s left (%s); removed its cleanup finalizer", pod.Spec.NodeName, pod.Name, why)
			if err == nil {
				err = c.deleteCleanupPod(ctx, in.CleanupPod, "done")
			}
			errs = append(errs, err)
		}
	}
	// Finished cleanup Pods nobody waits on: their agent Pod went while
	// (or after) they ran, or deleting them failed before.
	for _, cp := range cleanupPods {
		if inUse[cp.Name] || cp.DeletionTimestamp != nil || !podFinished(cp) {
			continue
		}
		errs = append(errs, c.deleteCleanupPod(ctx, cp, "its agent Pod no longer waits on it"))
	}
	return requeue, errors.Join(errs...)
}

// nodeExists says whether a Node exists; the API server confirms what the
// informer says is gone.
func (c *Controller) nodeExists(ctx context.Context, name string) (bool, error) {
	_, err := c.nodeLister.Get(name)
	if err == nil {
		return true, nil
	}
	if !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("getting node %s: %w", name, err)
	}
	_, err = c.kubeClient.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("getting node %s: %w", name, err)
	}
}

// eventObjects are what a cleanup event is about (regarding): the pool, or
// the agent Pod once the pool is gone; and the agent Pod as the related
// object while the pool is the regarding one.
func eventObjects(pool *v1alpha1.SandboxPool, pod *corev1.Pod) (regarding, related runtime.Object) {
	if pool != nil {
		return pool, pod
	}
	return pod, nil
}

func (c *Controller) createCleanupPod(ctx context.Context, key, poolName string, pool, owner *v1alpha1.SandboxPool,
	agent *corev1.Pod, why string,
) error {
	cp := CleanupPod(agent, poolName, owner)
	created, err := c.kubeClient.CoreV1().Pods(agent.Namespace).Create(ctx, cp, metav1.CreateOptions{FieldManager: ControllerName})
	switch {
	case apierrors.IsAlreadyExists(err):
		return nil // the informer has not shown it yet
	case apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
		// No Pod can be made there any more; waiting would keep the
		// namespace forever.
		return c.releaseAgentPod(ctx, key, pool, agent, corev1.EventTypeWarning, EventCleanupSkipped,
			"Removed the cleanup finalizer of agent Pod %s without cleaning node %s: namespace %s is terminating",
			agent.Name, agent.Spec.NodeName, agent.Namespace)
	case err != nil:
		regarding, related := eventObjects(pool, agent)
		c.event(regarding, related, corev1.EventTypeWarning, EventFailedCreate, actionCleanupNode,
			"Creating cleanup Pod %s for agent Pod %s failed: %v", cp.Name, agent.Name, err)
		return fmt.Errorf("creating cleanup Pod %s/%s: %w", cp.Namespace, cp.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Created cleanup Pod", "pod", klog.KObj(created), "agent", klog.KObj(agent), "node", agent.Spec.NodeName)
	regarding, _ := eventObjects(pool, agent)
	c.event(regarding, created, corev1.EventTypeNormal, EventCleaningUp, actionCleanupNode,
		"Created cleanup Pod %s on node %s: %s", created.Name, agent.Spec.NodeName, why)
	return nil
}

func (c *Controller) deleteCleanupPod(ctx context.Context, cp *corev1.Pod, why string) error {
	err := c.kubeClient.CoreV1().Pods(cp.Namespace).Delete(ctx, cp.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &cp.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("deleting cleanup Pod %s/%s: %w", cp.Namespace, cp.Name, err)
	}
	klog.FromContext(ctx).V(2).Info("Deleted cleanup Pod", "pod", klog.KObj(cp), "reason", why)
	return nil
}

// releaseAgentPod removes the cleanup finalizer of an agent Pod and records
// the event when it did. Until the informer shows the Pod without it (or
// gone), the pool's expectations hold further management.
func (c *Controller) releaseAgentPod(ctx context.Context, key string, pool *v1alpha1.SandboxPool, pod *corev1.Pod,
	eventType, reason, format string, args ...any,
) error {
	uid := string(pod.UID)
	c.expectations.expectRelease(key, uid)
	removed, err := c.removeFinalizer(ctx, pod)
	if err != nil || !removed {
		c.expectations.releaseObserved(key, uid)
	}
	if err != nil {
		return err
	}
	if removed {
		klog.FromContext(ctx).V(2).Info("Removed the cleanup finalizer", "pod", klog.KObj(pod), "reason", reason)
		regarding, related := eventObjects(pool, pod)
		c.event(regarding, related, eventType, reason, actionReleaseAgentPod, format, args...)
	}
	return nil
}

// removeFinalizer removes FinalizerAgentPodCleanup from the Pod as the API
// server has it (the informer may lag); false when it was not there.
func (c *Controller) removeFinalizer(ctx context.Context, pod *corev1.Pod) (bool, error) {
	pods := c.kubeClient.CoreV1().Pods(pod.Namespace)
	live, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("getting agent Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	i := slices.Index(live.Finalizers, v1alpha1.FinalizerAgentPodCleanup)
	if live.UID != pod.UID || i < 0 {
		return false, nil
	}
	at := fmt.Sprintf("/metadata/finalizers/%d", i)
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": live.UID},
		{"op": "test", "path": at, "value": v1alpha1.FinalizerAgentPodCleanup},
		{"op": "remove", "path": at},
	})
	if err != nil {
		return false, err
	}
	if _, err := pods.Patch(ctx, pod.Name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: ControllerName}); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("removing the cleanup finalizer of agent Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return true, nil
}

// ensureFinalizer adds the cleanup finalizer to an agent Pod made before
// agent Pods had one. A conflict is left to the next round.
func (c *Controller) ensureFinalizer(ctx context.Context, pod *corev1.Pod) error {
	if hasCleanupFinalizer(pod) || pod.DeletionTimestamp != nil {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": pod.ResourceVersion,
		"finalizers":      append(slices.Clone(pod.Finalizers), v1alpha1.FinalizerAgentPodCleanup),
	}})
	if err != nil {
		return err
	}
	_, err = c.kubeClient.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: ControllerName})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("adding the cleanup finalizer to agent Pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}
