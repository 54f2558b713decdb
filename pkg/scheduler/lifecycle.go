package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	agentclient "github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

type metav1ListOptions = metav1.ListOptions

// upsertAgent follows an agent Pod: its address, readiness and draining mark.
// A Pod that is not an agent (isAgentPod) is ignored.
func (s *Scheduler) upsertAgent(ctx context.Context, pod *v1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	if !s.isAgentPod(pod) {
		klog.FromContext(ctx).V(4).Info("ignoring a Pod labelled as an agent that no pool controls", "pod", klog.KObj(pod))
		s.removeAgent(ctx, key, "the Pod is not an agent")
		return
	}
	if pod.DeletionTimestamp != nil || pod.Status.Phase == v1.PodFailed || pod.Status.Phase == v1.PodSucceeded {
		s.removeAgent(ctx, key, fmt.Sprintf("the agent Pod is %s", podGone(pod)))
		return
	}
	s.mu.Lock()
	a, ok := s.agents[key]
	if ok && a.uid != pod.UID {
		// A new Pod of the same name: the old agent is gone.
		s.mu.Unlock()
		s.removeAgent(ctx, key, "the agent Pod was replaced")
		s.mu.Lock()
		a, ok = nil, false
	}
	if !ok {
		if ctx.Err() != nil {
			s.mu.Unlock()
			return // Run is ending: no new loops
		}
		a = newAgentState(pod, max(3*s.opts.StatusPeriod, 3*time.Second))
		s.agents[key] = a
		s.loops.Go(func() { s.runAgent(ctx, a) })
	}
	wasUsable := a.usable()
	if a.updateFromPod(pod) || a.client == nil {
		a.client = s.newClientLocked(ctx, a)
	}
	s.refreshNodeLocked(ctx, a)
	nowUsable := a.usable()
	pool := a.pool
	s.mu.Unlock()
	if nowUsable && !wasUsable {
		s.reactivate(pool)
	}
}

// runAgent polls and syncs an agent once the scheduler has learned the
// cluster (and taken its epoch), until the agent is forgotten.
func (s *Scheduler) runAgent(ctx context.Context, a *agentState) {
	select {
	case <-ctx.Done():
		return
	case <-a.stop:
		a.syncer.failAll(errAgentRemoved)
		return
	case <-s.learned:
	}
	s.loops.Go(func() { s.runPoller(ctx, a) })
	s.runSyncer(ctx, a)
}

// isAgentPod says whether pod is an agent: in the system namespace and
// controlled by the SandboxPool its label names. Only the pool controller
// creates such Pods; a label alone (which anyone who can create a Pod can
// set) never makes one.
func (s *Scheduler) isAgentPod(pod *v1.Pod) bool {
	ref := metav1.GetControllerOf(pod)
	return pod.Namespace == s.opts.SystemNamespace && ref != nil &&
		ref.APIVersion == v1alpha1.SchemeGroupVersion.String() && ref.Kind == "SandboxPool" &&
		ref.Name == pod.Labels[v1alpha1.LabelPoolName] && ref.Name != ""
}

func podGone(pod *v1.Pod) string {
	if pod.DeletionTimestamp != nil {
		return "being deleted"
	}
	return string(pod.Status.Phase)
}

// newClientLocked returns a client for the agent's endpoint, or nil while it
// has no address or the scheduler has no credentials yet. The client speaks
// mutual TLS and sends nothing to a server whose certificate does not name
// this agent Pod (agentpki.ClientCredentials.ConfigFor).
func (s *Scheduler) newClientLocked(ctx context.Context, a *agentState) *agentclient.Client {
	if a.podIP == "" {
		return nil
	}
	if s.creds == nil {
		klog.FromContext(ctx).V(2).Info("no agent API credentials yet", "agent", a.key(),
			"secret", klog.KRef(s.opts.SystemNamespace, v1alpha1.SchedulerClientSecretName))
		return nil
	}
	hc := &http.Client{Transport: s.creds.Transport(s.opts.AgentTransport, a.namespace, a.name)}
	return agentclient.New("https://"+net.JoinHostPort(a.podIP, strconv.Itoa(a.port)), hc)
}

