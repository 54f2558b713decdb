package poolcontroller

import (
	"time"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
	// The workqueue_* series of the pools queue, on legacyregistry.
	_ "k8s.io/component-base/metrics/prometheus/workqueue"
)

// The controller's metrics, on component-base's legacyregistry (served by
// legacyregistry.Handler, with the Go and process collectors), as the
// scheduler's are.
var (
	reconciles = metrics.NewCounterVec(&metrics.CounterOpts{
		Namespace: "fast_sandbox", Subsystem: "pool_controller", Name: "reconciles_total",
		Help: "Reconciles of SandboxPools, by result (success or error).", StabilityLevel: metrics.ALPHA,
	}, []string{"result"})
	reconcileDuration = metrics.NewHistogram(&metrics.HistogramOpts{
		Namespace: "fast_sandbox", Subsystem: "pool_controller", Name: "reconcile_duration_seconds",
		Help:    "How long one reconcile of a SandboxPool took.",
		Buckets: metrics.ExponentialBuckets(0.001, 2, 15), StabilityLevel: metrics.ALPHA,
	})
)

func init() {
	legacyregistry.MustRegister(reconciles, reconcileDuration)
	// Both results are served from the start, at 0.
	reconciles.WithLabelValues("success")
	reconciles.WithLabelValues("error")
}

// observeReconcile records one reconcile's result and duration.
func observeReconcile(err error, took time.Duration) {
	result := "success"
	if err != nil {
		result = "error"
	}
	reconciles.WithLabelValues(result).Inc()
	reconcileDuration.Observe(took.Seconds())
}
