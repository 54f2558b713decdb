package containerd

import (
	"context"
	"fmt"
	"time"
)

// sweepPeriod is how often an agent looks for orphans on its node.
const sweepPeriod = 15 * time.Second

// sweepOrphans removes the containers of agent Pods that are gone from the
// node. A sandbox's container outlives its agent when the agent Pod is
// deleted (its sandboxes then fail with AgentLost); kubelet removes the Pod's
// sandbox container from containerd, so a fast-sandbox container whose agent
// Pod has no sandbox container left belongs to nobody. Any agent on the node
// removes it, with its snapshot and logs.
func (r *Runtime) sweepOrphans(ctx context.Context) {
	ctx = r.nsCtx(ctx)
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q", LabelManagedBy, managedBy, LabelAgentPodUID))
	if err != nil {
		r.log.Error(err, "listing containers to find orphans")
		return
	}
	alive := map[string]bool{r.cfg.PodUID: true}
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if err != nil {
			continue
		}
		pod := labels[LabelAgentPodUID]
		if _, checked := alive[pod]; !checked {
			alive[pod] = r.podOnNode(ctx, pod)
		}
		if alive[pod] {
			continue
		}
		r.log.Info("removing the container of an agent Pod that is gone", "container", c.ID(),
			"agent", labels[LabelAgent], "sandbox", labels[LabelNamespace]+"/"+labels[LabelName])
		if err := r.removeContainer(ctx, c); err != nil {
			r.log.Error(err, "removing an orphaned container", "container", c.ID())
		}
	}
}

// podOnNode says whether a Pod still has its sandbox container in
// containerd. When unsure it says yes: a live sandbox is never swept.
func (r *Runtime) podOnNode(ctx context.Context, podUID string) bool {
	cs, err := r.client.Containers(ctx,
		fmt.Sprintf(`labels."io.kubernetes.pod.uid"==%q,labels."io.cri-containerd.kind"=="sandbox"`, podUID))
	return err != nil || len(cs) > 0
}

func (r *Runtime) sweepLoop() {
	t := time.NewTicker(sweepPeriod)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
			r.sweepOrphans(r.ctx)
		}
	}
}