// credentialsChanged takes the scheduler's client certificate from its
// Secret. Clients made earlier use the new one from their next connection.
func (s *Scheduler) credentialsChanged(ctx context.Context, secret *v1.Secret) {
	logger := klog.FromContext(ctx)
	cert, key, ca := secret.Data[agentpki.KeyCert], secret.Data[agentpki.KeyKey], secret.Data[agentpki.KeyCACert]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.creds != nil {
		if err := s.creds.Update(cert, key, ca); err != nil {
			logger.Error(err, "the agent API credentials in the Secret are not valid; keeping the previous ones", "secret", klog.KObj(secret))
		}
		return
	}
	creds, err := agentpki.NewClient(cert, key, ca)
	if err != nil {
		logger.Error(err, "the agent API credentials in the Secret are not valid", "secret", klog.KObj(secret))
		return
	}
	s.creds = creds
	logger.Info("agent API credentials loaded", "secret", klog.KObj(secret))
	for _, a := range s.agents {
		if a.client == nil && !a.deleted {
			a.client = s.newClientLocked(ctx, a)
		}
	}
}

// refreshNodeLocked puts the agent's current view into its pool's cache.
func (s *Scheduler) refreshNodeLocked(ctx context.Context, a *agentState) {
	if a.pool == "" || a.deleted {
		return
	}
	ps := s.ensurePoolLocked(ctx, a.pool)
	var node *v1.Node
	if a.nodeName != "" {
		node, _ = s.nodes.Get(a.nodeName)
	}
	n := agentNode(a, node)
	if old, err := ps.cache.GetNode(a.name); err == nil && old.Node() != nil {
		ps.cache.UpdateNode(klog.FromContext(ctx), old.Node(), n)
	} else {
		ps.cache.AddNode(klog.FromContext(ctx), n)
	}
}

// removeAgent forgets an agent whose Pod is gone: its loops end, nothing is
// placed there any more, and its sandboxes that had not finished are lost.
func (s *Scheduler) removeAgent(ctx context.Context, key, why string) {
	s.mu.Lock()
	a, ok := s.agents[key]
	if ok {
		delete(s.agents, key)
		delete(s.inflight, key)
		a.deleted = true
		close(a.stop)
		if ps, ok := s.poolStates[a.pool]; ok {
			_ = ps.cache.RemoveNode(klog.FromContext(ctx), &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.name}})
		}
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	klog.FromContext(ctx).Info("agent removed", "agent", key, "reason", why)
	s.sweepLost(ctx)
}

// sweepLost is the periodic, level-triggered check that no sandbox is bound
// to an agent that is gone: every unfinished sandbox whose agent Pod (by
// name and UID) is not a live agent, or whose agent was declared lost, is
// lost (failed with AgentLost, or placed again under AutoRecreate). A
// deleted sandbox whose agent is gone loses its finalizer. A write that fails
// here is simply done again by the next sweep.
func (s *Scheduler) sweepLost(ctx context.Context) {
	sbxs, err := s.sandboxes.List(labels.Everything())
	if err != nil {
		klog.FromContext(ctx).Error(err, "listing sandboxes for the lost-agent sweep")
		return
	}
	for _, sbx := range sbxs {
		if sbx.Status.Agent == "" {
			continue
		}
		s.mu.Lock()
		a := s.agents[s.agentKey(sbx.Status.Agent)]
		gone := a == nil || !a.holds(sbx)
		lost := !gone && a.lost
		beingBound := s.binding[string(sbx.UID)]
		s.mu.Unlock()
		switch {
		case beingBound || (!gone && !lost):
		case sbx.DeletionTimestamp != nil:
			if gone && !s.agentPodExists(sbx) {
				s.removeFinalizer(ctx, sbx)
			}
		case finished(sbx):
		case gone:
			s.loseSandbox(ctx, sbx, fmt.Sprintf("agent %s is gone", sbx.Status.Agent))
		default:
			s.loseSandbox(ctx, sbx, fmt.Sprintf("agent %s stopped answering", sbx.Status.Agent))
		}
	}
}

