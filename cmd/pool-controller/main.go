// Command pool-controller keeps the agent Pods of every SandboxPool.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
	"github.com/fast-sandbox/fast-sandbox/pkg/poolcontroller"
)

const leaseName = "fast-sandbox-pool-controller"

type options struct {
	kubeconfig           string
	workers              int
	resync               time.Duration
	qps                  float32
	burst                int
	leaderElect          bool
	leaderElectNamespace string
	metricsAddr          string
}

func main() {
	o := &options{}
	cli.Main(cli.Component{
		Name:  "pool-controller",
		Short: "Keeps the warm agent Pods of every SandboxPool.",
		AddFlags: func(fs *pflag.FlagSet) {
			fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster configuration")
			fs.IntVar(&o.workers, "workers", 4, "pools reconciled at once")
			fs.DurationVar(&o.resync, "resync", 10*time.Minute, "informer resync period")
			fs.Float32Var(&o.qps, "kube-api-qps", 50, "queries per second to the API server")
			fs.IntVar(&o.burst, "kube-api-burst", 100, "burst of queries to the API server")
			fs.BoolVar(&o.leaderElect, "leader-elect", true, "run only while holding the Lease "+leaseName)
			fs.StringVar(&o.leaderElectNamespace, "leader-elect-namespace", "fast-sandbox-system", "namespace of the leader election Lease")
			fs.StringVar(&o.metricsAddr, "metrics-addr", ":8080", "address serving /healthz and /metrics; empty: none")
		},
		Run: func(ctx context.Context, logger logr.Logger) error { return run(ctx, logger, o) },
	})
}

func run(ctx context.Context, logger logr.Logger, o *options) error {
	if o.workers < 1 {
		return fmt.Errorf("--workers=%d: must be at least 1", o.workers)
	}
	var cfg *rest.Config
	var err error
	if o.kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	}
	if err != nil {
		return fmt.Errorf("loading the client configuration: %w", err)
	}
	cfg.QPS, cfg.Burst = o.qps, o.burst
	cfg = rest.AddUserAgent(cfg, leaseName)
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("making the Kubernetes client: %w", err)
	}
	sandboxes, err := versioned.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("making the fast-sandbox client: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := poolcontroller.NewMetrics(reg)
	leaderHealth := leaderelection.NewLeaderHealthzAdaptor(20 * time.Second)
	if o.metricsAddr != "" {
		if err := serveMetrics(ctx, logger, o.metricsAddr, reg, leaderHealth); err != nil {
			return err
		}
	}

	runController := func(ctx context.Context) error {
		// Agent Pods and token Secrets carry the pool label; watch only those.
		labelled := informers.NewSharedInformerFactoryWithOptions(kube, o.resync,
			informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.LabelSelector = v1alpha1.LabelPoolName }))
		nodes := informers.NewSharedInformerFactory(kube, o.resync)
		sbx := externalversions.NewSharedInformerFactory(sandboxes, o.resync)
		c, err := poolcontroller.NewController(ctx, kube, sandboxes,
			labelled.Core().V1().Pods(), nodes.Core().V1().Nodes(), labelled.Core().V1().Secrets(),
			sbx.Sandbox().V1alpha1().SandboxPools(), sbx.Sandbox().V1alpha1().Sandboxes(),
			poolcontroller.Options{Metrics: metrics})
		if err != nil {
			return err
		}
		labelled.Start(ctx.Done())
		nodes.Start(ctx.Done())
		sbx.Start(ctx.Done())
		defer func() {
			labelled.Shutdown()
			nodes.Shutdown()
			sbx.Shutdown()
		}()
		return c.Run(ctx, o.workers)
	}
	if !o.leaderElect {
		return runController(ctx)
	}

	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("getting the hostname for the leader election identity: %w", err)
	}
	id := host + "_" + string(uuid.NewUUID())
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: o.leaderElectNamespace, Name: leaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	leCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	leaderelection.RunOrDie(leCtx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            leaseName,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		WatchDog:        leaderHealth,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				logger.Info("Became the leader", "identity", id)
				done <- runController(ctx)
				cancel()
			},
			OnStoppedLeading: func() { logger.Info("No longer the leader", "identity", id) },
			OnNewLeader: func(identity string) {
				if identity != id {
					logger.Info("Another instance leads", "leader", identity)
				}
			},
		},
	})
	select {
	case err := <-done:
		return err
	default:
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("lost the leader election Lease")
}

// serveMetrics serves /metrics and /healthz until ctx ends.
func serveMetrics(ctx context.Context, logger logr.Logger, addr string, reg *prometheus.Registry, leader *leaderelection.HealthzAdaptor) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := leader.Check(r); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(err, "Serving metrics failed")
		}
	}()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	logger.Info("Serving /metrics and /healthz", "address", ln.Addr().String())
	return nil
}
