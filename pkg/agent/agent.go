// Package agent is the daemon of an agent Pod: it keeps the set of sandboxes
// that the control plane wants on this agent, creating, stopping and deleting
// them through a runtime, and answers for their state.
//
// A sync is refused as a whole (4xx, nothing changes) only when the request
// itself is at fault: undecodable, a UID listed twice, more than
// api.MaxSandboxes specs or api.MaxFinished finished UIDs, or older than the
// newest sync applied (409, with the applied epoch and revision). Anything
// wrong with one sandbox (a malformed or oversized spec, no room for it) fails
// that sandbox alone, in the answer and in the status, and the rest of the
// set is applied.
//
// Creations run in the background, each under its own context, so a slow one
// (an image pull) never holds up a sync: a sync decides under a lock, starts
// what it must, then waits a bounded time (Config.SyncWait) for its creations
// and answers Creating for those still under way; their outcome shows in the
// status.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// Config is what the agent knows of itself and how it paces its work.
type Config struct {
	Info api.AgentInfo
	// Capacity bounds what the desired set may ask: slots, and the CPU and
	// memory of the agent Pod (0 means unbounded).
	Capacity api.Resources
	// CreateParallelism bounds the sandboxes the agent creates at once
	// (default 16); further creations wait their turn, reported as Creating.
	CreateParallelism int
	// CreateTimeout bounds the creation of one sandbox, image pull included
	// (default 10 minutes).
	CreateTimeout time.Duration
	// SyncWait is how long a sync waits for its creations before answering
	// Creating for those still under way (default 5 seconds).
	SyncWait time.Duration
	// ImageRefreshPeriod is how often the agent lists the node's images for
	// its status (default 5 seconds). A listing may take up to two periods;
	// the agent is healthy while its last success is at most three periods old.
	ImageRefreshPeriod time.Duration
	// IdleCheckPeriod is how often the agent looks for sandboxes idle for
	// their IdleTimeoutSeconds (default 1 second).
	IdleCheckPeriod time.Duration
	// Clock measures activity and idleness; the real clock when nil.
	Clock clock.WithTicker
}

// Defaults of Config.
const (
	DefaultCreateParallelism  = 16
	DefaultCreateTimeout      = 10 * time.Minute
	DefaultSyncWait           = 5 * time.Second
	DefaultImageRefreshPeriod = 5 * time.Second
)

// Agent converges the runtime to the desired set of sandboxes.
type Agent struct {
	cfg       Config
	rt        runtime.Runtime
	log       logr.Logger
	metrics   *metrics
	createSem chan struct{} // one token per creation running in the runtime

	syncMu sync.Mutex // one sync's decisions at a time

	mu sync.RWMutex
	// sandboxes are those the runtime has (created, adopted, or failed to
	// create), by UID.
	sandboxes map[string]api.SandboxStatus
	// creating are the creations under way, by UID; a UID is in sandboxes
	// only if an exit was reported before its creation returned.
	creating map[string]*creation
	deleting map[string]bool // UIDs whose removal runs
	stopping map[string]bool // UIDs whose StopSandbox runs
	// rejected are the sandboxes of the last applied sync that the agent
	// refused one by one (InvalidSpec, NoCapacity); they are reported until a
	// sync leaves them out or admits them.
	rejected []api.SandboxStatus
	// controls are the pause and idle state of sandboxes, by UID (pause.go).
	controls map[string]*control
	epoch    int64
	revision int64

	// The node's images, refreshed in the background (see refreshImages).
	images   []api.Image
	imagesOK time.Time // last successful listing

	baseCtx context.Context // parent of creations: ends when the agent stops
	clock   clock.WithTicker
	ready   atomic.Bool
}

// creation is one sandbox being created.
type creation struct {
	spec api.SandboxSpec
	done chan struct{} // closed once the outcome is in sandboxes
	// Set by syncs under Agent.mu: what to do with the sandbox once created.
	dropped  bool // no longer desired: remove it
	finished bool // in Finished: stop it
}