// agentPodExists says whether the agent Pod a sandbox was bound to (by name
// and UID) still exists, terminating or not. The pool controller keeps a
// finalizer on agent Pods until the node is cleaned of their containers, so
// a deleted sandbox of a gone agent keeps its own finalizer until then: its
// container is confirmed removed when the Pod object is gone.
func (s *Scheduler) agentPodExists(sbx *v1alpha1.Sandbox) bool {
	s.mu.Lock()
	lister := s.agentPods
	s.mu.Unlock()
	if lister == nil || sbx.Status.Agent == "" {
		return false
	}
	pod, err := lister.Pods(s.opts.SystemNamespace).Get(sbx.Status.Agent)
	if err != nil {
		return false
	}
	return sbx.Status.AgentUID == "" || string(pod.UID) == sbx.Status.AgentUID
}

// loseSandbox handles a sandbox whose agent was lost before it finished:
// Failed with AgentLost, or (failurePolicy AutoRecreate) unbound so that it
// is placed again, in a new container, with status.restarts counted.
func (s *Scheduler) loseSandbox(ctx context.Context, sbx *v1alpha1.Sandbox, why string) {
	if sbx.Spec.FailurePolicy != v1alpha1.FailurePolicyAutoRecreate {
		if s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed,
			Reason: v1alpha1.ReasonAgentLost, Message: fmt.Sprintf("%s before the sandbox finished", why)}, nil) {
			sandboxesLost.WithLabelValues("failed").Inc()
		}
		return
	}
	updated := sbx.DeepCopy()
	st := &updated.Status
	st.Restarts++
	st.Phase, st.Reason = v1alpha1.SandboxPending, v1alpha1.ReasonAgentLost
	st.Message = fmt.Sprintf("%s; placing the sandbox again (restart %d)", why, st.Restarts)
	st.Agent, st.AgentUID, st.Node, st.ContainerID, st.ExitCode = "", "", "", "", nil
	st.ScheduleTime, st.AgentToldTime, st.StartTime, st.FinishTime = nil, nil, nil, nil
	st.LastActivityTime = nil
	st.ObservedGeneration = sbx.Generation
	unpause(updated, v1alpha1.ReasonAgentLost, st.Message)
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.SandboxConditionScheduled,
		Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonAgentLost, Message: st.Message, ObservedGeneration: sbx.Generation})
	setReady(updated, metav1.ConditionFalse, v1alpha1.ReasonAgentLost, st.Message)
	// The resourceVersion of the object read guards the write: if anything
	// changed since (it finished, it was placed again), the next sweep looks again.
	if _, err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			klog.FromContext(ctx).Error(err, "placing a sandbox again after its agent was lost", "sandbox", klog.KObj(sbx))
		}
		return
	}
	sandboxesLost.WithLabelValues("recreated").Inc()
	s.recorder.Eventf(sbx, nil, v1.EventTypeWarning, "Recreating", "Recreate", "%s", truncateNote(st.Message))
}

