package scheduler

import (
	"context"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	agentclient "github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// AgentPort is the port of the agent API in agent Pods that do not name a
// container port "agent-api".
const AgentPort = 8081

// AgentPortName names the agent API's container port.
const AgentPortName = "agent-api"

// AnnotationDraining on an agent Pod tells the scheduler to place nothing
// more there; the pool controller sets it before removing an idle agent.
const AnnotationDraining = "fast-sandbox.io/draining"

// agentState is what the scheduler knows of one agent Pod.
type agentState struct {
	name, namespace, pool, nodeName string
	uid                             types.UID
	podIP                           string
	port                            int
	podReady                        bool
	draining                        bool
	deleted                         bool

	client   *agentclient.Client
	status   *api.Status // last status answered
	lastSeen time.Time   // when it was answered
	// staleAfter is how old a status may be for the agent to take sandboxes.
	staleAfter time.Duration

	syncer *syncer
}

func (a *agentState) key() string { return a.namespace + "/" + a.name }

// usable says whether sandboxes may be placed on the agent.
func (a *agentState) usable() bool {
	return a.podReady && !a.deleted && a.status != nil && a.status.Healthy && time.Since(a.lastSeen) < a.staleAfter
}

// updateFromPod refreshes what the Pod says; it reports whether the agent's
// endpoint changed.
func (a *agentState) updateFromPod(pod *v1.Pod) bool {
	port := AgentPort
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == AgentPortName {
				port = int(p.ContainerPort)
			}
		}
	}
	changed := a.podIP != pod.Status.PodIP || a.uid != pod.UID || a.port != port
	a.uid, a.podIP, a.nodeName, a.port = pod.UID, pod.Status.PodIP, pod.Spec.NodeName, port
	a.pool = pod.Labels[v1alpha1.LabelPoolName]
	a.draining = pod.Annotations[AnnotationDraining] != ""
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
// them all. Syncs of one agent never overlap, and their revisions grow.
type syncer struct {
	agent *agentState
	kick  chan struct{}

	mu       sync.Mutex
	revision int64
	waiters  map[string][]waiter
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

func newSyncer(a *agentState) *syncer {
	return &syncer{agent: a, kick: make(chan struct{}, 1), waiters: map[string][]waiter{}}
}

// request asks for a sync that includes uid and returns where its outcome arrives.
func (s *syncer) request(uid string) <-chan syncResult {
	ch := make(chan syncResult, 1)
	s.mu.Lock()
	s.waiters[uid] = append(s.waiters[uid], waiter{ch: ch, revision: s.revision})
	s.mu.Unlock()
	s.trigger()
	return ch
}

func (s *syncer) trigger() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run syncs whenever triggered until ctx ends. desired builds the set;
// done gets every sync's outcome.
func (s *syncer) run(ctx context.Context, epoch int64,
	desired func(*agentState) []api.SandboxSpec,
	done func(a *agentState, sent []api.SandboxSpec, resp *api.SyncResponse, err error)) {
	for {
		select {
		case <-ctx.Done():
			s.failAll(ctx.Err())
			return
		case <-s.kick:
		}
		s.mu.Lock()
		s.revision++
		revision := s.revision
		s.mu.Unlock()
		specs := desired(s.agent)
		req := &api.SyncRequest{Epoch: epoch, Revision: revision, Sandboxes: specs}
		client := s.agent.client
		var (
			resp *api.SyncResponse
			err  error
		)
		if client == nil {
			err = errNoEndpoint
		} else {
			callCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
			resp, err = client.Sync(callCtx, req)
			cancel()
		}
		// The binds waiting for this sync record their outcome first; the
		// follow-up (finalizers of removed sandboxes, other reports) must not
		// sit on their path.
		s.deliver(revision, specs, resp, err)
		done(s.agent, specs, resp, err)
	}
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
