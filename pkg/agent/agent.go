// Package agent is the daemon of an agent Pod: it keeps the set of sandboxes
// that the control plane wants on this agent, creating and deleting them
// through a runtime, and answers for their state.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// Config is what the agent knows of itself.
type Config struct {
	Info api.AgentInfo
	// Capacity bounds what the desired set may ask: slots, and the CPU and
	// memory of the agent Pod (0 means unbounded).
	Capacity api.Resources
	// CreateParallelism bounds the sandboxes one sync creates at once.
	CreateParallelism int
}

// Agent converges the runtime to the desired set of sandboxes.
type Agent struct {
	cfg     Config
	rt      runtime.Runtime
	log     logr.Logger
	metrics *metrics

	syncMu sync.Mutex // one sync at a time

	mu        sync.RWMutex
	sandboxes map[string]api.SandboxStatus // by UID
	deleting  map[string]bool              // UIDs whose removal runs
	epoch     int64
	revision  int64

	ready atomic.Bool
}

// New returns an agent over a runtime; Start makes it ready.
func New(cfg Config, rt runtime.Runtime, log logr.Logger) *Agent {
	if cfg.CreateParallelism <= 0 {
		cfg.CreateParallelism = 16
	}
	return &Agent{cfg: cfg, rt: rt, log: log, metrics: newMetrics(),
		sandboxes: map[string]api.SandboxStatus{}, deleting: map[string]bool{}}
}

// Start initializes the runtime and adopts the sandboxes it already has
// (from before a restart). Adopted sandboxes are kept until the next sync
// says whether they are still desired. It then follows sandbox exits until
// ctx ends.
func (a *Agent) Start(ctx context.Context) error {
	info, err := a.rt.Initialize(ctx)
	if err != nil {
		return fmt.Errorf("initializing the runtime: %w", err)
	}
	a.cfg.Info.Runtime, a.cfg.Info.CgroupParent = info.Runtime, info.CgroupParent
	existing, err := a.rt.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("listing existing sandboxes: %w", err)
	}
	a.mu.Lock()
	for _, s := range existing {
		a.sandboxes[s.UID] = s
	}
	a.mu.Unlock()
	a.log.Info("agent ready", "adopted", len(existing), "runtime", info.Runtime, "cgroupParent", info.CgroupParent)
	go a.followExits(ctx)
	a.ready.Store(true)
	return nil
}

// Ready says whether Start finished.
func (a *Agent) Ready() bool { return a.ready.Load() }

func (a *Agent) followExits(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-a.rt.Exits():
			// The runtime reports exits only of sandboxes it has not been
			// asked to delete; one may exit before its creation returned.
			a.mu.Lock()
			a.sandboxes[st.UID] = st
			a.mu.Unlock()
			a.log.V(2).Info("sandbox exited", "uid", st.UID, "name", st.Name, "exitCode", st.ExitCode, "reason", st.Reason)
		}
	}
}

// RequestError is a sync the agent refuses; Code is the HTTP status.
type RequestError struct {
	Code    int
	Message string
}

func (e *RequestError) Error() string { return e.Message }

