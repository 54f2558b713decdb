package scheduler

import (
	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
	// The workqueue_* series of the sandboxes queue, on legacyregistry.
	_ "k8s.io/component-base/metrics/prometheus/workqueue"

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

// pluginMetricsSamplePercent is the share of scheduling cycles that record
// each plugin's duration, as in kube-scheduler.
var pluginMetricsSamplePercent = 10

func init() {
	legacyregistry.MustRegister(syncs, agentsLost, sandboxesLost)
	// Every label value is served from the start, at 0, so that rates
	// over them exist before the first event.
	for _, result := range []string{"ok", "conflict", "refused", "error"} {
		syncs.WithLabelValues(result)
	}
	for _, action := range []string{"failed", "recreated"} {
		sandboxesLost.WithLabelValues(action)
	}
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