// sandboxChanged keeps the pool caches and the queue in step with a Sandbox.
func (s *Scheduler) sandboxChanged(sbx *v1alpha1.Sandbox) {
	key := sbx.Namespace + "/" + sbx.Name
	ctx := s.context()
	logger := klog.FromContext(ctx)
	pool, _ := s.pools.Get(sbx.Spec.PoolName)
	s.mu.Lock()
	ps := s.ensurePoolLocked(ctx, sbx.Spec.PoolName)
	pod := sandboxPod(sbx, pool, "")
	if sbx.Status.Agent != "" {
		if m := s.inflight[s.agentKey(sbx.Status.Agent)]; m != nil {
			delete(m, string(sbx.UID))
		}
	}
	existing, cacheErr := ps.cache.GetPod(pod)
	assumed, _ := ps.cache.IsAssumedPod(pod)
	switch {
	case holdsSlot(sbx) && cacheErr == nil && !assumed:
		_ = ps.cache.UpdatePod(logger, existing, pod)
	case holdsSlot(sbx):
		// New to the cache, or assumed at Reserve and now confirmed bound.
		_ = ps.cache.AddPod(logger, pod)
	case cacheErr == nil && (!assumed || sbx.Status.Agent != "" || finished(sbx)):
		// It finished, was deleted, or was unbound to be placed again. An
		// assumed sandbox whose Bind runs right now keeps its slot.
		_ = ps.cache.RemovePod(logger, existing)
	}
	agent := s.agents[s.agentKey(sbx.Status.Agent)]
	if agent != nil && !agent.holds(sbx) {
		agent = nil
	}
	s.mu.Unlock()

	switch {
	case sbx.DeletionTimestamp != nil:
		if agent == nil {
			if sbx.Status.Agent == "" || !s.agentPodExists(sbx) {
				s.removeFinalizer(ctx, sbx)
			}
		} else {
			agent.syncer.trigger() // the next sync leaves it out; syncDone drops the finalizer
		}
		if !holdsSlot(sbx) {
			s.reactivate(sbx.Spec.PoolName)
		}
	case sbx.Status.Agent == "" && !finished(sbx):
		s.mu.Lock()
		parked := s.unschedulable[key]
		s.mu.Unlock()
		if !parked {
			s.queue.Add(key)
		}
	case finished(sbx) && sbx.Status.Agent != "":
		s.reactivate(sbx.Spec.PoolName) // a slot became free
		if agent != nil {
			agent.syncer.trigger() // it moves to the agent's finished list
		}
	}
}

// sandboxSpecChanged tells the agent of a bound sandbox that has not
// finished about a change of its spec (paused, idleTimeoutSeconds,
// idlePolicy are mutable) right away, rather than at the next difference
// the status poll notices. activeDeadlineSeconds needs no sync: the
// scheduler enforces it (enforceLifetimes).
func (s *Scheduler) sandboxSpecChanged(old, sbx *v1alpha1.Sandbox) {
	if sbx.Status.Agent == "" || finished(sbx) || sbx.DeletionTimestamp != nil {
		return
	}
	if old.Generation == sbx.Generation && apiequality.Semantic.DeepEqual(old.Spec, sbx.Spec) {
		return
	}
	s.mu.Lock()
	agent := s.agents[s.agentKey(sbx.Status.Agent)]
	s.mu.Unlock()
	if agent != nil && agent.holds(sbx) {
		klog.FromContext(s.context()).V(2).Info("sandbox spec changed; syncing its agent", "sandbox", klog.KObj(sbx), "agent", agent.key())
		agent.syncer.trigger()
	}
}

func (s *Scheduler) sandboxDeleted(sbx *v1alpha1.Sandbox) {
	ctx := s.context()
	s.mu.Lock()
	if ps, ok := s.poolStates[sbx.Spec.PoolName]; ok {
		if existing, err := ps.cache.GetPod(sandboxPod(sbx, nil, "")); err == nil {
			_ = ps.cache.RemovePod(klog.FromContext(ctx), existing)
		}
	}
	delete(s.unschedulable, sbx.Namespace+"/"+sbx.Name)
	agent := s.agents[s.agentKey(sbx.Status.Agent)]
	s.mu.Unlock()
	if agent != nil {
		agent.syncer.trigger()
	}
}

