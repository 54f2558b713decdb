package scheduler

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	agentclient "github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// Bounds of the backoff between failed syncs of one agent.
const (
	syncBackoffMin = 100 * time.Millisecond
	syncBackoffMax = 10 * time.Second
)

var errAgentRemoved = errors.New("the agent was removed")

// agentState is what the scheduler knows of one agent Pod. Its name,
// namespace, uid and pool never change (a new Pod of the same name is a new
// agentState); the other fields are guarded by the scheduler's mutex, except
// syncer's own state.
type agentState struct {
	name, namespace, pool string
	uid                   types.UID

	nodeName string
	podIP    string
	port     int
	podReady bool
	draining bool
	// deleted: the agent Pod is gone (or going); the agent is forgotten.
	deleted bool

	client   *agentclient.Client
	status   *api.Status // last status answered
	lastSeen time.Time   // when it was answered
	// staleAfter is how old a status may be for the agent to take sandboxes.
	staleAfter time.Duration

	// The failure detector: failures counts consecutive status calls that
	// got no answer, since failingSince. An agent that stays silent for
	// enough attempts over long enough, on a node that is not Ready, is
	// lost: its sandboxes are failed (or placed again) and nothing is placed
	// on it until it answers again. silentNoted: its silence on a Ready node
	// was logged.
	failures     int
	failingSince time.Time
	lost         bool
	silentNoted  bool

	syncer *syncer
	// stop is closed when the agent is forgotten: its loops end.
	stop chan struct{}
}

func newAgentState(pod *v1.Pod, staleAfter time.Duration) *agentState {
	a := &agentState{name: pod.Name, namespace: pod.Namespace, uid: pod.UID, pool: pod.Labels[v1alpha1.LabelPoolName],
		staleAfter: staleAfter, stop: make(chan struct{})}
	a.syncer = newSyncer()
	return a
}

func (a *agentState) key() string { return a.namespace + "/" + a.name }

// usable says whether sandboxes may be placed on the agent: its Pod is Ready,
// its last status is fresh and healthy, and its last two calls did not fail.
func (a *agentState) usable() bool {
	return a.podReady && !a.deleted && !a.lost && a.failures < 2 && a.status != nil && a.status.Healthy && time.Since(a.lastSeen) < a.staleAfter
}

// takes says whether the agent may take one more sandbox now: Reserve and
// Bind check it under the scheduler's mutex right before they commit.
func (a *agentState) takes() bool {
	return !a.deleted && !a.lost && !a.draining
}

// holds says whether a sandbox bound to the agent named in its status is
// bound to this incarnation of the agent Pod.
func (a *agentState) holds(sbx *v1alpha1.Sandbox) bool {
	return sbx.Status.Agent == a.name && (sbx.Status.AgentUID == "" || a.uid == "" || sbx.Status.AgentUID == string(a.uid))
}

// updateFromPod refreshes what the Pod says (of the same Pod: same UID); it
// reports whether the agent's endpoint changed.
func (a *agentState) updateFromPod(pod *v1.Pod) bool {
	port := v1alpha1.AgentAPIPort
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == v1alpha1.AgentAPIPortName {
				port = int(p.ContainerPort)
			}
		}
	}
	changed := a.podIP != pod.Status.PodIP || a.port != port
	a.podIP, a.nodeName, a.port = pod.Status.PodIP, pod.Spec.NodeName, port
	a.draining = pod.Annotations[v1alpha1.AnnotationDraining] != ""
	a.podReady = false
	for _, c := range pod.Status.Conditions {
		if c.Type == v1.PodReady && c.Status == v1.ConditionTrue {
			a.podReady = true
		}
	}
	return changed
}

// syncer pushes the desired set of one agent, coalescing requests: while a
// sync is in flight, every new request waits for the next one, which covers
// them all. Syncs of one agent never overlap. A failed sync is retried with
// backoff until one succeeds, and the status poll asks for a sync whenever
// what the agent reports differs from what it should run: the loop is
// level-triggered, no single request has to succeed.
type syncer struct {
	kick chan struct{}

	mu sync.Mutex
	// taken is the revision of the newest sync whose desired set was taken.
	taken   int64
	waiters map[string][]waiter
	// inFlight is set while a sync runs.
	inFlight bool
	// ackedEpoch and ackedRevision are those of the newest sync the agent
	// answered with success.
	ackedEpoch, ackedRevision int64
	// backoff is the wait before the next attempt after a failure; notBefore
	// is when that attempt may run.
	backoff   time.Duration
	notBefore time.Time
	failures  int
}

// waiter waits for the outcome of one sandbox; revision is the newest sync
// whose desired set was taken before the waiter came.
type waiter struct {
	ch       chan syncResult
	revision int64
}

type syncResult struct {
	status api.SandboxStatus
	err    error
}

func newSyncer() *syncer {
	return &syncer{kick: make(chan struct{}, 1), waiters: map[string][]waiter{}}
}

