package containerd

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
)

// Egress networking.
//
// Every sandbox container gets a network namespace of its own from the OCI
// runtime (a linux.namespaces entry of type network without a path), with
// loopback only. For networkMode Egress the runtime then has package
// network wire that namespace to the agent Pod's: a veth pair, an address
// of Config.Egress.Subnet, a default route, NAT and the egress policy. The
// namespace is reached through the node's /proc (Config.HostProc) at
// <HostProc>/<task PID>/ns/net, and it is wired once the container's task
// exists (runc created the namespace) and before the task starts: the
// command never runs without its network.
//
//   - Cold: after NewTask, before Start (Attach takes a millisecond or two).
//   - Warm: when the warm container is made, after NewTask and before its
//     init starts; warm containers are kept per network mode (warmKey), so a
//     claim does nothing network-related.
//
// Both are startTask's (create.go).
//
// The network id of a container is its container ID (a warm container keeps
// the ID it was made with). LabelNetwork records the mode on the container,
// and, as everything else, the labels are the source of truth: after the
// Manager's Init (which learns the attached ids back from their veths),
// Initialize attaches every running Egress sandbox container of this agent
// again (a no-op when its veth is there; a veth lost in a crash is made
// again) and detaches every id that is no such container any more. A
// container is detached when its sandbox exits (its namespace died with its
// last process, and the kernel deleted the veth pair with it; Detach frees
// its address and its connections) and when it is removed.
//
// When the Manager cannot be made or initialized (no nftables, malformed
// settings, no privileges), or Config.Egress is nil, Egress sandboxes fail
// with ReasonCreateFailed saying why, and None sandboxes run as ever.
//
// DNS: a sandbox keeps its image's /etc/resolv.conf. There is no DNS proxy:
// the resolvers it names must be reachable through the egress policy; a
// cluster or node-local resolver is in a default-denied range and must be
// listed in the pool's allowCIDRs (network.Policy.AllowCIDRs).

// LabelNetwork is a sandbox or warm container's network mode (api.NetworkNone
// or api.NetworkEgress); a container without it is None.
const LabelNetwork = "fast-sandbox.io/network-mode"

// onAttach, when set (by tests only), is called after every Attach the
// runtime makes, with the container ID and how long it took.
var onAttach atomic.Pointer[func(id string, took time.Duration)]

// networkOf is the network mode of a sandbox spec: None unless it says Egress.
func networkOf(spec api.SandboxSpec) string {
	if spec.NetworkMode == api.NetworkEgress {
		return api.NetworkEgress
	}
	return api.NetworkNone
}

// initEgress makes the network Manager and initializes it in the agent
// Pod's network namespace, then reconciles it with this agent's containers.
// It never fails Initialize: without a Manager, Egress sandboxes fail with
// the reason (egressUnavailable).
func (r *Runtime) initEgress(ctx context.Context) {
	r.hostProc = r.cfg.HostProc
	if r.hostProc == "" {
		r.hostProc = "/proc"
	}
	switch {
	case r.cfg.EgressError != nil:
		r.egressErr = r.cfg.EgressError
	case r.cfg.Egress == nil:
		r.egressErr = errors.New("not configured")
		r.log.Info("egress networking is not configured: Egress sandboxes fail, None sandboxes run")
		return
	}
	if r.egressErr != nil {
		r.log.Error(r.egressErr, "egress networking is unavailable on this agent: Egress sandboxes fail, None sandboxes run")
		return
	}
	m, err := network.New(*r.cfg.Egress, r.log.WithName("network"))
	if err == nil {
		if err = m.Init(); err != nil {
			_ = m.Close()
		}
	}
	if err != nil {
		r.egressErr = err
		r.log.Error(err, "egress networking is unavailable on this agent: Egress sandboxes fail, None sandboxes run")
		return
	}
	r.egress = m
	r.reconcileEgress(ctx)
}

// egressUnavailable is the error of an Egress sandbox on an agent without
// egress networking.
func (r *Runtime) egressUnavailable() error {
	return fmt.Errorf("egress networking is unavailable on this agent: %w", r.egressErr)
}

// reconcileEgress makes the Manager's attached ids match this agent's
// running Egress sandbox containers: each is attached again (a no-op when
// wired), and every other id the Manager learnt back is detached. Unclaimed
// warm containers are not sandboxes: cleanupWarm removes them next.
func (r *Runtime) reconcileEgress(ctx context.Context) {
	attached := r.egress.List() // before anything of this runtime attaches
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q==%q,labels.%q==%q",
		LabelManagedBy, managedBy, LabelAgent, r.cfg.Agent, LabelNetwork, api.NetworkEgress))
	if err != nil {
		// Which ids are still wanted is unknown: detach none.
		r.log.Error(err, "listing the Egress containers to reconcile their networks")
		return
	}
	live := map[string]bool{}
	for _, c := range cs {
		info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
		if err != nil {
			if !errdefs.IsNotFound(err) {
				live[c.ID()] = true // unsure: keep its network
				r.log.Error(err, "reading an Egress container to reconcile its network", "container", c.ID())
			}
			continue
		}
		if info.Labels[LabelUID] == "" {
			continue // an unclaimed warm container: removed by cleanupWarm
		}
		task, err := c.Task(ctx, nil)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			live[c.ID()] = true
			r.log.Error(err, "loading the task of an Egress container to reconcile its network", "container", c.ID())
			continue
		}
		st, err := task.Status(ctx)
		if err != nil {
			if !errdefs.IsNotFound(err) {
				live[c.ID()] = true
				r.log.Error(err, "reading the task of an Egress container to reconcile its network", "container", c.ID())
			}
			continue
		}
		if st.Status != client.Running && st.Status != client.Paused && st.Status != client.Pausing {
			continue // exited (its namespace is gone) or never started (removed on adoption)
		}
		live[c.ID()] = true
		if err := r.attachEgress(c.ID(), task); err != nil {
			r.log.Error(err, "attaching the network of a running Egress sandbox again", "container", c.ID(),
				"sandbox", info.Labels[LabelNamespace]+"/"+info.Labels[LabelName])
		}
	}
	for _, id := range attached {
		if !live[id] {
			r.log.Info("detaching the network of a container that is no running Egress sandbox of this agent", "container", id)
			r.detachEgress(id)
		}
	}
}

// attachEgress wires the network namespace of a container's task, which
// must exist (created or running).
func (r *Runtime) attachEgress(id string, task client.Task) error {
	if r.egress == nil {
		return r.egressUnavailable()
	}
	start := time.Now()
	path := filepath.Join(r.hostProc, strconv.FormatUint(uint64(task.Pid()), 10), "ns", "net")
	err := r.egress.Attach(id, path)
	took := time.Since(start)
	if f := onAttach.Load(); f != nil {
		(*f)(id, took)
	}
	if err != nil {
		return err
	}
	r.log.V(1).Info("sandbox network attached", "container", id, "took", took)
	return nil
}

// detachEgress unwires a container's network, if any; a failure is logged
// (the address stays reserved until the next agent's reconcile).
func (r *Runtime) detachEgress(id string) {
	if r.egress == nil {
		return
	}
	if err := r.egress.Detach(id); err != nil && r.ctx.Err() == nil {
		r.log.Error(err, "detaching a container's network", "container", id)
	}
}

// closeEgress releases the Manager; the veths and the nftables table stay
// for the next agent.
func (r *Runtime) closeEgress() error {
	if r.egress == nil {
		return nil
	}
	return r.egress.Close()
}