func (s *Scheduler) context() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx == nil {
		return context.Background()
	}
	return s.ctx
}

// desiredFor is what an agent must run: the specs of the sandboxes bound to
// it (durably recorded on the Sandbox) that have not finished and are not
// deleted, and the UIDs of its finished ones, whose containers and logs it
// keeps but never starts. A sandbox that started, and that the agent no
// longer reports, is finished too: it is never started twice.
func (s *Scheduler) desiredFor(a *agentState) (specs []api.SandboxSpec, finishedUIDs []string) {
	sbxs := s.sandboxesOf(a)
	s.mu.Lock()
	inflight := make([]*v1alpha1.Sandbox, 0, len(s.inflight[a.key()]))
	for _, b := range s.inflight[a.key()] {
		if b.bound != nil {
			inflight = append(inflight, b.bound)
		}
	}
	status := a.status
	s.mu.Unlock()
	reported := map[string]bool{}
	if status != nil {
		for _, st := range status.Sandboxes {
			reported[st.UID] = true
		}
	}
	seen := map[string]bool{}
	add := func(sbx *v1alpha1.Sandbox) {
		uid := string(sbx.UID)
		if seen[uid] || !a.holds(sbx) || sbx.DeletionTimestamp != nil {
			return
		}
		seen[uid] = true
		switch {
		case finished(sbx):
			finishedUIDs = append(finishedUIDs, uid)
		case sbx.Status.StartTime != nil && status != nil && !reported[uid] && status.Time.After(sbx.Status.StartTime.Time):
			finishedUIDs = append(finishedUIDs, uid) // it ran and is gone: detectLost reports it
		default:
			pool, _ := s.pools.Get(sbx.Spec.PoolName)
			spec := agentSpec(sbx, pool)
			if encodedSize(spec) > api.MaxSandboxSpecBytes {
				return // never sent; scheduleOne failed it with InvalidSpec
			}
			specs = append(specs, spec)
		}
	}
	for _, sbx := range inflight {
		add(sbx)
	}
	for _, sbx := range sbxs {
		add(sbx)
	}
	if len(finishedUIDs) > api.MaxFinished {
		finishedUIDs = finishedUIDs[len(finishedUIDs)-api.MaxFinished:]
	}
	return specs, finishedUIDs
}

// encodedSize is the size of a spec as the agent client encodes it.
func encodedSize(spec api.SandboxSpec) int {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(spec); err != nil {
		return 0
	}
	return buf.Len() - 1 // the encoder's newline
}

// syncDone follows a sync: it records outcomes of sandboxes nobody waits
// for, and drops the finalizer of deleted sandboxes the agent no longer has.
func (s *Scheduler) syncDone(a *agentState, sent []api.SandboxSpec, resp *api.SyncResponse, err error) {
	ctx := s.context()
	if err != nil {
		klog.FromContext(ctx).V(2).Info("sync failed; retrying with backoff", "agent", a.key(), "err", err)
		return
	}
	kept := map[string]bool{}
	for _, spec := range sent {
		kept[spec.UID] = true
	}
	// Sandboxes whose containers the agent is still removing keep their
	// finalizer; the status poll drops it once the agent no longer has them.
	for _, uid := range resp.Deleting {
		kept[uid] = true
	}
	sbxs := s.sandboxesOf(a)
	for _, sbx := range sbxs {
		if a.holds(sbx) && sbx.DeletionTimestamp != nil && !kept[string(sbx.UID)] {
			s.removeFinalizer(ctx, sbx)
		}
	}
	s.observe(ctx, a, resp.Sandboxes)
}

func (s *Scheduler) removeFinalizer(ctx context.Context, sbx *v1alpha1.Sandbox) {
	if !hasFinalizer(sbx) {
		return
	}
	var keep []string
	for _, f := range sbx.Finalizers {
		if f != v1alpha1.FinalizerAgentCleanup {
			keep = append(keep, f)
		}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": keep, "resourceVersion": sbx.ResourceVersion}})
	_, err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).Patch(ctx, sbx.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.FromContext(ctx).Error(err, "removing the finalizer; the next sync or sweep retries", "sandbox", klog.KObj(sbx))
	}
}