// New returns an agent over a runtime; Start makes it ready.
func New(cfg Config, rt runtime.Runtime, log logr.Logger) *Agent {
	if cfg.CreateParallelism <= 0 {
		cfg.CreateParallelism = DefaultCreateParallelism
	}
	if cfg.CreateTimeout <= 0 {
		cfg.CreateTimeout = DefaultCreateTimeout
	}
	if cfg.SyncWait <= 0 {
		cfg.SyncWait = DefaultSyncWait
	}
	if cfg.ImageRefreshPeriod <= 0 {
		cfg.ImageRefreshPeriod = DefaultImageRefreshPeriod
	}
	if cfg.IdleCheckPeriod <= 0 {
		cfg.IdleCheckPeriod = DefaultIdleCheckPeriod
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Agent{cfg: cfg, rt: rt, log: log, metrics: newMetrics(),
		createSem: make(chan struct{}, cfg.CreateParallelism),
		sandboxes: map[string]api.SandboxStatus{}, creating: map[string]*creation{},
		deleting: map[string]bool{}, stopping: map[string]bool{}, controls: map[string]*control{},
		baseCtx: context.Background(), clock: cfg.Clock}
}

// Start initializes the runtime, adopts the sandboxes it already has (from
// before a restart) and lists the node's images once. Adopted sandboxes are
// kept until the next sync says whether they are still desired (and, for a
// paused one, why it is paused). Until ctx ends it then follows sandbox
// exits, refreshes the image list and looks for idle sandboxes; creations
// under way are cancelled when ctx ends.
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
	a.baseCtx = ctx
	for _, s := range existing {
		if s.State != api.StatePaused {
			s.PauseReason = "" // the agent's to say
		}
		a.sandboxes[s.UID] = s
		a.controlOf(s.UID)
	}
	a.mu.Unlock()
	// The first status carries the images; a failure here is not fatal (the
	// status says unhealthy until a listing succeeds).
	a.refreshImages(ctx)
	go a.followImages(ctx)
	a.log.Info("agent ready", "adopted", len(existing), "runtime", info.Runtime, "cgroupParent", info.CgroupParent)
	go a.followExits(ctx)
	go a.followIdle(ctx)
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
			// asked to delete; one may exit before its creation returned
			// (then create keeps this newer news). An exit of a sandbox the
			// agent no longer knows (removed meanwhile) is dropped.
			a.mu.Lock()
			_, known := a.sandboxes[st.UID]
			if known || a.creating[st.UID] != nil {
				a.sandboxes[st.UID] = st
			}
			a.mu.Unlock()
			a.log.V(2).Info("sandbox exited", "uid", st.UID, "name", st.Name, "exitCode", st.ExitCode, "reason", st.Reason, "known", known)
		}
	}
}

// followImages refreshes the image list every ImageRefreshPeriod.
func (a *Agent) followImages(ctx context.Context) {
	t := time.NewTicker(a.cfg.ImageRefreshPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.refreshImages(ctx)
		}
	}
}

// refreshImages lists the node's images, bounded by two periods, and keeps
// the list for Status (which never waits on the runtime for it).
func (a *Agent) refreshImages(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*a.cfg.ImageRefreshPeriod)
	defer cancel()
	images, err := a.rt.ListImages(ctx)
	a.mu.Lock()
	if err == nil {
		a.images, a.imagesOK = images, time.Now()
	}
	a.mu.Unlock()
	if err != nil && ctx.Err() != context.Canceled {
		a.log.Error(err, "listing images")
	}
}

// RequestError is a request the agent refuses; Code is the HTTP status.
type RequestError struct {
	Code    int
	Message string
	// AppliedEpoch and AppliedRevision, on a 409 to a stale sync, are those
	// of the newest sync applied.
	AppliedEpoch, AppliedRevision int64
}

func (e *RequestError) Error() string { return e.Message }

