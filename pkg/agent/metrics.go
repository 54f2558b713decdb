package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// metrics are the agent's Prometheus metrics, in a registry of its own.
type metrics struct {
	registry       *prometheus.Registry
	syncDuration   prometheus.Histogram
	createDuration *prometheus.HistogramVec
	sandboxes      *prometheus.GaugeVec
	warm           prometheus.Gauge
	requests       *prometheus.CounterVec
	execDuration   *prometheus.HistogramVec
	execServers    prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fast_sandbox_agent_sync_duration_seconds",
			Help:    "Time to converge to a desired set of sandboxes.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		createDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fast_sandbox_agent_sandbox_create_duration_seconds",
			Help:    "Time to start one sandbox, by outcome state and start (Warm: in a warm container, Cold: in a container created for it).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"state", "start"}),
		sandboxes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fast_sandbox_agent_sandboxes",
			Help: "Sandboxes on this agent, by state.",
		}, []string{"state"}),
		warm: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fast_sandbox_agent_warm_containers",
			Help: "Warm containers waiting for a sandbox.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fast_sandbox_agent_http_requests_total",
			Help: "API requests, by route and status code.",
		}, []string{"route", "code"}),
		execDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fast_sandbox_agent_exec_duration_seconds",
			Help: "Time from an exec's start in the runtime to its command's exit, by outcome (exited: the command ran, " +
				"whatever its exit code; not_started: it could not be started; error: the exec failed or its client left).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"outcome"}),
		execServers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fast_sandbox_agent_exec_servers",
			Help: "Exec servers running in this agent's sandboxes (each runs its sandbox's execs without runc exec).",
		}),
	}
	m.registry.MustRegister(m.syncDuration, m.createDuration, m.sandboxes, m.warm, m.requests, m.execDuration, m.execServers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeCreate(st api.SandboxStatus, d time.Duration) {
	m.createDuration.WithLabelValues(string(st.State), st.Start).Observe(d.Seconds())
}

// Outcomes of an exec (fast_sandbox_agent_exec_duration_seconds).
const (
	execExited     = "exited"
	execNotStarted = "not_started"
	execFailed     = "error"
)

func (m *metrics) observeExec(outcome string, d time.Duration) {
	m.execDuration.WithLabelValues(outcome).Observe(d.Seconds())
}

func (m *metrics) setWarm(warm []api.WarmImage) {
	n := 0
	for _, w := range warm {
		n += w.Count
	}
	m.warm.Set(float64(n))
}

func (m *metrics) setSandboxes(all []api.SandboxStatus) {
	counts := map[api.SandboxState]int{api.StateCreating: 0, api.StateRunning: 0, api.StatePaused: 0, api.StateExited: 0, api.StateFailed: 0}
	for _, s := range all {
		counts[s.State]++
	}
	for state, n := range counts {
		m.sandboxes.WithLabelValues(string(state)).Set(float64(n))
	}
}