// observe turns an agent's report into Sandbox status.
func (s *Scheduler) observe(ctx context.Context, a *agentState, reports []api.SandboxStatus) {
	for _, st := range reports {
		if st.Namespace == "" || st.Name == "" {
			continue
		}
		s.mu.Lock()
		beingBound := s.binding[st.UID]
		s.mu.Unlock()
		if beingBound {
			continue // its Bind records the outcome, with the time the agent was told
		}
		sbx, err := s.sandboxes.Sandboxes(st.Namespace).Get(st.Name)
		if err != nil || string(sbx.UID) != st.UID || !a.holds(sbx) || finished(sbx) {
			continue
		}
		if st.Idle && sbx.DeletionTimestamp == nil && deletesWhenIdle(sbx) {
			s.deleteIdle(ctx, sbx)
			continue
		}
		probe := sbx.DeepCopy()
		if applyAgentStatus(probe, st) {
			s.recordOutcome(ctx, sbx, st, nil)
		}
	}
}

// deleteIdle deletes a Sandbox whose agent reports it idle under idlePolicy
// Delete. The delete is guarded by the UID and resourceVersion read, so a
// sandbox whose spec changed since (e.g. its idlePolicy) is looked at again
// at the next report, and a repeated report deletes (and tells) only once.
// Its finalizer then takes the usual path: the next sync leaves it out and
// the agent removes its container.
func (s *Scheduler) deleteIdle(ctx context.Context, sbx *v1alpha1.Sandbox) {
	uid, rv := sbx.UID, sbx.ResourceVersion
	err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).Delete(ctx, sbx.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	switch {
	case err == nil:
		klog.FromContext(ctx).Info("deleted an idle sandbox (idlePolicy Delete)", "sandbox", klog.KObj(sbx), "idleTimeoutSeconds", *sbx.Spec.IdleTimeoutSeconds)
		s.recorder.Eventf(sbx, nil, v1.EventTypeNormal, "IdleTimeout", "Delete",
			"no exec, attach, log follow or files call for %ds (idleTimeoutSeconds); deleting the Sandbox (idlePolicy Delete)", *sbx.Spec.IdleTimeoutSeconds)
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
	default:
		klog.FromContext(ctx).Error(err, "deleting an idle sandbox; the next report retries", "sandbox", klog.KObj(sbx))
	}
}

// pollAgents asks every agent for its status once, in parallel.
func (s *Scheduler) pollAgents(ctx context.Context) {
	s.mu.Lock()
	agents := make([]*agentState, 0, len(s.agents))
	for _, a := range s.agents {
		agents = append(agents, a)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Go(func() { s.pollAgent(ctx, a) })
	}
	wg.Wait()
}

// runPoller asks one agent for its status every period, so that a slow
// agent delays no other.
func (s *Scheduler) runPoller(ctx context.Context, a *agentState) {
	t := time.NewTicker(s.opts.StatusPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.stop:
			return
		case <-t.C:
			s.pollAgent(ctx, a)
		}
	}
}