func refuse(code int, format string, args ...any) error {
	return &RequestError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// uidPattern accepts Kubernetes UIDs and similar IDs, safe in container IDs and paths.
var uidPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,75}$`)

// Sync makes the agent run exactly the desired set, and answers the state of
// each desired sandbox in the request's order:
//
//   - A sandbox the agent has (running, exited, failed, or being created) is
//     left as it is and reported; its spec is not checked again.
//   - A new sandbox whose spec is malformed or larger than
//     api.MaxSandboxSpecBytes is never created: Failed, InvalidSpec.
//   - New sandboxes are admitted in the request's order, each if the slots,
//     CPU and memory left after the running and creating sandboxes the agent
//     keeps and the sandboxes admitted before it allow; one that does not fit
//     is Failed, NoCapacity (a later, smaller one may still fit). Exited and
//     failed sandboxes, and Finished ones, hold nothing.
//   - Admitted sandboxes are created in the background; the answer waits up
//     to Config.SyncWait for them and says Creating for those still under way.
//   - Finished UIDs are never created; one the agent has that still runs is
//     stopped in the background, keeping its container and logs.
//   - Any other sandbox of the agent is removed in the background (once its
//     creation ended, if under way) and listed in Deleting until it is gone.
//
// A sync refused as a whole (RequestError) changes nothing.
func (a *Agent) Sync(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	start := time.Now()
	if err := validateRequest(req); err != nil {
		return nil, err
	}
	resp, waits, err := a.apply(req)
	if err != nil {
		return nil, err
	}
	// Wait for the creations, pauses and resumes, but only so long: the rest
	// is answered as it is and goes on in the background.
	timer := time.NewTimer(a.cfg.SyncWait)
	defer timer.Stop()
wait:
	for _, done := range waits {
		select {
		case <-done:
		case <-timer.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	// Report the freshest state of every desired sandbox.
	now := a.clock.Now()
	a.mu.RLock()
	for i, st := range resp.Sandboxes {
		if st.State == api.StateFailed && (st.Reason == api.ReasonInvalidSpec || st.Reason == api.ReasonNoCapacity) {
			continue // refused by this sync; nothing of the agent's
		}
		if cur, ok := a.sandboxes[st.UID]; ok {
			resp.Sandboxes[i] = a.decorate(cur, now)
		} else if c := a.creating[st.UID]; c != nil {
			resp.Sandboxes[i] = creatingStatus(c.spec)
		}
	}
	a.mu.RUnlock()
	a.metrics.syncDuration.Observe(time.Since(start).Seconds())
	return resp, nil
}

// apply checks the sync's order and applies its decisions under syncMu: it
// starts creations, pauses, resumes, stops and removals, and returns the
// answer so far with the creations, pauses and resumes it should wait for.
func (a *Agent) apply(req *api.SyncRequest) (*api.SyncResponse, []<-chan struct{}, error) {
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	if !a.Ready() {
		return nil, nil, refuse(http.StatusServiceUnavailable, "the agent is starting")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if req.Epoch < a.epoch || (req.Epoch == a.epoch && req.Revision < a.revision) {
		return nil, nil, &RequestError{Code: http.StatusConflict,
			Message:      fmt.Sprintf("sync epoch %d revision %d is older than the applied epoch %d revision %d", req.Epoch, req.Revision, a.epoch, a.revision),
			AppliedEpoch: a.epoch, AppliedRevision: a.revision}
	}
	a.epoch, a.revision = req.Epoch, req.Revision

	// What the sandboxes the agent keeps hold: those running (or paused) or
	// being created (exited and failed ones hold nothing).
	var used api.Resources
	for _, s := range req.Sandboxes {
		if c := a.creating[s.UID]; c != nil {
			if st, ok := a.sandboxes[s.UID]; !ok || alive(st) {
				used = addSpec(used, s)
			}
		} else if st, ok := a.sandboxes[s.UID]; ok && alive(st) {
			used = addSpec(used, s)
		}
	}

	resp := &api.SyncResponse{Sandboxes: make([]api.SandboxStatus, len(req.Sandboxes))}
	var waits []<-chan struct{}
	a.rejected = nil
	desired := make(map[string]bool, len(req.Sandboxes))
	for i, s := range req.Sandboxes {
		desired[s.UID] = true
		c := a.creating[s.UID]
		st, ok := a.sandboxes[s.UID]
		if c != nil || ok {
			// Paused, IdleTimeoutSeconds and IdlePolicy are the fields of a
			// spec that change; the sandbox converges to them.
			a.setControl(s)
		}
		switch {
		case c != nil: // wait on that creation, whoever started it
			c.dropped, c.finished = false, false
			waits = append(waits, c.done)
			resp.Sandboxes[i] = creatingStatus(c.spec)
		case ok:
			if a.wantsConverge(s.UID) {
				waits = append(waits, a.startConverge(s.UID))
			}
			resp.Sandboxes[i] = st
		default:
			if msg := checkSpec(i, &s); msg != "" {
				resp.Sandboxes[i] = a.reject(s, api.ReasonInvalidSpec, msg)
				continue
			}
			if msg := a.fits(s, used); msg != "" {
				resp.Sandboxes[i] = a.reject(s, api.ReasonNoCapacity, msg)
				continue
			}
			used = addSpec(used, s)
			a.setControl(s)
			c := a.startCreate(s)
			waits = append(waits, c.done)
			resp.Sandboxes[i] = creatingStatus(s)
		}
	}

	finished := make(map[string]bool, len(req.Finished))
	for _, uid := range req.Finished {
		finished[uid] = true
		if c := a.creating[uid]; c != nil {
			c.dropped, c.finished = false, true
		} else if st, ok := a.sandboxes[uid]; ok && alive(st) && !a.deleting[uid] {
			a.startStop(uid)
		}
	}

	// What is neither desired nor finished is removed in the background: a
	// new sandbox never waits for an old one's container to go (its slot is
	// free as soon as it is not desired). Until its container is gone a
	// sandbox stays in the status and in the answer's Deleting, so the
	// control plane knows the removal is not done.
	for uid := range a.sandboxes {
		if desired[uid] || (finished[uid] && !a.deleting[uid]) {
			continue // kept (a finished one whose removal began goes on)
		}
		resp.Deleting = append(resp.Deleting, uid)
		if a.creating[uid] == nil {
			a.startDelete(uid)
		}
	}
	for uid, c := range a.creating {
		if !desired[uid] && !finished[uid] {
			c.dropped, c.finished = true, false
			if _, ok := a.sandboxes[uid]; !ok {
				resp.Deleting = append(resp.Deleting, uid)
			}
		}
	}
	sort.Strings(resp.Deleting)
	// Forget the pause and idle state of sandboxes the agent no longer has.
	for uid := range a.controls {
		if _, ok := a.sandboxes[uid]; !ok && a.creating[uid] == nil {
			delete(a.controls, uid)
		}
	}
	return resp, waits, nil
}

// addSpec is r plus what one sandbox holds.
func addSpec(r api.Resources, s api.SandboxSpec) api.Resources {
	r.Slots++
	r.CPUMillis += s.CPUMillis
	r.MemoryBytes += s.MemoryBytes
	return r
}

// fits says why a new sandbox does not fit beside what is used ("" if it does).
func (a *Agent) fits(s api.SandboxSpec, used api.Resources) string {
	c := a.cfg.Capacity
	name := short(s.Namespace + "/" + s.Name)
	switch {
	case c.CPUMillis > 0 && s.CPUMillis > c.CPUMillis:
		return fmt.Sprintf("sandbox %s asks %dm CPU; the agent has %dm", name, s.CPUMillis, c.CPUMillis)
	case c.MemoryBytes > 0 && s.MemoryBytes > c.MemoryBytes:
		return fmt.Sprintf("sandbox %s asks %d bytes of memory; the agent has %d", name, s.MemoryBytes, c.MemoryBytes)
	case c.Slots > 0 && used.Slots+1 > c.Slots:
		return fmt.Sprintf("sandbox %s needs a slot; the agent's %d slots are taken", name, c.Slots)
	case c.CPUMillis > 0 && used.CPUMillis+s.CPUMillis > c.CPUMillis:
		return fmt.Sprintf("sandbox %s asks %dm CPU; the agent has %dm, %dm of it taken", name, s.CPUMillis, c.CPUMillis, used.CPUMillis)
	case c.MemoryBytes > 0 && used.MemoryBytes+s.MemoryBytes > c.MemoryBytes:
		return fmt.Sprintf("sandbox %s asks %d bytes of memory; the agent has %d, %d of it taken", name, s.MemoryBytes, c.MemoryBytes, used.MemoryBytes)
	}
	return ""
}

// reject records a sandbox this sync refused alone, for the answer and the
// status. Called with mu held.
func (a *Agent) reject(s api.SandboxSpec, reason, msg string) api.SandboxStatus {
	st := api.SandboxStatus{UID: s.UID, Namespace: s.Namespace, Name: s.Name, State: api.StateFailed, Reason: reason, Message: msg}
	a.rejected = append(a.rejected, st)
	a.log.V(1).Info("sandbox refused", "uid", short(s.UID), "sandbox", short(s.Namespace+"/"+s.Name), "reason", reason, "message", msg)
	return st
}

// creatingStatus is the status of a sandbox whose creation is under way.
func creatingStatus(s api.SandboxSpec) api.SandboxStatus {
	return api.SandboxStatus{UID: s.UID, Namespace: s.Namespace, Name: s.Name, State: api.StateCreating,
		CPUMillis: s.CPUMillis, MemoryBytes: s.MemoryBytes}
}

// startCreate creates a sandbox in the background under a context of its own
// (the agent's, bounded by CreateTimeout), at most CreateParallelism at once.
// Called with mu held, for a UID neither in sandboxes nor in creating, so
// there is never more than one creation of a UID.
func (a *Agent) startCreate(spec api.SandboxSpec) *creation {
	c := &creation{spec: spec, done: make(chan struct{})}
	a.creating[spec.UID] = c
	ctx := a.baseCtx
	go a.create(ctx, c)
	return c
}

func (a *Agent) create(ctx context.Context, c *creation) {
	spec := c.spec
	var st api.SandboxStatus
	var t time.Time
	select {
	case a.createSem <- struct{}{}:
		t = time.Now()
		cctx, cancel := context.WithTimeout(ctx, a.cfg.CreateTimeout)
		st = a.rt.CreateSandbox(cctx, spec)
		cancel()
		<-a.createSem
		a.metrics.observeCreate(st, time.Since(t))
	case <-ctx.Done():
		t = time.Now()
		st = api.SandboxStatus{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, State: api.StateFailed,
			Reason: api.ReasonCreateFailed, Message: "the agent stopped before creating the sandbox"}
	}

	a.mu.Lock()
	// An exit may have arrived while creating; keep the newer news.
	if prev, ok := a.sandboxes[spec.UID]; ok && prev.State != api.StateRunning {
		st = prev
	}
	if st.State == api.StateFailed && st.Reason == api.ReasonRuntimeUnavailable && !c.dropped && !c.finished {
		// The runtime could not be reached before the command could run:
		// not the sandbox's outcome. Nothing is recorded, so the sandbox is
		// not reported and the control plane's next sync creates it again;
		// the runtime settles whatever this attempt left.
		delete(a.creating, spec.UID)
		a.mu.Unlock()
		close(c.done)
		a.log.Info("the runtime is unavailable; the next sync creates the sandbox again", "uid", spec.UID,
			"name", spec.Namespace+"/"+spec.Name, "message", st.Message)
		return
	}
	a.sandboxes[spec.UID] = st
	delete(a.creating, spec.UID)
	switch {
	case c.dropped:
		a.startDelete(spec.UID)
	case c.finished && st.State == api.StateRunning:
		a.startStop(spec.UID)
	case st.State == api.StateRunning:
		// The idle timeout counts from now; a sync may have asked to
		// pause it meanwhile.
		ctl := a.controlOf(spec.UID)
		if !ctl.hadActivity {
			ctl.last = a.clock.Now()
		}
		if a.wantsConverge(spec.UID) {
			a.startConverge(spec.UID)
		}
	}
	a.mu.Unlock()
	close(c.done)
	a.log.V(1).Info("sandbox created", "uid", spec.UID, "name", spec.Namespace+"/"+spec.Name,
		"state", st.State, "reason", st.Reason, "duration", time.Since(t), "dropped", c.dropped)
}

// Timeouts of a background stop and removal of one sandbox.
const (
	stopTimeout   = time.Minute
	deleteTimeout = time.Minute
)

// startStop stops a finished sandbox's process in the background, once at a
// time, keeping its container and logs; its exit comes as any other. A
// failed stop is retried by the next sync. Called with mu held.
func (a *Agent) startStop(uid string) {
	if a.stopping[uid] {
		return
	}
	a.stopping[uid] = true
	name := a.sandboxes[uid].Namespace + "/" + a.sandboxes[uid].Name
	a.log.Info("stopping a finished sandbox", "uid", uid, "sandbox", name)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		err := a.rt.StopSandbox(ctx, uid)
		a.mu.Lock()
		delete(a.stopping, uid)
		a.mu.Unlock()
		if err != nil {
			a.log.Error(err, "stopping sandbox; the next sync retries", "uid", uid)
		}
	}()
}

// startDelete removes a sandbox in the background, once at a time; a failed
// removal is retried by the next sync. Called with mu held.
func (a *Agent) startDelete(uid string) {
	if a.deleting[uid] {
		return
	}
	a.deleting[uid] = true
	name := a.sandboxes[uid].Namespace + "/" + a.sandboxes[uid].Name
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

// validateRequest refuses a sync whose fault is the request's, not one
// sandbox's: too many specs or finished UIDs, or a UID listed twice (in
// Sandboxes, or in both Sandboxes and Finished).
func validateRequest(req *api.SyncRequest) error {
	if len(req.Sandboxes) > api.MaxSandboxes {
		return refuse(http.StatusUnprocessableEntity, "%d sandboxes in one sync; at most %d", len(req.Sandboxes), api.MaxSandboxes)
	}
	if len(req.Finished) > api.MaxFinished {
		return refuse(http.StatusUnprocessableEntity, "%d finished UIDs in one sync; at most %d", len(req.Finished), api.MaxFinished)
	}
	seen := make(map[string]bool, len(req.Sandboxes))
	for i, s := range req.Sandboxes {
		if seen[s.UID] {
			return refuse(http.StatusBadRequest, "sandboxes[%d].uid %q appears twice", i, short(s.UID))
		}
		seen[s.UID] = true
	}
	for i, uid := range req.Finished {
		if seen[uid] {
			return refuse(http.StatusBadRequest, "finished[%d] %q appears twice: also in sandboxes", i, short(uid))
		}
	}
	return nil
}

// checkSpec says what is wrong with sandboxes[i] ("" if nothing), naming the field.
func checkSpec(i int, s *api.SandboxSpec) string {
	field := fmt.Sprintf("sandboxes[%d]", i)
	switch {
	case !uidPattern.MatchString(s.UID):
		return fmt.Sprintf("%s.uid %q: must be 1-76 letters, digits, '-', '_' or '.'", field, short(s.UID))
	case s.Name == "":
		return field + ".name is required"
	case s.Namespace == "":
		return field + ".namespace is required"
	case s.Image == "":
		return field + ".image is required"
	case s.CPUMillis < 0:
		return fmt.Sprintf("%s.cpuMillis %d: must not be negative", field, s.CPUMillis)
	case s.MemoryBytes < 0:
		return fmt.Sprintf("%s.memoryBytes %d: must not be negative", field, s.MemoryBytes)
	case s.PidsLimit < 0:
		return fmt.Sprintf("%s.pidsLimit %d: must not be negative", field, s.PidsLimit)
	case s.EphemeralStorageBytes < 0:
		return fmt.Sprintf("%s.ephemeralStorageBytes %d: must not be negative", field, s.EphemeralStorageBytes)
	case s.NetworkMode != "" && s.NetworkMode != api.NetworkNone && s.NetworkMode != api.NetworkEgress:
		return fmt.Sprintf("%s.networkMode %q: must be None or Egress", field, short(s.NetworkMode))
	}
	for j, e := range s.Env {
		if e.Name == "" {
			return fmt.Sprintf("%s.env[%d].name is required", field, j)
		}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Sprintf("%s: %v", field, err)
	}
	if len(b) > api.MaxSandboxSpecBytes {
		return fmt.Sprintf("%s is %d bytes as JSON; at most %d", field, len(b), api.MaxSandboxSpecBytes)
	}
	return ""
}

// short cuts a string quoted in a message or a log line.
func short(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// Status reports the agent: capacity, allocation, sandboxes, images, health.
// It never waits on the runtime for images: it answers the last listing.
func (a *Agent) Status(ctx context.Context) *api.Status {
	now := a.clock.Now()
	a.mu.RLock()
	healthy := a.Ready() && !a.imagesOK.IsZero() && time.Since(a.imagesOK) <= 3*a.cfg.ImageRefreshPeriod
	st := &api.Status{
		Agent: a.cfg.Info, Capacity: a.cfg.Capacity, Images: a.images, Healthy: healthy,
		Epoch: a.epoch, Revision: a.revision, Time: time.Now(),
		Sandboxes: make([]api.SandboxStatus, 0, len(a.sandboxes)+len(a.creating)+len(a.rejected)),
	}
	hold := func(s api.SandboxStatus) {
		st.Allocated.Slots++
		st.Allocated.CPUMillis += s.CPUMillis
		st.Allocated.MemoryBytes += s.MemoryBytes
	}
	for _, s := range a.sandboxes {
		st.Sandboxes = append(st.Sandboxes, a.decorate(s, now))
		if alive(s) {
			hold(s)
		}
	}
	for uid, c := range a.creating {
		if _, ok := a.sandboxes[uid]; !ok {
			s := creatingStatus(c.spec)
			st.Sandboxes = append(st.Sandboxes, s)
			hold(s)
		}
	}
	for _, s := range a.rejected {
		if _, ok := a.sandboxes[s.UID]; !ok && a.creating[s.UID] == nil {
			st.Sandboxes = append(st.Sandboxes, s)
		}
	}
	a.mu.RUnlock()
	if st.Images == nil {
		st.Images = []api.Image{}
	}
	sort.Slice(st.Sandboxes, func(i, j int) bool { return st.Sandboxes[i].UID < st.Sandboxes[j].UID })
	if wl, ok := a.rt.(runtime.WarmLister); ok {
		st.Warm = wl.WarmContainers()
	}
	a.metrics.setSandboxes(st.Sandboxes)
	a.metrics.setWarm(st.Warm)
	if ec, ok := a.rt.(runtime.ExecServerCounter); ok {
		a.metrics.execServers.Set(float64(ec.ExecServers()))
	}
	return st
}

// Logs returns the output of a sandbox of this agent (being created, running,
// finished or being removed).
func (a *Agent) Logs(ctx context.Context, uid string) ([]byte, error) {
	a.mu.RLock()
	_, ok := a.sandboxes[uid]
	ok = ok || a.creating[uid] != nil
	a.mu.RUnlock()
	if !ok {
		return nil, refuse(http.StatusNotFound, "no sandbox %q on this agent", short(uid))
	}
	rc, err := a.rt.Logs(ctx, uid)
	if errors.Is(err, runtime.ErrNotFound) {
		return nil, refuse(http.StatusNotFound, "sandbox %q has no logs", uid)
	}
	if err != nil {
		return nil, err
	}
	defer func() { _ = rc.Close() }()
	return readTail(rc, maxLogBytes)
}
