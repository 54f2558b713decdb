package poolcontroller

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.observe(nil, time.Millisecond)
	m.observe(nil, time.Millisecond)
	m.observe(errors.New("boom"), time.Second)
	var nilMetrics *Metrics
	nilMetrics.observe(nil, time.Second) // metrics are optional

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			switch {
			case metric.GetCounter() != nil:
				got[f.GetName()+"/"+metric.GetLabel()[0].GetValue()] = metric.GetCounter().GetValue()
			case metric.GetHistogram() != nil:
				got[f.GetName()] = float64(metric.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"fast_sandbox_pool_controller_reconciles_total/success":   2,
		"fast_sandbox_pool_controller_reconciles_total/error":     1,
		"fast_sandbox_pool_controller_reconcile_duration_seconds": 3,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