// pollAgent asks an agent for its status, refreshes the cache, records
// sandbox outcomes, re-syncs the agent if what it runs differs from what it
// should, and counts failed calls toward declaring it lost.
func (s *Scheduler) pollAgent(ctx context.Context, a *agentState) {
	s.mu.Lock()
	if a.client == nil && !a.deleted {
		a.client = s.newClientLocked(ctx, a)
	}
	client := a.client
	s.mu.Unlock()
	var (
		st  *api.Status
		err = errNoEndpoint
	)
	if client != nil {
		callCtx, cancel := context.WithTimeout(ctx, s.opts.StatusTimeout)
		st, err = client.Status(callCtx)
		cancel()
	}
	if ctx.Err() != nil {
		return
	}
	now := time.Now()
	s.mu.Lock()
	if a.deleted {
		s.mu.Unlock()
		return
	}
	wasUsable, wasLost := a.usable(), a.lost
	declareLost := false
	switch {
	case err == nil:
		a.status, a.lastSeen = st, now
		a.failures, a.lost, a.silentNoted = 0, false, false
	case agentclient.IsStarting(err):
		// It answers, so it is not silent; it takes nothing until ready.
		a.failures = 0
	default:
		if a.failures == 0 {
			a.failingSince = now
		}
		a.failures++
		silent := a.failures >= s.opts.AgentLostAttempts && now.Sub(a.failingSince) >= s.opts.AgentLostTimeout
		// Sandboxes are containers of the node's containerd: they outlive
		// the agent process (a crash loop, a partition between the scheduler
		// and the Pod). Only a silent agent on a node that is not Ready (or
		// gone) is lost; on a Ready node it just takes nothing new.
		if !a.lost && silent && !s.nodeReadyLocked(a.nodeName) {
			a.lost, declareLost = true, true
		}
		if silent && !a.lost && !a.silentNoted {
			a.silentNoted = true
			klog.FromContext(ctx).Info("agent does not answer; its node is Ready, so its sandboxes are kept", "agent", a.key(), "node", a.nodeName, "err", err)
		}
	}
	failures, since := a.failures, a.failingSince
	s.refreshNodeLocked(ctx, a)
	nowUsable := a.usable()
	s.mu.Unlock()
	logger := klog.FromContext(ctx)
	if declareLost {
		agentsLost.Inc()
		logger.Info("agent lost: it did not answer", "agent", a.key(), "attempts", failures, "since", since, "err", err)
		s.sweepLost(ctx)
	}
	if err != nil {
		return
	}
	if wasLost {
		logger.Info("a lost agent answers again", "agent", a.key())
	}
	if nowUsable && !wasUsable {
		s.reactivate(a.pool)
	}
	s.observe(ctx, a, st.Sandboxes)
	if why := s.needsSync(a, st); why != "" {
		logger.V(2).Info("agent differs from its desired set; syncing", "agent", a.key(), "why", why)
		a.syncer.trigger()
	}
	s.detectLost(ctx, a, st)
}

