package poolcontroller

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
)

// Informers are the informer factories a Controller reads through, narrowed
// to what it may see: Pods and Secrets of the system namespace that carry
// the pool label (agent Pods and their certificates), cleanup Pods of the
// system namespace, Nodes, SandboxPools and Sandboxes. The RBAC in
// manifests/default grants exactly these.
type Informers struct {
	labelled, cleanup, nodes informers.SharedInformerFactory
	sandboxes                externalversions.SharedInformerFactory
}

// NewInformers makes the factories over systemNamespace.
func NewInformers(kube kubernetes.Interface, client versioned.Interface, systemNamespace string, resync time.Duration) *Informers {
	withLabel := func(label string) informers.SharedInformerOption {
		return informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = label })
	}
	return &Informers{
		labelled: informers.NewSharedInformerFactoryWithOptions(kube, resync,
			informers.WithNamespace(systemNamespace), withLabel(v1alpha1.LabelPoolName)),
		cleanup: informers.NewSharedInformerFactoryWithOptions(kube, resync,
			informers.WithNamespace(systemNamespace), withLabel(v1alpha1.LabelCleanupAgentPodUID)),
		nodes:     informers.NewSharedInformerFactory(kube, resync),
		sandboxes: externalversions.NewSharedInformerFactory(client, resync),
	}
}

// NewControllerWithInformers makes a controller over inf, in inf's system
// namespace; start inf afterwards.
func NewControllerWithInformers(ctx context.Context, kube kubernetes.Interface, client versioned.Interface,
	inf *Informers, systemNamespace string, opts Options,
) (*Controller, error) {
	opts.SystemNamespace = systemNamespace
	opts.CleanupPods = inf.cleanup.Core().V1().Pods()
	return NewController(ctx, kube, client, inf.labelled.Core().V1().Pods(), inf.nodes.Core().V1().Nodes(),
		inf.labelled.Core().V1().Secrets(), inf.sandboxes.Sandbox().V1alpha1().SandboxPools(),
		inf.sandboxes.Sandbox().V1alpha1().Sandboxes(), opts)
}

// Start starts every informer.
func (i *Informers) Start(stop <-chan struct{}) {
	i.labelled.Start(stop)
	i.cleanup.Start(stop)
	i.nodes.Start(stop)
	i.sandboxes.Start(stop)
}

// Shutdown waits for the informers to stop (after stop is closed).
func (i *Informers) Shutdown() {
	i.labelled.Shutdown()
	i.cleanup.Shutdown()
	i.nodes.Shutdown()
	i.sandboxes.Shutdown()
}
