// Command scheduler places Sandboxes on agent slots with the kube-scheduler
// framework and tells the chosen agents what to run.
package main

import (
	"context"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/scheduler"
)

const leaseName = "fast-sandbox-scheduler"

type options struct {
	kubeconfig       string
	config           string
	qps              float32
	burst            int
	statusPeriod     time.Duration
	agentLostTimeout time.Duration
	agentLostTries   int
	syncTimeout      time.Duration
	sweepPeriod      time.Duration
	metricsAddr      string
	leaderElect      bool
	leaseNamespace   string
	systemNamespace  string
}

func main() {
	o := &options{}
	cli.Main(cli.Component{
		Name:  "scheduler",
		Short: "Places Sandboxes on agent slots with the kube-scheduler framework.",
		AddFlags: func(fs *pflag.FlagSet) {
			fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
			fs.StringVar(&o.config, "config", "", "KubeSchedulerConfiguration file (kubescheduler.config.k8s.io/v1); built-in default when empty")
			fs.Float32Var(&o.qps, "kube-api-qps", 200, "QPS to the API server: every bind writes the Sandbox three times")
			fs.IntVar(&o.burst, "kube-api-burst", 400, "burst to the API server")
			fs.DurationVar(&o.statusPeriod, "agent-status-period", time.Second, "how often agents are asked for their status")
			fs.DurationVar(&o.agentLostTimeout, "agent-lost-timeout", 20*time.Second, "how long an agent may stay silent (with at least --agent-lost-attempts failed status calls) before it is lost: its sandboxes fail with AgentLost or, under failurePolicy AutoRecreate, are placed again")
			fs.IntVar(&o.agentLostTries, "agent-lost-attempts", 5, "consecutive failed status calls before an agent can be lost")
			fs.DurationVar(&o.syncTimeout, "agent-sync-timeout", time.Minute, "bound on one sync call to an agent")
			fs.DurationVar(&o.sweepPeriod, "lost-sweep-period", 2*time.Second, "how often every bound sandbox is checked against the live agents")
			fs.StringVar(&o.metricsAddr, "metrics-addr", ":10351", "address of /metrics and /healthz")
			fs.BoolVar(&o.leaderElect, "leader-elect", true, "run only while holding the leader lease")
			fs.StringVar(&o.leaseNamespace, "leader-elect-namespace", v1alpha1.DefaultSystemNamespace, "namespace of the leader lease")
			fs.StringVar(&o.systemNamespace, "system-namespace", v1alpha1.DefaultSystemNamespace,
				"namespace of the agent Pods and of the scheduler's agent client credentials; a Pod elsewhere is never taken for an agent")
		},
		Run: func(ctx context.Context, logger logr.Logger) error { return run(ctx, logger, o) },
	})
}

func run(ctx context.Context, logger logr.Logger, o *options) error {
	cfg, err := scheduler.LoadConfig(o.config)
	if err != nil {
		return err
	}
	rc, err := cli.ClientConfig(o.kubeconfig, o.qps, o.burst, leaseName)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	client, err := versioned.NewForConfig(rc)
	if err != nil {
		return err
	}
	ctx = klog.NewContext(ctx, logger)
	sched, err := scheduler.New(ctx, kube, client, cfg, scheduler.Options{
		StatusPeriod: o.statusPeriod, AgentLostTimeout: o.agentLostTimeout, AgentLostAttempts: o.agentLostTries,
		SyncTimeout: o.syncTimeout, SweepPeriod: o.sweepPeriod, SystemNamespace: o.systemNamespace,
	})
	if err != nil {
		return err
	}
	leaderHealth := leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	if o.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", legacyregistry.Handler())
		mux.Handle("/healthz", cli.HealthzHandler(leaderHealth))
		if err := cli.Serve(ctx, logger, o.metricsAddr, mux); err != nil {
			return err
		}
	}
	return cli.RunAsLeader(ctx, logger, kube, cli.Leader{
		Enabled: o.leaderElect, Namespace: o.leaseNamespace, Name: leaseName, Health: leaderHealth,
	}, sched.Run)
}
