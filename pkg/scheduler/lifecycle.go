package scheduler

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	agentclient "github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

type metav1ListOptions = metav1.ListOptions

// upsertAgent follows an agent Pod: its address, readiness and draining mark.
func (s *Scheduler) upsertAgent(ctx context.Context, pod *v1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	if pod.DeletionTimestamp != nil || pod.Status.Phase == v1.PodFailed || pod.Status.Phase == v1.PodSucceeded {
		s.removeAgent(ctx, key, fmt.Sprintf("the agent Pod is %s", podGone(pod)))
		return
	}
	s.mu.Lock()
	a, ok := s.agents[key]
	if !ok {
		a = &agentState{name: pod.Name, namespace: pod.Namespace, staleAfter: 3 * s.opts.StatusPeriod}
		if a.staleAfter < 3*time.Second {
			a.staleAfter = 3 * time.Second
		}
		a.syncer = newSyncer(a)
		s.agents[key] = a
		go a.syncer.run(ctx, s.epoch, s.desiredFor, s.syncDone)
	}
	wasUsable := a.usable()
	if a.updateFromPod(pod) || a.client == nil {
		a.client = nil
		if a.podIP != "" {
			if token, err := s.agentToken(pod.Namespace, a.pool); err == nil {
				a.client = agentclient.New("http://"+net.JoinHostPort(a.podIP, strconv.Itoa(a.port)), token, nil)
			} else {
				klog.FromContext(ctx).V(2).Info("no agent token yet", "agent", key, "err", err)
			}
		}
	}
	s.refreshNodeLocked(ctx, a)
	nowUsable := a.usable()
	pool := a.pool
	s.mu.Unlock()
	if nowUsable && !wasUsable {
		s.reactivate(pod.Namespace, pool)
	}
}

func podGone(pod *v1.Pod) string {
	if pod.DeletionTimestamp != nil {
		return "being deleted"
	}
	return string(pod.Status.Phase)
}

func (s *Scheduler) agentToken(namespace, pool string) (string, error) {
	secret, err := s.secrets.Secrets(namespace).Get(s.opts.TokenSecret(pool))
	if err != nil {
		return "", err
	}
	token := string(secret.Data["token"])
	if token == "" {
		return "", fmt.Errorf("secret %s/%s has no token", namespace, secret.Name)
	}
	return token, nil
}

// refreshNodeLocked puts the agent's current view into its pool's cache.
func (s *Scheduler) refreshNodeLocked(ctx context.Context, a *agentState) {
	if a.pool == "" {
		return
	}
	ps := s.ensurePoolLocked(ctx, a.namespace+"/"+a.pool)
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

// removeAgent forgets an agent: its sandboxes that had not finished fail
// with AgentLost, and the finalizers of its deleted sandboxes go.
func (s *Scheduler) removeAgent(ctx context.Context, key, why string) {
	s.mu.Lock()
	a, ok := s.agents[key]
	if ok {
		delete(s.agents, key)
		delete(s.inflight, key)
		a.deleted = true
		if ps, ok := s.poolStates[a.namespace+"/"+a.pool]; ok {
			_ = ps.cache.RemoveNode(klog.FromContext(ctx), &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.name}})
		}
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	klog.FromContext(ctx).Info("agent lost", "agent", key, "reason", why)
	a.syncer.failAll(fmt.Errorf("agent %s lost: %s", key, why))
	s.failSandboxesOf(ctx, a, why)
}

// failSandboxesOf fails every unfinished sandbox bound to the agent.
func (s *Scheduler) failSandboxesOf(ctx context.Context, a *agentState, why string) {
	sbxs, _ := s.sandboxes.Sandboxes(a.namespace).List(labels.Everything())
	for _, sbx := range sbxs {
		if sbx.Status.Agent != a.name || (a.uid != "" && sbx.Status.AgentUID != "" && sbx.Status.AgentUID != string(a.uid)) {
			continue
		}
		if sbx.DeletionTimestamp != nil {
			s.removeFinalizer(ctx, sbx)
			continue
		}
		if finished(sbx) {
			continue
		}
		s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed,
			Reason: v1alpha1.ReasonAgentLost, Message: fmt.Sprintf("agent %s was lost: %s", a.name, why)}, nil)
	}
}

