package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/go-logr/logr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
)

// sweepPeriod is how often an agent looks for orphans on its node.
const sweepPeriod = 15 * time.Second

// Labels the CRI plugin of containerd puts on the containers kubelet makes.
const (
	criLabelPodUID = "io.kubernetes.pod.uid"
	criLabelKind   = "io.cri-containerd.kind"
)

// sweepOrphans removes the containers of agent Pods that are gone from the
// node. A sandbox's container outlives its agent when the agent Pod is
// deleted (its sandboxes then fail with AgentLost); kubelet removes the Pod's
// sandbox container from containerd, so a fast-sandbox container whose agent
// Pod has no sandbox container left belongs to nobody. Any agent on the node
// removes it, with its snapshot and logs. (The pool controller does not rely
// on this: it runs a cleanup Pod, CleanupAgentPod, for every agent Pod that
// stops; this sweep catches what came before, or what that could not do.)
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
	}
	// Files of agent Pods with no container left (a crash between making a
	// warm container's directory and the container, or between removing a
	// container and its log).
	if entries, err := os.ReadDir(filepath.Join(r.cfg.StateDir, "pods")); err == nil {
		for _, e := range entries {
			if _, checked := alive[e.Name()]; !checked && e.IsDir() {
				alive[e.Name()] = r.podOnNode(ctx, e.Name())
			}
		}
	}
	for pod, ok := range alive {
		if ok {
			continue
		}
		if _, err := r.removeAgentPodContainers(ctx, pod, "removing the container of an agent Pod that is gone"); err != nil {
			r.log.Error(err, "removing the containers of an agent Pod that is gone", "agentPodUID", pod)
		}
	}
}

// podOnNode says whether a Pod still has its sandbox container in
// containerd. When unsure it says yes: a live sandbox is never swept.
func (r *Runtime) podOnNode(ctx context.Context, podUID string) bool {
	cs, err := r.client.Containers(ctx,
		fmt.Sprintf(`labels.%q==%q,labels.%q=="sandbox"`, criLabelPodUID, podUID, criLabelKind))
	return err != nil || len(cs) > 0
}

// removeAgentPodContainers removes every fast-sandbox container labelled
// with the agent Pod UID podUID — sandboxes, whatever their state, and warm
// containers — with its task, snapshot, log file and warm directory. It
// returns how many containers it removed, and an error if any of them (or
// any of their files) is still there. Removing what is already gone is no
// error, so it can run again, or beside another agent's sweep.
func (r *Runtime) removeAgentPodContainers(ctx context.Context, podUID, why string) (int, error) {
	if podUID == "" {
		return 0, errors.New("no agent Pod UID")
	}
	ctx = r.nsCtx(ctx)
	cs, err := r.client.Containers(ctx,
		fmt.Sprintf("labels.%q==%q,labels.%q==%q", LabelManagedBy, managedBy, LabelAgentPodUID, podUID))
	if err != nil {
		return 0, fmt.Errorf("listing the containers of agent Pod %s: %w", podUID, err)
	}
	var errs []error
	removed := 0
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if errdefs.IsNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the labels of container %s: %w", c.ID(), err))
			continue
		}
		r.log.Info(why, "container", c.ID(), "agentPodUID", podUID, "agent", labels[LabelAgent],
			"sandbox", labels[LabelNamespace]+"/"+labels[LabelName], "warm", labels[LabelWarm] == "true")
		if err := r.removeContainer(ctx, c); err != nil {
			errs = append(errs, err)
			continue
		}
		// removeContainer logs what it could not remove of the files; here
		// that must fail the removal.
		if err := r.filesGone(podUID, c.ID()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	// Ranges of user ids its agent took for containers it never made, and
	// the leases of its creations (with what they held: a snapshot made for
	// a container it never made).
	if len(errs) == 0 && podUID != r.cfg.PodUID {
		r.sweepRangeLeases(ctx, fmt.Sprintf("labels.%q==%q", LabelAgentPodUID, podUID))
		r.sweepCreateLeases(ctx, fmt.Sprintf("labels.%q==%q", LabelAgentPodUID, podUID))
	}
	// Whatever else of the Pod's files is left (no container names it any
	// more). Never this agent's own, while it runs.
	if len(errs) == 0 && podUID != r.cfg.PodUID {
		dir := podStateDir(r.cfg.StateDir, podUID)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing the files of agent Pod %s: %w", podUID, err))
		}
	}
	return removed, errors.Join(errs...)
}

// filesGone checks that a removed container of agent Pod podUID left no
// log file or warm directory, removing them once more if it did.
func (r *Runtime) filesGone(podUID, id string) error {
	dir := podStateDir(r.cfg.StateDir, podUID)
	paths, err := sandboxlog.Files(filepath.Join(dir, "logs", id+".log"))
	if err != nil {
		return fmt.Errorf("listing the log files of container %s: %w", id, err)
	}
	if strings.HasPrefix(id, warmIDPrefix) {
		paths = append(paths, filepath.Join(dir, "warm", id))
	}
	var errs []error
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("removing %s of container %s: %w", p, id, err))
		}
	}
	return errors.Join(errs...)
}

// CleanupAgentPod removes, from the node's containerd that cfg names
// (Address, Namespace, StateDir; the rest is not used), every container of
// the agent Pod with UID podUID: its sandboxes whatever their state, and its
// warm containers, each with its task, snapshot, log file and warm
// directory. It returns how many it removed; an error means something may
// be left, and running it again is safe. It needs no Kubernetes API and not
// the agent Pod itself, only that the Pod's agent no longer runs: while
// containerd still runs a container kubelet made for that Pod, it removes
// nothing and fails, since the agent could be creating containers still.
//
// This is what `agent --cleanup-agent-pod-uid` runs in the cleanup Pod the
// pool controller starts on the node of an agent Pod that stopped.
func CleanupAgentPod(ctx context.Context, cfg Config, podUID string, log logr.Logger) (int, error) {
	if podUID == "" {
		return 0, errors.New("no agent Pod UID")
	}
	r := New(cfg, log)
	c, err := client.New(r.cfg.Address, client.WithDefaultNamespace(r.cfg.Namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return 0, fmt.Errorf("connecting to containerd at %s: %w", r.cfg.Address, err)
	}
	defer func() { _ = c.Close() }()
	r.client = c
	ctx = r.nsCtx(ctx)
	if err := r.podContainersStopped(ctx, podUID); err != nil {
		return 0, err
	}
	return r.removeAgentPodContainers(ctx, podUID, "removing a container of an agent Pod that stopped")
}

// podContainersStopped fails while a container that kubelet made for the Pod
// (not its sandbox container) has a running or paused task.
func (r *Runtime) podContainersStopped(ctx context.Context, podUID string) error {
	cs, err := r.client.Containers(ctx,
		fmt.Sprintf(`labels.%q==%q,labels.%q=="container"`, criLabelPodUID, podUID, criLabelKind))
	if err != nil {
		return fmt.Errorf("listing the containers of Pod %s: %w", podUID, err)
	}
	for _, c := range cs {
		task, err := c.Task(ctx, nil)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("loading the task of container %s of Pod %s: %w", c.ID(), podUID, err)
		}
		st, err := task.Status(ctx)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading the task status of container %s of Pod %s: %w", c.ID(), podUID, err)
		}
		if st.Status == client.Running || st.Status == client.Paused || st.Status == client.Pausing {
			return fmt.Errorf("container %s of agent Pod %s still runs (%s); its agent may still create containers", c.ID(), podUID, st.Status)
		}
	}
	return nil
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
