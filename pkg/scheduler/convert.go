package scheduler

import (
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// sandboxPod presents a Sandbox to the framework's plugins as a Pod: one
// container with the sandbox's image, requesting its CPU and memory (its
// own, else the pool's defaults; pool may be nil). A bound
// sandbox carries its agent as the node name.
func sandboxPod(s *v1alpha1.Sandbox, pool *v1alpha1.SandboxPool, schedulerName string) *v1.Pod {
	req := requests(effectiveResources(s, pool))
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: s.UID,
			Labels: map[string]string{v1alpha1.LabelPoolName: s.Spec.PoolName}},
		Spec: v1.PodSpec{
			SchedulerName: schedulerName,
			NodeName:      s.Status.Agent,
			Containers: []v1.Container{{
				Name: "sandbox", Image: s.Spec.Image,
				Resources: v1.ResourceRequirements{Requests: req, Limits: req},
			}},
		},
	}
}

// agentNode presents an agent to the framework's plugins as a Node: named
// after the agent Pod, with the agent's capacity as allocatable (slots as
// pods), the images it reported, the labels of its real node, Ready while
// its status is fresh and healthy, and unschedulable while it drains.
func agentNode(a *agentState, node *v1.Node) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.name, Labels: map[string]string{}}}
	if node != nil {
		for k, v := range node.Labels {
			n.Labels[k] = v
		}
	}
	n.Labels[v1alpha1.LabelAgentName] = a.name
	n.Labels[v1alpha1.LabelPoolName] = a.pool
	n.Spec.Unschedulable = a.draining
	ready := v1.ConditionFalse
	if a.usable() {
		ready = v1.ConditionTrue
	}
	n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: ready}}
	st := a.status
	if st == nil {
		return n
	}
	n.Status.Allocatable = v1.ResourceList{
		v1.ResourcePods: *resource.NewQuantity(int64(st.Capacity.Slots), resource.DecimalSI),
	}
	if st.Capacity.CPUMillis > 0 {
		n.Status.Allocatable[v1.ResourceCPU] = *resource.NewMilliQuantity(st.Capacity.CPUMillis, resource.DecimalSI)
	}
	if st.Capacity.MemoryBytes > 0 {
		n.Status.Allocatable[v1.ResourceMemory] = *resource.NewQuantity(st.Capacity.MemoryBytes, resource.BinarySI)
	}
	if st.Capacity.Slots == 0 {
		n.Status.Allocatable[v1.ResourcePods] = *resource.NewQuantity(1<<20, resource.DecimalSI)
	}
	n.Status.Capacity = n.Status.Allocatable
	n.Status.Images = nodeImages(st.Images)
	var warm []string
	for _, w := range st.Warm {
		if w.Count > 0 {
			warm = append(warm, w.Image)
		}
	}
	if len(warm) > 0 {
		n.Annotations = map[string]string{v1alpha1.AnnotationWarmImages: strings.Join(warm, ",")}
	}
	return n
}

// nodeImages turns the agent's images into node images, adding the
// "repo@digest" names so that references by digest match too.
func nodeImages(imgs []api.Image) []v1.ContainerImage {
	out := make([]v1.ContainerImage, 0, len(imgs))
	for _, img := range imgs {
		names := append([]string{}, img.Names...)
		for _, n := range img.Names {
			repo := n
			if i := strings.LastIndex(n, "@"); i >= 0 {
				continue
			} else if i := strings.LastIndex(n, ":"); i > strings.LastIndex(n, "/") {
				repo = n[:i]
			}
			names = append(names, repo+"@"+img.Digest)
		}
		out = append(out, v1.ContainerImage{Names: names, SizeBytes: img.Size})
	}
	return out
}

// agentSpec is what an agent is sent for a sandbox.
func agentSpec(s *v1alpha1.Sandbox, pool *v1alpha1.SandboxPool) api.SandboxSpec {
	spec := api.SandboxSpec{
		UID: string(s.UID), Namespace: s.Namespace, Name: s.Name, Pool: s.Spec.PoolName,
		Image: s.Spec.Image, Command: s.Spec.Command, Args: s.Spec.Args, WorkingDir: s.Spec.WorkingDir,
		RuntimeHandler: s.Spec.RuntimeHandler, NetworkMode: string(s.Spec.NetworkMode),
		Paused: s.Spec.Paused,
	}
	if s.Spec.IdleTimeoutSeconds != nil && *s.Spec.IdleTimeoutSeconds > 0 {
		spec.IdleTimeoutSeconds = *s.Spec.IdleTimeoutSeconds
		spec.IdlePolicy = api.IdlePolicyPause
		if s.Spec.IdlePolicy == v1alpha1.IdlePolicyDelete {
			spec.IdlePolicy = api.IdlePolicyDelete
		}
	}
	res := effectiveResources(s, pool)
	if res.CPU != nil {
		spec.CPUMillis = res.CPU.MilliValue()
	}
	if res.Memory != nil {
		spec.MemoryBytes = res.Memory.Value()
	}
	if res.Pids != nil {
		spec.PidsLimit = *res.Pids
	}
	if res.EphemeralStorage != nil {
		spec.EphemeralStorageBytes = res.EphemeralStorage.Value()
	}
	for _, e := range s.Spec.Env {
		spec.Env = append(spec.Env, api.EnvVar{Name: e.Name, Value: e.Value})
	}
	if pool != nil {
		spec.AllowPull = pool.Spec.ImagePullPolicy == v1alpha1.PullIfNotPresent
		if spec.RuntimeHandler == "" {
			spec.RuntimeHandler = pool.Spec.RuntimeHandler
		}
	}
	return spec
}

// finished says whether a sandbox reached a final phase.
func finished(s *v1alpha1.Sandbox) bool {
	return s.Status.Phase == v1alpha1.SandboxSucceeded || s.Status.Phase == v1alpha1.SandboxFailed
}

// deletesWhenIdle says whether the sandbox's Sandbox object is deleted once
// its agent reports it idle.
func deletesWhenIdle(s *v1alpha1.Sandbox) bool {
	return s.Spec.IdlePolicy == v1alpha1.IdlePolicyDelete && s.Spec.IdleTimeoutSeconds != nil && *s.Spec.IdleTimeoutSeconds > 0
}

// holdsSlot says whether a bound sandbox takes a slot of its agent; a
// paused one does, as a running one.
func holdsSlot(s *v1alpha1.Sandbox) bool {
	return s.Status.Agent != "" && !finished(s) && s.DeletionTimestamp == nil
}
