package scheduler

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/fast-sandbox/fast-sandbox/pkg/metricsdoc"
)

// TestReadmeListsServedMetrics: every series the README lists for the
// scheduler is served, with those labels, by a scheduler that placed a
// sandbox; and every fast_sandbox_scheduler_* series served is listed.
func TestReadmeListsServedMetrics(t *testing.T) {
	listed, err := metricsdoc.Listed("../../README.md", "scheduler")
	if err != nil {
		t.Fatal(err)
	}
	pluginMetricsSamplePercent = 100 // no sampling: the plugin durations show
	t.Cleanup(func() { pluginMetricsSamplePercent = 10 })
	e := newEnv(t)
	e.addAgent("agent-a")
	e.addAgent("agent-b")
	stop := e.start(testOptions())
	e.createSandbox("s1")
	e.wait("s1", "Running", 5*time.Second, running)

	var served map[string]string
	// The plugin durations are flushed every second: wait for them, then
	// report whatever is still missing.
	_ = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
		families, err := legacyregistry.DefaultGatherer.Gather()
		if err != nil {
			return false, err
		}
		served = metricsdoc.Served(families)
		for name := range listed {
			if _, ok := served[name]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	stop()
	for _, p := range metricsdoc.Check(listed, served, "scheduler", "fast_sandbox_scheduler_") {
		t.Error(p)
	}
}
