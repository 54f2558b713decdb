package poolcontroller

import (
	"errors"
	"testing"
	"time"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// TestMetrics: a reconcile counts by result and its duration is observed,
// on the registry /metrics serves.
func TestMetrics(t *testing.T) {
	counter := func(result string) float64 {
		t.Helper()
		v, err := testutil.GetCounterMetricValue(reconciles.WithLabelValues(result))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	durations := func() uint64 {
		t.Helper()
		vec, err := testutil.GetHistogramVecFromGatherer(legacyregistry.DefaultGatherer,
			"fast_sandbox_pool_controller_reconcile_duration_seconds", nil)
		if err != nil {
			return 0 // nothing observed yet
		}
		return vec.GetAggregatedSampleCount()
	}
	success, failure, observed := counter("success"), counter("error"), durations()

	observeReconcile(nil, time.Millisecond)
	observeReconcile(nil, time.Millisecond)
	observeReconcile(errors.New("boom"), time.Second)

	if got := counter("success") - success; got != 2 {
		t.Errorf("success reconciles counted %v, want 2", got)
	}
	if got := counter("error") - failure; got != 1 {
		t.Errorf("failed reconciles counted %v, want 1", got)
	}
	if got := durations() - observed; got != 3 {
		t.Errorf("durations observed %d, want 3", got)
	}

	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for _, f := range families {
		served[f.GetName()] = true
	}
	for _, name := range []string{
		"fast_sandbox_pool_controller_reconciles_total",
		"fast_sandbox_pool_controller_reconcile_duration_seconds",
		"process_start_time_seconds", "go_goroutines",
	} {
		if !served[name] {
			t.Errorf("legacyregistry does not serve %s", name)
		}
	}
}