// sandboxChanged keeps the pool caches and the queue in step with a Sandbox.
func (s *Scheduler) sandboxChanged(sbx *v1alpha1.Sandbox) {
	key := sbx.Namespace + "/" + sbx.Name
	ctx := s.context()
	logger := klog.FromContext(ctx)
	s.mu.Lock()
	ps := s.ensurePoolLocked(ctx, sbx.Namespace+"/"+sbx.Spec.PoolName)
	pod := sandboxPod(sbx, "")
	if sbx.Status.Agent != "" {
		if m := s.inflight[sbx.Namespace+"/"+sbx.Status.Agent]; m != nil {
			delete(m, string(sbx.UID))
		}
		if holdsSlot(sbx) {
			if existing, err := ps.cache.GetPod(pod); err == nil {
				_ = ps.cache.UpdatePod(logger, existing, pod)
			} else {
				_ = ps.cache.AddPod(logger, pod)
			}
		} else if existing, err := ps.cache.GetPod(pod); err == nil {
			_ = ps.cache.RemovePod(logger, existing)
		}
	}
	agent := s.agents[sbx.Namespace+"/"+sbx.Status.Agent]
	s.mu.Unlock()

	switch {
	case sbx.DeletionTimestamp != nil:
		if agent == nil || sbx.Status.Agent == "" {
			s.removeFinalizer(ctx, sbx)
		} else {
			agent.syncer.trigger() // the next sync leaves it out; syncDone drops the finalizer
		}
		if !holdsSlot(sbx) {
			s.reactivate(sbx.Namespace, sbx.Spec.PoolName)
		}
	case sbx.Status.Agent == "" && !finished(sbx):
		s.mu.Lock()
		parked := s.unschedulable[key]
		s.mu.Unlock()
		if !parked {
			s.queue.Add(key)
		}
	case finished(sbx) && sbx.Status.Agent != "":
		s.reactivate(sbx.Namespace, sbx.Spec.PoolName) // a slot became free
	}
}