func refuse(code int, format string, args ...any) error {
	return &RequestError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// uidPattern accepts Kubernetes UIDs and similar IDs, safe in container IDs and paths.
var uidPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,75}$`)

// Sync makes the agent run exactly the desired set: it creates the missing
// sandboxes, deletes the ones not desired and leaves the rest. It refuses
// (changing nothing) a malformed set, one older than the newest applied, and
// one beyond the agent's capacity.
func (a *Agent) Sync(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	start := time.Now()
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	if !a.Ready() {
		return nil, refuse(http.StatusServiceUnavailable, "the agent is starting")
	}
	if err := validate(req); err != nil {
		return nil, err
	}

	a.mu.RLock()
	epoch, revision := a.epoch, a.revision
	current := make(map[string]api.SandboxStatus, len(a.sandboxes))
	for k, v := range a.sandboxes {
		current[k] = v
	}
	a.mu.RUnlock()
	if req.Epoch < epoch || (req.Epoch == epoch && req.Revision < revision) {
		return nil, refuse(http.StatusConflict, "sync epoch %d revision %d is older than the applied epoch %d revision %d", req.Epoch, req.Revision, epoch, revision)
	}
	if err := a.checkCapacity(req, current); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.epoch, a.revision = req.Epoch, req.Revision
	a.mu.Unlock()

	desired := make(map[string]bool, len(req.Sandboxes))
	for _, s := range req.Sandboxes {
		desired[s.UID] = true
	}
	// What is no longer desired is removed in the background: a new sandbox
	// never waits for an old one's container to go (its slot is free as soon
	// as it is not desired: the capacity check counts only the desired set).
	// Until its container is gone a sandbox stays in the status and in the
	// answer's Deleting, so the control plane knows the removal is not done.
	var deleting []string
	for uid := range current {
		if !desired[uid] {
			deleting = append(deleting, uid)
			a.startDelete(uid)
		}
	}
	sort.Strings(deleting)

	var wg sync.WaitGroup

	sem := make(chan struct{}, a.cfg.CreateParallelism)
	results := make([]api.SandboxStatus, len(req.Sandboxes))
	for i, spec := range req.Sandboxes {
		if st, ok := current[spec.UID]; ok {
			results[i] = st
			continue
		}
		wg.Add(1)
		go func(i int, spec api.SandboxSpec) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			t := time.Now()
			st := a.rt.CreateSandbox(ctx, spec)
			a.metrics.observeCreate(st, time.Since(t))
			a.mu.Lock()
			// An exit may have arrived while creating; keep the newer news.
			if prev, ok := a.sandboxes[spec.UID]; ok && prev.State != api.StateRunning {
				st = prev
			}
			a.sandboxes[spec.UID] = st
			a.mu.Unlock()
			results[i] = st
			a.log.V(1).Info("sandbox created", "uid", spec.UID, "name", spec.Namespace+"/"+spec.Name,
				"state", st.State, "reason", st.Reason, "duration", time.Since(t))
		}(i, spec)
	}
	wg.Wait()
	// Report the freshest state of every desired sandbox.
	a.mu.RLock()
	for i := range results {
		if st, ok := a.sandboxes[results[i].UID]; ok {
			results[i] = st
		}
	}
	a.mu.RUnlock()
	a.metrics.syncDuration.Observe(time.Since(start).Seconds())
	return &api.SyncResponse{Sandboxes: results, Deleting: deleting}, nil
}

// deleteTimeout bounds the removal of one sandbox.
const deleteTimeout = time.Minute

// startDelete removes a sandbox in the background, once at a time; a failed
// removal is retried by the next sync.
func (a *Agent) startDelete(uid string) {
	a.mu.Lock()
	if a.deleting[uid] {
		a.mu.Unlock()
		return
	}
	a.deleting[uid] = true
	name := a.sandboxes[uid].Namespace + "/" + a.sandboxes[uid].Name
	a.mu.Unlock()
	a.log.Info("removing a sandbox that is no longer desired", "uid", uid, "sandbox", name)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
		defer cancel()
		err := a.rt.DeleteSandbox(ctx, uid)
		a.mu.Lock()
		delete(a.deleting, uid)
		if err == nil {
			delete(a.sandboxes, uid)
		}
		a.mu.Unlock()
		if err != nil {
			a.log.Error(err, "deleting sandbox; the next sync retries", "uid", uid)
		}
	}()
}

func validate(req *api.SyncRequest) error {
	if len(req.Sandboxes) > api.MaxSandboxes {
		return refuse(http.StatusUnprocessableEntity, "%d sandboxes in one sync; at most %d", len(req.Sandboxes), api.MaxSandboxes)
	}
	seen := make(map[string]bool, len(req.Sandboxes))
	for i, s := range req.Sandboxes {
		field := fmt.Sprintf("sandboxes[%d]", i)
		switch {
		case !uidPattern.MatchString(s.UID):
			return refuse(http.StatusBadRequest, "%s.uid %q: must be 1-76 letters, digits, '-', '_' or '.'", field, s.UID)
		case seen[s.UID]:
			return refuse(http.StatusBadRequest, "%s.uid %q appears twice", field, s.UID)
		case s.Name == "" || s.Namespace == "":
			return refuse(http.StatusBadRequest, "%s: name and namespace are required", field)
		case s.Image == "":
			return refuse(http.StatusBadRequest, "%s.image is required", field)
		case s.CPUMillis < 0 || s.MemoryBytes < 0:
			return refuse(http.StatusBadRequest, "%s: cpuMillis and memoryBytes must not be negative", field)
		case s.NetworkMode != "" && s.NetworkMode != api.NetworkNone && s.NetworkMode != api.NetworkPod:
			return refuse(http.StatusBadRequest, "%s.networkMode %q: must be None or Pod", field, s.NetworkMode)
		}
		for j, e := range s.Env {
			if e.Name == "" {
				return refuse(http.StatusBadRequest, "%s.env[%d].name is required", field, j)
			}
		}
		seen[s.UID] = true
	}
	return nil
}

// checkCapacity refuses a desired set whose unfinished sandboxes need more
// slots, CPU or memory than the agent has. Finished sandboxes hold nothing.
func (a *Agent) checkCapacity(req *api.SyncRequest, current map[string]api.SandboxStatus) error {
	c := a.cfg.Capacity
	var need api.Resources
	for _, s := range req.Sandboxes {
		if st, ok := current[s.UID]; ok && st.State != api.StateRunning {
			continue
		}
		need.Slots++
		need.CPUMillis += s.CPUMillis
		need.MemoryBytes += s.MemoryBytes
		if c.CPUMillis > 0 && s.CPUMillis > c.CPUMillis {
			return refuse(http.StatusUnprocessableEntity, "sandbox %s/%s asks %dm CPU; the agent has %dm", s.Namespace, s.Name, s.CPUMillis, c.CPUMillis)
		}
		if c.MemoryBytes > 0 && s.MemoryBytes > c.MemoryBytes {
			return refuse(http.StatusUnprocessableEntity, "sandbox %s/%s asks %d bytes of memory; the agent has %d", s.Namespace, s.Name, s.MemoryBytes, c.MemoryBytes)
		}
	}
	switch {
	case c.Slots > 0 && need.Slots > c.Slots:
		return refuse(http.StatusUnprocessableEntity, "%d sandboxes need a slot; the agent has %d", need.Slots, c.Slots)
	case c.CPUMillis > 0 && need.CPUMillis > c.CPUMillis:
		return refuse(http.StatusUnprocessableEntity, "the sandboxes ask %dm CPU in all; the agent has %dm", need.CPUMillis, c.CPUMillis)
	case c.MemoryBytes > 0 && need.MemoryBytes > c.MemoryBytes:
		return refuse(http.StatusUnprocessableEntity, "the sandboxes ask %d bytes of memory in all; the agent has %d", need.MemoryBytes, c.MemoryBytes)
	}
	return nil
}

// Status reports the agent: capacity, allocation, sandboxes, images, health.
func (a *Agent) Status(ctx context.Context) *api.Status {
	images, err := a.rt.ListImages(ctx)
	healthy := err == nil && a.Ready()
	if err != nil {
		a.log.Error(err, "listing images")
	}
	a.mu.RLock()
	st := &api.Status{
		Agent: a.cfg.Info, Capacity: a.cfg.Capacity, Images: images, Healthy: healthy,
		Epoch: a.epoch, Revision: a.revision, Time: time.Now(),
		Sandboxes: make([]api.SandboxStatus, 0, len(a.sandboxes)),
	}
	for _, s := range a.sandboxes {
		st.Sandboxes = append(st.Sandboxes, s)
		if s.State == api.StateRunning {
			st.Allocated.Slots++
			st.Allocated.CPUMillis += s.CPUMillis
			st.Allocated.MemoryBytes += s.MemoryBytes
		}
	}
	a.mu.RUnlock()
	sort.Slice(st.Sandboxes, func(i, j int) bool { return st.Sandboxes[i].UID < st.Sandboxes[j].UID })
	if wl, ok := a.rt.(runtime.WarmLister); ok {
		st.Warm = wl.WarmContainers()
	}
	a.metrics.setSandboxes(st.Sandboxes)
	a.metrics.setWarm(st.Warm)
	return st
}

// Logs returns the output of a sandbox of this agent.
func (a *Agent) Logs(ctx context.Context, uid string) ([]byte, error) {
	a.mu.RLock()
	_, ok := a.sandboxes[uid]
	a.mu.RUnlock()
	if !ok {
		return nil, refuse(http.StatusNotFound, "no sandbox %q on this agent", uid)
	}
	rc, err := a.rt.Logs(ctx, uid)
	if errors.Is(err, runtime.ErrNotFound) {
		return nil, refuse(http.StatusNotFound, "sandbox %q has no logs", uid)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readLimited(rc, maxLogBytes)
}
