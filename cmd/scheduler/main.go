// Command scheduler places Sandboxes on agent slots with the kube-scheduler
// framework and tells the chosen agents what to run.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/scheduler"
)

type options struct {
	kubeconfig       string
	config           string
	qps              float32
	burst            int
	statusPeriod     time.Duration
	agentLostTimeout time.Duration
	metricsAddr      string
	leaderElect      bool
	leaseNamespace   string
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
			fs.DurationVar(&o.agentLostTimeout, "agent-lost-timeout", 20*time.Second, "how long an agent may stay silent before its sandboxes fail with AgentLost")
			fs.StringVar(&o.metricsAddr, "metrics-addr", ":10351", "address of /metrics and /healthz")
			fs.BoolVar(&o.leaderElect, "leader-elect", true, "run only while holding the leader lease")
			fs.StringVar(&o.leaseNamespace, "leader-elect-namespace", "fast-sandbox-system", "namespace of the leader lease")
		},
		Run: func(ctx context.Context, logger logr.Logger) error { return run(ctx, logger, o) },
	})
}

func run(ctx context.Context, logger logr.Logger, o *options) error {
	cfg, err := scheduler.LoadConfig(o.config)
	if err != nil {
		return err
	}
	var rc *rest.Config
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("loading the client configuration: %w", err)
	}
	rc.QPS, rc.Burst = o.qps, o.burst
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
		StatusPeriod: o.statusPeriod, AgentLostTimeout: o.agentLostTimeout,
	})
	if err != nil {
		return err
	}
	if o.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", legacyregistry.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		srv := &http.Server{Addr: o.metricsAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error(err, "serving metrics")
			}
		}()
		defer srv.Close()
	}
	if !o.leaderElect {
		return sched.Run(ctx)
	}
	id, _ := os.Hostname()
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.leaseNamespace, "fast-sandbox-scheduler",
		kube.CoreV1(), kube.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		return err
	}
	var runErr error
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock: lock, ReleaseOnCancel: true,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) { runErr = sched.Run(ctx) },
			OnStoppedLeading: func() { logger.Info("stopped leading") },
		},
	})
	return runErr
}
