package agent

import (
	"testing"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/metricsdoc"
)

// TestReadmeListsServedMetrics: every series the README lists for the agent
// is in the registry its /metrics serves, with those labels, once each was
// recorded; and every fast_sandbox_agent_* series there is listed.
func TestReadmeListsServedMetrics(t *testing.T) {
	listed, err := metricsdoc.Listed("../../README.md", "agent")
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	m.syncDuration.Observe(0.01)
	m.observeCreate(api.SandboxStatus{State: api.StateRunning, Start: api.StartWarm}, time.Millisecond)
	m.setSandboxes(nil)
	m.setWarm(nil)
	m.requests.WithLabelValues("status", "200").Inc()
	m.observeExec(execExited, time.Millisecond)
	m.execServers.Set(1)
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range metricsdoc.Check(listed, metricsdoc.Served(families), "agent", "fast_sandbox_agent_") {
		t.Error(p)
	}
}
