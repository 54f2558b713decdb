// Command pool-controller keeps the agent Pods of every SandboxPool, the
// certificates of the agent API and the sandbox-apiserver's serving
// certificate, and the caBundle of the sandbox-apiserver's APIService.
package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/component-base/metrics/legacyregistry"
	aggregatorclientset "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
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
	systemNamespace      string
	metricsAddr          string
	// The sandbox-apiserver's serving certificate and APIService.
	apiServerService          string
	apiServerServiceNamespace string
	clusterDomain             string
	apiService                string
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
			fs.StringVar(&o.leaderElectNamespace, "leader-elect-namespace", v1alpha1.DefaultSystemNamespace, "namespace of the leader election Lease")
			fs.StringVar(&o.systemNamespace, "system-namespace", v1alpha1.DefaultSystemNamespace,
				"namespace of the agent Pods, their cleanup Pods and Secrets (the only namespace where the controller reads or writes Pods and Secrets)")
			fs.StringVar(&o.metricsAddr, "metrics-addr", ":8080", "address serving /healthz and /metrics; empty: none")
			fs.StringVar(&o.apiServerService, "sandbox-apiserver-service", poolcontroller.DefaultSandboxAPIServerService,
				"name of the sandbox-apiserver's Service: its serving certificate (Secret "+v1alpha1.SandboxAPIServerServingSecretName+
					", issued from the agent API's CA) names <service>, <service>.<namespace>, <service>.<namespace>.svc and <service>.<namespace>.svc.<cluster-domain>")
			fs.StringVar(&o.apiServerServiceNamespace, "sandbox-apiserver-service-namespace", "",
				"namespace of the sandbox-apiserver's Service, where the serving certificate's Secret is written (the controller needs to write Secrets there); empty: --system-namespace")
			fs.StringVar(&o.clusterDomain, "cluster-domain", poolcontroller.DefaultClusterDomain, "the cluster's DNS domain, for the serving certificate's longest name")
			fs.StringVar(&o.apiService, "sandbox-apiserver-apiservice", poolcontroller.DefaultSandboxAPIServerAPIService,
				"APIService whose spec.caBundle is kept equal to the CA of the sandbox-apiserver's serving certificate (the controller needs get, list, watch and patch on it); empty: none")
		},
		Run: func(ctx context.Context, logger logr.Logger) error { return run(ctx, logger, o) },
	})
}

func run(ctx context.Context, logger logr.Logger, o *options) error {
	if o.workers < 1 {
		return fmt.Errorf("--workers=%d: must be at least 1", o.workers)
	}
	cfg, err := cli.ClientConfig(o.kubeconfig, o.qps, o.burst, leaseName)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("making the Kubernetes client: %w", err)
	}
	sandboxes, err := versioned.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("making the fast-sandbox client: %w", err)
	}
	apiServer := poolcontroller.SandboxAPIServerOptions{
		ServiceName:      o.apiServerService,
		ServiceNamespace: o.apiServerServiceNamespace,
		ClusterDomain:    o.clusterDomain,
		APIServiceName:   o.apiService,
	}
	if o.apiService != "" {
		if apiServer.Client, err = aggregatorclientset.NewForConfig(cfg); err != nil {
			return fmt.Errorf("making the apiregistration.k8s.io client: %w", err)
		}
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

	runController := func(ctx context.Context) error {
		inf := poolcontroller.NewInformers(kube, sandboxes, o.systemNamespace, o.resync)
		c, err := poolcontroller.NewControllerWithInformers(ctx, kube, sandboxes, inf, o.systemNamespace, poolcontroller.Options{})
		if err != nil {
			return err
		}
		if err := c.SetSandboxAPIServer(apiServer); err != nil {
			return fmt.Errorf("the sandbox-apiserver's options: %w", err)
		}
		inf.Start(ctx.Done())
		defer inf.Shutdown()
		return c.Run(ctx, o.workers)
	}
	return cli.RunAsLeader(ctx, logger, kube, cli.Leader{
		Enabled: o.leaderElect, Namespace: o.leaderElectNamespace, Name: leaseName, Health: leaderHealth,
	}, runController)
}
