package scheduler

import (
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"

	agentclient "github.com/fast-sandbox/fast-sandbox/pkg/agent/client"
)

var (
	syncs = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: "fast_sandbox", Subsystem: "scheduler", Name: "agent_syncs_total",
		Help: "Syncs sent to agents, by result (ok, conflict, refused, error).", StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	agentsLost = metrics.NewCounter(&metrics.CounterOpts{
		Namespace: "fast_sandbox", Subsystem: "scheduler", Name: "agents_lost_total",
		Help: "Agents declared lost after failing to answer their status calls.", StabilityLevel: metrics.ALPHA,
	})
	sandboxesLost = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: "fast_sandbox", Subsystem: "scheduler", Name: "sandboxes_agent_lost_total",
		Help: "Sandboxes whose agent was lost before they finished, by what was done (failed, recreated).", StabilityLevel: metrics.ALPHA,
	}, []string{"action"})
)

func init() {
	legacyregistry.MustRegister(syncs, agentsLost, sandboxesLost)
}

// syncResultLabel classifies a sync's error for the syncs metric.
func syncResultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case agentclient.IsConflict(err):
		return "conflict"
	case agentclient.IsRefused(err):
		return "refused"
	default:
		return "error"
	}
}
