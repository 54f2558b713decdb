package poolcontroller

import (
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/fast-sandbox/fast-sandbox/pkg/metricsdoc"
)

// TestReadmeListsServedMetrics: every series the README lists for the pool
// controller is on the registry its /metrics serves, with those labels,
// once a controller reconciled a pool; and every
// fast_sandbox_pool_controller_* series there is listed.
func TestReadmeListsServedMetrics(t *testing.T) {
	listed, err := metricsdoc.Listed("../../README.md", "pool controller")
	if err != nil {
		t.Fatal(err)
	}
	e := newReconcileEnv(t)
	e.c.queue.Add("py")
	if !e.c.processNextWorkItem(e.ctx) {
		t.Fatal("the queue is shut down")
	}
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range metricsdoc.Check(listed, metricsdoc.Served(families), "pool controller", "fast_sandbox_pool_controller_") {
		t.Error(p)
	}
}
