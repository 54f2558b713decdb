package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// HealthConfig paces the agent's checks of its runtime.
type HealthConfig struct {
	// Period is how often the runtime is asked (default 2 seconds).
	Period time.Duration
	// Timeout bounds one check (default 5 seconds).
	Timeout time.Duration
	// ReadinessThreshold: the agent is not ready while its last check failed,
	// or when none succeeded for this long (default 10 seconds: a check
	// that hangs).
	ReadinessThreshold time.Duration
	// LivenessThreshold: the agent is not live once no check succeeded for
	// this long (default 30 seconds); kubelet then restarts it.
	LivenessThreshold time.Duration
}

// Defaults of HealthConfig.
const (
	DefaultHealthCheckPeriod  = 2 * time.Second
	DefaultHealthCheckTimeout = 5 * time.Second
	DefaultReadinessThreshold = 10 * time.Second
	DefaultLivenessThreshold  = 30 * time.Second
)

// healthFailureLogEvery spaces the logs of a runtime that keeps failing.
const healthFailureLogEvery = time.Minute

// Health follows whether the runtime answers, for the agent's probes: a
// background loop asks it (runtime.Pinger) and records the last success, so
// that /readyz and /healthz answer at once from memory. A runtime that is not
// a Pinger is taken as healthy.
//
// Readiness fails while the runtime does not answer, so that no sandbox is
// placed on an agent that cannot start it; liveness fails only after
// LivenessThreshold without an answer, as a last resort: a restarted agent
// dials the runtime anew, and adopts its sandboxes again.
type Health struct {
	cfg    HealthConfig
	pinger runtime.Pinger
	log    logr.Logger

	mu      sync.Mutex
	running bool      // Run started: until then, healthy
	lastOK  time.Time // last successful check (or Run's start)
	lastErr error     // of the last check; nil if it succeeded
	// failingSince is when the checks started failing (zero while they
	// succeed); loggedAt when a failure was last logged.
	failingSince, loggedAt time.Time
}

// NewHealth returns the health of rt; Run starts the checks.
func NewHealth(rt runtime.Runtime, cfg HealthConfig, log logr.Logger) *Health {
	if cfg.Period <= 0 {
		cfg.Period = DefaultHealthCheckPeriod
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultHealthCheckTimeout
	}
	if cfg.ReadinessThreshold <= 0 {
		cfg.ReadinessThreshold = DefaultReadinessThreshold
	}
	if cfg.LivenessThreshold <= 0 {
		cfg.LivenessThreshold = DefaultLivenessThreshold
	}
	p, _ := rt.(runtime.Pinger)
	return &Health{cfg: cfg, pinger: p, log: log}
}

// Run checks the runtime every Period until ctx ends. Call it once the
// runtime is initialized (after Agent.Start returned): until Run starts,
// and for LivenessThreshold after, the agent counts as live.
func (h *Health) Run(ctx context.Context) {
	if h.pinger == nil {
		return
	}
	h.mu.Lock()
	h.running, h.lastOK = true, time.Now()
	h.mu.Unlock()
	t := time.NewTicker(h.cfg.Period)
	defer t.Stop()
	for {
		h.check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *Health) check(ctx context.Context) {
	began := time.Now()
	cctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	err := h.pinger.Ping(cctx)
	cancel()
	if ctx.Err() != nil {
		return // stopping: no verdict
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastErr = err
	if err == nil {
		if !h.failingSince.IsZero() {
			h.log.Info("the runtime answers again", "after", now.Sub(h.failingSince).Round(time.Millisecond))
		}
		h.lastOK, h.failingSince, h.loggedAt = now, time.Time{}, time.Time{}
		return
	}
	if h.failingSince.IsZero() {
		h.failingSince = began
	}
	if h.loggedAt.IsZero() || now.Sub(h.loggedAt) >= healthFailureLogEvery {
		h.loggedAt = now
		h.log.Error(err, "the runtime does not answer", "since", h.failingSince, "lastSuccess", h.lastOK)
	}
}

// Ready returns why sandboxes should not be placed on the agent now: its
// last check of the runtime failed, or none succeeded for ReadinessThreshold.
func (h *Health) Ready() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		return nil
	}
	if h.lastErr != nil {
		return fmt.Errorf("the runtime does not answer: %w", h.lastErr)
	}
	if d := time.Since(h.lastOK); d > h.cfg.ReadinessThreshold {
		return fmt.Errorf("the runtime has not answered for %s", d.Round(time.Second))
	}
	return nil
}

// Live returns why the agent should be restarted: the runtime has not
// answered for LivenessThreshold.
func (h *Health) Live() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		return nil
	}
	if d := time.Since(h.lastOK); d > h.cfg.LivenessThreshold {
		err := h.lastErr
		if err == nil {
			err = errors.New("a check is still waiting for an answer")
		}
		return fmt.Errorf("the runtime has not answered for %s (more than %s): %w", d.Round(time.Second), h.cfg.LivenessThreshold, err)
	}
	return nil
}