// nodeReadyLocked says whether a node exists and is Ready.
func (s *Scheduler) nodeReadyLocked(name string) bool {
	if name == "" {
		return false
	}
	node, err := s.nodes.Get(name)
	if err != nil {
		return false
	}
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// needsSync compares what an agent reports with what it should run and says
// how they differ ("" when they do not): it has not applied this
// scheduler's newest answered sync (it restarted, or an answer was lost), a
// desired sandbox is missing, a finished one still runs, or it has one that
// is not desired.
func (s *Scheduler) needsSync(a *agentState, st *api.Status) string {
	epoch := s.epoch.Load()
	ackedEpoch, ackedRevision, inFlight := a.syncer.acked()
	if st.Epoch != epoch {
		return fmt.Sprintf("the agent applied epoch %d, not this scheduler's %d", st.Epoch, epoch)
	}
	if !inFlight && (st.Epoch != ackedEpoch || st.Revision != ackedRevision) {
		return fmt.Sprintf("the agent applied revision %d; the last answered sync was %d", st.Revision, ackedRevision)
	}
	specs, finishedUIDs := s.desiredFor(a)
	reported := make(map[string]api.SandboxStatus, len(st.Sandboxes))
	for _, r := range st.Sandboxes {
		reported[r.UID] = r
	}
	wanted := make(map[string]bool, len(specs)+len(finishedUIDs))
	for _, spec := range specs {
		wanted[spec.UID] = true
		r, ok := reported[spec.UID]
		switch {
		case inFlight:
		case !ok:
			return fmt.Sprintf("sandbox %s/%s is desired but not reported", spec.Namespace, spec.Name)
		case spec.Paused && r.State == api.StateRunning:
			return fmt.Sprintf("sandbox %s/%s is to be paused but runs", spec.Namespace, spec.Name)
		case !spec.Paused && r.State == api.StatePaused && r.PauseReason == api.PauseReasonSpec:
			return fmt.Sprintf("sandbox %s/%s is to be resumed but is paused", spec.Namespace, spec.Name)
		}
	}
	for _, uid := range finishedUIDs {
		wanted[uid] = true
		if state := reported[uid].State; state == api.StateRunning || state == api.StatePaused {
			return fmt.Sprintf("finished sandbox %s still runs", uid)
		}
	}
	for uid := range reported {
		if !wanted[uid] {
			return fmt.Sprintf("sandbox %s is not desired", uid)
		}
	}
	return ""
}

// detectLost fails sandboxes that started but that their agent no longer
// has, and drops the finalizer of deleted sandboxes whose containers the
// agent has removed since.
func (s *Scheduler) detectLost(ctx context.Context, a *agentState, st *api.Status) {
	reported := map[string]bool{}
	for _, r := range st.Sandboxes {
		reported[r.UID] = true
	}
	sbxs := s.sandboxesOf(a)
	for _, sbx := range sbxs {
		if !a.holds(sbx) || reported[string(sbx.UID)] {
			continue
		}
		s.mu.Lock()
		beingBound := s.binding[string(sbx.UID)]
		s.mu.Unlock()
		switch {
		case beingBound:
		case sbx.DeletionTimestamp != nil:
			if st.Time.After(sbx.DeletionTimestamp.Add(time.Second)) {
				s.removeFinalizer(ctx, sbx)
			}
		case !finished(sbx) && sbx.Status.StartTime != nil && st.Time.After(sbx.Status.StartTime.Add(time.Second)):
			s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed,
				Reason: api.ReasonContainerLost, Message: fmt.Sprintf("agent %s no longer has the sandbox's container", a.name)}, nil)
		}
	}
}

// enforceLifetimes fails sandboxes past their activeDeadlineSeconds (their
// agent then stops them) and deletes finished ones past their TTL.
func (s *Scheduler) enforceLifetimes(ctx context.Context) {
	sbxs, _ := s.sandboxes.List(labels.Everything())
	now := time.Now()
	for _, sbx := range sbxs {
		switch {
		case sbx.DeletionTimestamp != nil:
		case finished(sbx) && sbx.Spec.TTLSecondsAfterFinished != nil && sbx.Status.FinishTime != nil &&
			now.After(sbx.Status.FinishTime.Add(time.Duration(*sbx.Spec.TTLSecondsAfterFinished)*time.Second)):
			err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).Delete(ctx, sbx.Name,
				metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &sbx.UID}})
			if err != nil && !apierrors.IsNotFound(err) {
				klog.FromContext(ctx).Error(err, "deleting a sandbox past its TTL", "sandbox", klog.KObj(sbx))
			}
		case !finished(sbx) && sbx.Spec.ActiveDeadlineSeconds != nil && sbx.Status.StartTime != nil &&
			now.After(sbx.Status.StartTime.Add(time.Duration(*sbx.Spec.ActiveDeadlineSeconds)*time.Second)):
			s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed,
				Reason:  v1alpha1.ReasonDeadlineExceeded,
				Message: fmt.Sprintf("the sandbox ran longer than its activeDeadlineSeconds (%d)", *sbx.Spec.ActiveDeadlineSeconds)}, nil)
			s.mu.Lock()
			agent := s.agents[s.agentKey(sbx.Status.Agent)]
			s.mu.Unlock()
			if agent != nil {
				agent.syncer.trigger()
			}
		}
	}
}