// request asks for a sync that includes uid and returns where its outcome arrives.
func (s *syncer) request(uid string) <-chan syncResult {
	ch := make(chan syncResult, 1)
	s.mu.Lock()
	s.waiters[uid] = append(s.waiters[uid], waiter{ch: ch, revision: s.taken})
	s.mu.Unlock()
	s.trigger()
	return ch
}

// trigger asks for a sync; requests made while one is pending coalesce.
func (s *syncer) trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// begin marks a sync with the given revision as started.
func (s *syncer) begin(revision int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.taken, s.inFlight = revision, true
}

// holdOff is how long the next attempt must wait after failures.
func (s *syncer) holdOff() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Until(s.notBefore)
}

// finish records a sync's result: success resets the backoff and remembers
// what the agent applied; a failure doubles the backoff (with jitter) and
// asks for another attempt.
func (s *syncer) finish(epoch, revision int64, err error) {
	s.mu.Lock()
	s.inFlight = false
	if err == nil {
		s.ackedEpoch, s.ackedRevision = epoch, revision
		s.backoff, s.notBefore, s.failures = 0, time.Time{}, 0
		s.mu.Unlock()
		return
	}
	s.failures++
	switch {
	case s.backoff == 0:
		s.backoff = syncBackoffMin
	case s.backoff < syncBackoffMax:
		s.backoff = min(2*s.backoff, syncBackoffMax)
	}
	wait := s.backoff/2 + rand.N(s.backoff/2+1)
	s.notBefore = time.Now().Add(wait)
	s.mu.Unlock()
	s.trigger()
}

// acked returns the epoch and revision the agent last applied by our word,
// and whether a sync is running now.
func (s *syncer) acked() (epoch, revision int64, inFlight bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ackedEpoch, s.ackedRevision, s.inFlight
}

// deliver hands each waiter of a sent sandbox its outcome. A waiter that
// came before this sync's desired set was taken but whose sandbox it did not
// carry is told so (the sandbox is no longer desired); later waiters wait
// for the next sync.
func (s *syncer) deliver(revision int64, sent []api.SandboxSpec, resp *api.SyncResponse, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	outcome := map[string]syncResult{}
	for _, spec := range sent {
		outcome[spec.UID] = syncResult{err: err}
	}
	if err == nil {
		for _, st := range resp.Sandboxes {
			outcome[st.UID] = syncResult{status: st}
		}
	}
	for uid, ws := range s.waiters {
		var keep []waiter
		for _, w := range ws {
			if r, ok := outcome[uid]; ok {
				w.ch <- r
			} else if w.revision < revision {
				w.ch <- syncResult{err: errNotDesired}
			} else {
				keep = append(keep, w)
			}
		}
		if len(keep) == 0 {
			delete(s.waiters, uid)
		} else {
			s.waiters[uid] = keep
		}
	}
	if len(s.waiters) > 0 {
		s.trigger()
	}
}

func (s *syncer) failAll(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, ws := range s.waiters {
		for _, w := range ws {
			w.ch <- syncResult{err: err}
		}
		delete(s.waiters, uid)
	}
}

// runSyncer syncs the agent whenever asked, waiting out the backoff after
// failures, until the agent is forgotten or ctx ends.
func (s *Scheduler) runSyncer(ctx context.Context, a *agentState) {
	sy := a.syncer
	defer sy.failAll(errAgentRemoved)
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.stop:
			return
		case <-sy.kick:
		}
		if wait := sy.holdOff(); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-a.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		s.syncOnce(ctx, a)
	}
}

// syncOnce sends the agent its desired set once and hands out the outcome.
func (s *Scheduler) syncOnce(ctx context.Context, a *agentState) {
	epoch := s.epoch.Load()
	revision := s.revision.Add(1)
	a.syncer.begin(revision)
	specs, finished := s.desiredFor(a)
	req := &api.SyncRequest{Epoch: epoch, Revision: revision, Sandboxes: specs, Finished: finished}
	s.mu.Lock()
	client := a.client
	s.mu.Unlock()
	var (
		resp *api.SyncResponse
		err  error
	)
	if client == nil {
		err = errNoEndpoint
	} else {
		callCtx, cancel := context.WithTimeout(ctx, s.opts.SyncTimeout)
		resp, err = client.Sync(callCtx, req)
		cancel()
	}
	syncs.WithLabelValues(syncResultLabel(err)).Inc()
	var se *agentclient.StatusError
	if errors.As(err, &se) && se.Code == 409 {
		s.movePast(ctx, a, se.AppliedEpoch, se.AppliedRevision)
	}
	// The binds waiting for this sync record their outcome first; the
	// follow-up (finalizers of removed sandboxes, other reports) must not
	// sit on their path.
	a.syncer.deliver(revision, specs, resp, err)
	a.syncer.finish(epoch, revision, err)
	s.syncDone(a, specs, resp, err)
}