func (s *Scheduler) sandboxDeleted(sbx *v1alpha1.Sandbox) {
	ctx := s.context()
	s.mu.Lock()
	if ps, ok := s.poolStates[sbx.Namespace+"/"+sbx.Spec.PoolName]; ok {
		if existing, err := ps.cache.GetPod(sandboxPod(sbx, "")); err == nil {
			_ = ps.cache.RemovePod(klog.FromContext(ctx), existing)
		}
	}
	delete(s.unschedulable, sbx.Namespace+"/"+sbx.Name)
	agent := s.agents[sbx.Namespace+"/"+sbx.Status.Agent]
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

// desiredFor is the complete set of sandboxes an agent must run: the ones
// bound to it (being bound, or recorded on the Sandbox), unless deleted,
// failed by the control plane, or lost after they started (a sandbox that
// started once is never started again).
func (s *Scheduler) desiredFor(a *agentState) []api.SandboxSpec {
	sbxs, _ := s.sandboxes.Sandboxes(a.namespace).List(labels.Everything())
	s.mu.Lock()
	inflight := make(map[string]*v1alpha1.Sandbox, len(s.inflight[a.key()]))
	for uid, sbx := range s.inflight[a.key()] {
		inflight[uid] = sbx
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
	var out []api.SandboxSpec
	add := func(sbx *v1alpha1.Sandbox) {
		uid := string(sbx.UID)
		if seen[uid] || sbx.Status.Agent != a.name || sbx.DeletionTimestamp != nil {
			return
		}
		seen[uid] = true
		switch sbx.Status.Reason {
		case v1alpha1.ReasonAgentLost, v1alpha1.ReasonDeadlineExceeded, api.ReasonContainerLost:
			return
		}
		if sbx.Status.StartTime != nil && status != nil && !reported[uid] && status.Time.After(sbx.Status.StartTime.Time) {
			return // it ran and is gone: report it, never start it twice
		}
		pool, _ := s.pools.SandboxPools(sbx.Namespace).Get(sbx.Spec.PoolName)
		out = append(out, agentSpec(sbx, pool))
	}
	for _, sbx := range inflight {
		add(sbx)
	}
	for _, sbx := range sbxs {
		add(sbx)
	}
	return out
}

// syncDone follows a sync: it records outcomes of sandboxes nobody waits
// for, and drops the finalizer of deleted sandboxes the agent no longer has.
func (s *Scheduler) syncDone(a *agentState, sent []api.SandboxSpec, resp *api.SyncResponse, err error) {
	ctx := s.context()
	if err != nil {
		klog.FromContext(ctx).V(2).Info("sync failed", "agent", a.key(), "err", err)
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
	sbxs, _ := s.sandboxes.Sandboxes(a.namespace).List(labels.Everything())
	for _, sbx := range sbxs {
		if sbx.Status.Agent == a.name && sbx.DeletionTimestamp != nil && !kept[string(sbx.UID)] {
			s.removeFinalizer(ctx, sbx)
		}
	}
	s.observe(ctx, a, resp.Sandboxes)
}

func (s *Scheduler) removeFinalizer(ctx context.Context, sbx *v1alpha1.Sandbox) {
	if !hasFinalizer(sbx) {
		return
	}
	patch := []byte(fmt.Sprintf(`{"metadata":{"finalizers":null,"resourceVersion":%q}}`, sbx.ResourceVersion))
	var keep []string
	for _, f := range sbx.Finalizers {
		if f != v1alpha1.FinalizerAgentCleanup {
			keep = append(keep, f)
		}
	}
	if len(keep) > 0 {
		patch = []byte(fmt.Sprintf(`{"metadata":{"finalizers":%s,"resourceVersion":%q}}`, jsonStrings(keep), sbx.ResourceVersion))
	}
	_, err := s.client.SandboxV1alpha1().Sandboxes(sbx.Namespace).Patch(ctx, sbx.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.FromContext(ctx).Error(err, "removing the finalizer", "sandbox", klog.KObj(sbx))
	}
}

func jsonStrings(ss []string) string {
	out := "["
	for i, v := range ss {
		if i > 0 {
			out += ","
		}
		out += strconv.Quote(v)
	}
	return out + "]"
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
		if err != nil || string(sbx.UID) != st.UID || sbx.Status.Agent != a.name || finished(sbx) {
			continue
		}
		probe := sbx.DeepCopy()
		if applyAgentStatus(probe, st) {
			s.recordOutcome(ctx, sbx, st, nil)
		}
	}
}

// pollAgents asks every agent for its status, refreshes the caches, records
// sandbox outcomes, and declares agents lost that stayed silent too long.
func (s *Scheduler) pollAgents(ctx context.Context) {
	s.mu.Lock()
	agents := make([]*agentState, 0, len(s.agents))
	for _, a := range s.agents {
		agents = append(agents, a)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func(a *agentState) {
			defer wg.Done()
			s.pollAgent(ctx, a)
		}(a)
	}
	wg.Wait()
}

func (s *Scheduler) pollAgent(ctx context.Context, a *agentState) {
	s.mu.Lock()
	client := a.client
	if client == nil && a.podIP != "" {
		if token, err := s.agentToken(a.namespace, a.pool); err == nil {
			a.client = agentclient.New("http://"+net.JoinHostPort(a.podIP, strconv.Itoa(a.port)), token, nil)
			client = a.client
		}
	}
	s.mu.Unlock()
	var (
		st  *api.Status
		err = errNoEndpoint
	)
	if client != nil {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err = client.Status(callCtx)
		cancel()
	}
	s.mu.Lock()
	first := a.status == nil
	wasUsable := a.usable()
	if err == nil {
		a.status, a.lastSeen = st, time.Now()
	}
	silentFor := time.Since(a.lastSeen)
	s.refreshNodeLocked(ctx, a)
	nowUsable := a.usable()
	s.mu.Unlock()
	if err != nil {
		if !a.lastSeen.IsZero() && silentFor > s.opts.AgentLostTimeout {
			s.removeAgent(ctx, a.key(), fmt.Sprintf("no status for %s: %v", silentFor.Round(time.Second), err))
		}
		return
	}
	if nowUsable && !wasUsable {
		s.reactivate(a.namespace, a.pool)
	}
	s.observe(ctx, a, st.Sandboxes)
	if first || st.Epoch != s.epoch {
		a.syncer.trigger() // a new agent, or one that has not heard from this scheduler: converge it
	}
	s.detectLost(ctx, a, st)
}

// detectLost fails sandboxes that started but that their agent no longer
// has, and drops the finalizer of deleted sandboxes whose containers the
// agent has removed since.
func (s *Scheduler) detectLost(ctx context.Context, a *agentState, st *api.Status) {
	reported := map[string]bool{}
	for _, r := range st.Sandboxes {
		reported[r.UID] = true
	}
	sbxs, _ := s.sandboxes.Sandboxes(a.namespace).List(labels.Everything())
	for _, sbx := range sbxs {
		if sbx.Status.Agent == a.name && sbx.DeletionTimestamp != nil && !reported[string(sbx.UID)] &&
			st.Time.After(sbx.DeletionTimestamp.Add(time.Second)) {
			s.mu.Lock()
			beingBound := s.binding[string(sbx.UID)]
			s.mu.Unlock()
			if !beingBound {
				s.removeFinalizer(ctx, sbx)
			}
		}
	}
	for _, sbx := range sbxs {
		if sbx.Status.Agent != a.name || finished(sbx) || sbx.DeletionTimestamp != nil || sbx.Status.StartTime == nil {
			continue
		}
		if !reported[string(sbx.UID)] && st.Time.After(sbx.Status.StartTime.Add(time.Second)) {
			s.recordOutcome(ctx, sbx, api.SandboxStatus{UID: string(sbx.UID), State: api.StateFailed,
				Reason: api.ReasonContainerLost, Message: fmt.Sprintf("agent %s no longer has the sandbox's container", a.name)}, nil)
		}
	}
}

// enforceLifetimes fails sandboxes past their activeDeadlineSeconds (their
// agent then kills them) and deletes finished ones past their TTL.
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
			agent := s.agents[sbx.Namespace+"/"+sbx.Status.Agent]
			s.mu.Unlock()
			if agent != nil {
				agent.syncer.trigger()
			}
		}
	}
}
