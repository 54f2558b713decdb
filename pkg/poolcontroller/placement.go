package poolcontroller

import (
	"cmp"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/imageref"
)

// AgentShape is what the node choice needs to know of the agent Pods to place.
type AgentShape struct {
	NodeSelector map[string]string
	Tolerations  []corev1.Toleration
	// CPUMillis and MemoryBytes are the requests of one agent Pod.
	CPUMillis, MemoryBytes int64
	SlotsPerAgent          int32
}

// ChooseNodes picks a node for each of n new agent Pods (targeted
// provisioning): a node that caches the images the pending Sandboxes ask for
// (Node.status.images), is Ready and schedulable, matches the node selector,
// tolerates its taints and has room for the agent. Room is the node's
// allocatable minus the requests of the fast-sandbox agent Pods placed or
// pinned there (agentPods, all pools; other Pods are left to kube-scheduler,
// which still fits the pinned Pod). Each pick goes to the node covering the
// most pending Sandboxes not yet covered by an earlier pick (one agent covers
// SlotsPerAgent of them); "" means no node caches what is still wanted, and
// the Pod gets no affinity. The result holds node names.
func ChooseNodes(n int, pendingImages []string, nodes []*corev1.Node, agentPods []*corev1.Pod, shape AgentShape) []string {
	picks := make([]string, n)
	if n == 0 || len(pendingImages) == 0 {
		return picks
	}
	type candidate struct {
		node     *corev1.Node
		images   map[string]bool
		cpu, mem int64 // room left
	}
	var cands []*candidate
	for _, node := range nodes {
		if !nodeSchedulable(node, shape) {
			continue
		}
		c := &candidate{node: node, images: map[string]bool{}}
		c.cpu = node.Status.Allocatable.Cpu().MilliValue()
		c.mem = node.Status.Allocatable.Memory().Value()
		for _, pod := range agentPods {
			if podFinished(pod) || podNode(pod) != node.Name && podPinnedHostname(pod) != nodeHostname(node) {
				continue
			}
			cpu, mem := podRequests(pod)
			c.cpu -= cpu
			c.mem -= mem
		}
		for _, img := range node.Status.Images {
			for _, name := range img.Names {
				c.images[imageref.NormalizeOrKeep(name)] = true
			}
		}
		cands = append(cands, c)
	}
	wanted := make([]string, len(pendingImages))
	for i, img := range pendingImages {
		wanted[i] = imageref.NormalizeOrKeep(img)
	}
	slots := max(int(shape.SlotsPerAgent), 1)
	for i := range picks {
		var best *candidate
		bestCover := 0
		for _, c := range cands {
			if c.cpu < shape.CPUMillis || c.mem < shape.MemoryBytes {
				continue
			}
			cover := 0
			for _, img := range wanted {
				if c.images[img] {
					cover++
				}
			}
			if cover == 0 {
				continue
			}
			if best == nil || cmp.Or(cmp.Compare(cover, bestCover), cmp.Compare(c.cpu, best.cpu),
				cmp.Compare(best.node.Name, c.node.Name)) > 0 {
				best, bestCover = c, cover
			}
		}
		if best == nil {
			continue
		}
		picks[i] = best.node.Name
		best.cpu -= shape.CPUMillis
		best.mem -= shape.MemoryBytes
		// This agent serves up to slots of the Sandboxes it covers.
		kept, served := wanted[:0], 0
		for _, img := range wanted {
			if served < slots && best.images[img] {
				served++
				continue
			}
			kept = append(kept, img)
		}
		wanted = kept
	}
	return picks
}

// nodeSchedulable says a new agent Pod could run on the node, resources aside.
func nodeSchedulable(node *corev1.Node, shape AgentShape) bool {
	if node.Spec.Unschedulable || node.DeletionTimestamp != nil {
		return false
	}
	ready := false
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	if !ready {
		return false
	}
	for k, v := range shape.NodeSelector {
		if got, ok := node.Labels[k]; !ok || got != v {
			return false
		}
	}
	for i := range node.Spec.Taints {
		taint := &node.Spec.Taints[i]
		if taint.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		tolerated := false
		for j := range shape.Tolerations {
			if shape.Tolerations[j].ToleratesTaint(klog.Background(), taint, false) {
				tolerated = true
				break
			}
		}
		if !tolerated {
			return false
		}
	}
	return true
}

// nodeHostname is the node's kubernetes.io/hostname label, or its name.
func nodeHostname(node *corev1.Node) string {
	if h := node.Labels[HostnameLabel]; h != "" {
		return h
	}
	return node.Name
}

func podNode(pod *corev1.Pod) string { return pod.Spec.NodeName }

// podPinnedHostname is the hostname an unscheduled agent Pod is pinned to by
// its required node affinity, or "".
func podPinnedHostname(pod *corev1.Pod) string {
	if pod.Spec.NodeName != "" || pod.Spec.Affinity == nil || pod.Spec.Affinity.NodeAffinity == nil {
		return ""
	}
	req := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	if req == nil || len(req.NodeSelectorTerms) != 1 {
		return ""
	}
	for _, e := range req.NodeSelectorTerms[0].MatchExpressions {
		if e.Key == HostnameLabel && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
			return e.Values[0]
		}
	}
	return ""
}

// podRequests sums the CPU (millicores) and memory (bytes) requests of the
// Pod's containers.
func podRequests(pod *corev1.Pod) (cpu, mem int64) {
	for _, c := range pod.Spec.Containers {
		cpu += c.Resources.Requests.Cpu().MilliValue()
		mem += c.Resources.Requests.Memory().Value()
	}
	return cpu, mem
}
