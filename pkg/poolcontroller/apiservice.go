package poolcontroller

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggregatorclientset "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset"
	aggregatorinformers "k8s.io/kube-aggregator/pkg/client/informers/externalversions"
	apiregistrationlisters "k8s.io/kube-aggregator/pkg/client/listers/apiregistration/v1"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	subv1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/subresources/v1alpha1"
)

// The sandbox-apiserver's APIService. kube-apiserver reaches the
// sandbox-apiserver through its Service and verifies the serving
// certificate against the APIService's spec.caBundle for the name
// <service>.<namespace>.svc. The controller issues that certificate from the
// agent API's CA (credentials.go, Secret
// v1alpha1.SandboxAPIServerServingSecretName, mounted by the
// sandbox-apiserver) and keeps spec.caBundle equal to the Secret's ca.crt:
// the CA, and during a change of CA the previous one too. It writes only
// that field (and clears insecureSkipTLSVerify, which may not be set beside
// a caBundle), with a merge patch naming its field manager, and only on the
// one APIService it is configured with, which it watches by name. An
// APIService that does not exist yet is no error: its creation brings it
// back. A failed patch is logged, recorded as an event on the APIService
// and retried with a per-item exponential backoff.

// Defaults of SandboxAPIServerOptions.
const (
	// DefaultSandboxAPIServerService is the name of the sandbox-apiserver's
	// Service (manifests/default/sandbox-apiserver.yaml).
	DefaultSandboxAPIServerService = "fast-sandbox-apiserver"
	// DefaultClusterDomain is the cluster's DNS domain.
	DefaultClusterDomain = "cluster.local"
)

// DefaultSandboxAPIServerAPIService is the name of the APIService of the
// interactive subresources, v1alpha1.subresources.fast-sandbox.io.
var DefaultSandboxAPIServerAPIService = subv1alpha1.SchemeGroupVersion.Version + "." + subv1alpha1.GroupName

// Event reasons of the APIService.
const (
	EventUpdatedCABundle      = "UpdatedCABundle"
	EventFailedUpdateCABundle = "FailedUpdateCABundle"
)

// actionUpdateCABundle is the action of the APIService's events.
const actionUpdateCABundle = "UpdateCABundle"

// apiServiceQueueName names the APIService's queue (and its workqueue_*
// series).
const apiServiceQueueName = "fast-sandbox-apiservice-cabundle"

// The backoff of a failed caBundle update.
const (
	apiServiceRetryBase = time.Second
	apiServiceRetryMax  = 5 * time.Minute
)

func init() {
	// Events name the APIService, so the event scheme must know it.
	utilruntime.Must(apiregistrationv1.AddToScheme(scheme.Scheme))
}

// SandboxAPIServerOptions say whose serving certificate the controller
// issues for the sandbox-apiserver and which APIService's caBundle it
// keeps. The zero value means the defaults and no APIService.
type SandboxAPIServerOptions struct {
	// ServiceName and ServiceNamespace are the sandbox-apiserver's Service
	// (DefaultSandboxAPIServerService in the system namespace by default).
	// The serving certificate names it; its Secret is written in
	// ServiceNamespace, where the sandbox-apiserver's Pod runs.
	ServiceName, ServiceNamespace string
	// ClusterDomain is the cluster's DNS domain, DefaultClusterDomain by
	// default.
	ClusterDomain string
	// APIServiceName is the APIService whose caBundle is kept,
	// DefaultSandboxAPIServerAPIService by default.
	APIServiceName string
	// Client reaches apiregistration.k8s.io. Without it no APIService is
	// kept (the serving certificate still is).
	Client aggregatorclientset.Interface
}

// withDefaults returns o with its defaults, in the system namespace ns.
func (o SandboxAPIServerOptions) withDefaults(ns string) SandboxAPIServerOptions {
	if o.ServiceName == "" {
		o.ServiceName = DefaultSandboxAPIServerService
	}
	if o.ServiceNamespace == "" {
		o.ServiceNamespace = ns
	}
	if o.ClusterDomain == "" {
		o.ClusterDomain = DefaultClusterDomain
	}
	if o.APIServiceName == "" {
		o.APIServiceName = DefaultSandboxAPIServerAPIService
	}
	return o
}

// DNSNames are the names of the Service that the serving certificate
// holds: <service>, <service>.<namespace>, <service>.<namespace>.svc (the
// one kube-apiserver verifies) and <service>.<namespace>.svc.<domain>.
func (o SandboxAPIServerOptions) DNSNames() []string {
	svc := o.ServiceName + "." + o.ServiceNamespace
	return []string{o.ServiceName, svc, svc + ".svc", svc + ".svc." + o.ClusterDomain}
}

// apiServiceKeeper watches the one APIService and queues it for a caBundle
// check.
type apiServiceKeeper struct {
	name    string
	client  aggregatorclientset.Interface
	factory aggregatorinformers.SharedInformerFactory
	lister  apiregistrationlisters.APIServiceLister
	synced  cache.InformerSynced
	queue   workqueue.TypedRateLimitingInterface[string]
}

// SetSandboxAPIServer configures the sandbox-apiserver's serving
// certificate and, with o.Client, the APIService whose caBundle the
// controller keeps; call it once, before Run. o.Client needs get, list,
// watch and patch on that APIService only (list and watch select it by
// name).
func (c *Controller) SetSandboxAPIServer(o SandboxAPIServerOptions) error {
	if c.creds.apiService != nil {
		return errors.New("the sandbox-apiserver's options are already set")
	}
	o = o.withDefaults(c.namespace)
	var errs []error
	for flag, v := range map[string]string{"service name": o.ServiceName, "service namespace": o.ServiceNamespace} {
		for _, msg := range validation.IsDNS1123Label(v) {
			errs = append(errs, fmt.Errorf("the sandbox-apiserver's %s %q: %s", flag, v, msg))
		}
	}
	for _, msg := range validation.IsDNS1123Subdomain(o.ClusterDomain) {
		errs = append(errs, fmt.Errorf("the cluster domain %q: %s", o.ClusterDomain, msg))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.creds.apiServer = o
	if o.Client == nil {
		return nil
	}
	byName := fields.OneTermEqualSelector("metadata.name", o.APIServiceName).String()
	factory := aggregatorinformers.NewSharedInformerFactoryWithOptions(o.Client, 0,
		aggregatorinformers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = byName }))
	informer := factory.Apiregistration().V1().APIServices()
	k := &apiServiceKeeper{
		name:    o.APIServiceName,
		client:  o.Client,
		factory: factory,
		lister:  informer.Lister(),
		synced:  informer.Informer().HasSynced,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](apiServiceRetryBase, apiServiceRetryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: apiServiceQueueName, Clock: c.clock}),
	}
	enqueue := func(obj any) {
		if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tombstone.Obj
		}
		if s, ok := obj.(*apiregistrationv1.APIService); ok && s.Name == k.name {
			k.queue.Add(k.name)
		}
	}
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		UpdateFunc: func(old, cur any) {
			o, n := old.(*apiregistrationv1.APIService), cur.(*apiregistrationv1.APIService)
			// Status changes (Available) need no look.
			if string(o.Spec.CABundle) != string(n.Spec.CABundle) || o.Spec.InsecureSkipTLSVerify != n.Spec.InsecureSkipTLSVerify {
				enqueue(cur)
			}
		},
	}); err != nil {
		return fmt.Errorf("adding an event handler to the APIService informer: %w", err)
	}
	c.creds.apiService = k
	return nil
}

// enqueueAPIService queues the APIService for a check, if one is kept.
func (c *Controller) enqueueAPIService() {
	if k := c.creds.apiService; k != nil {
		k.queue.Add(k.name)
	}
}

// run watches the APIService and keeps its caBundle until ctx ends.
func (k *apiServiceKeeper) run(ctx context.Context, c *Controller) {
	defer utilruntime.HandleCrashWithContext(ctx)
	defer k.queue.ShutDown()
	logger := klog.FromContext(ctx).WithValues("apiservice", k.name)
	ctx = klog.NewContext(ctx, logger)
	k.factory.Start(ctx.Done())
	defer k.factory.Shutdown()
	// Its own wait: a missing permission on the APIService must not hold
	// back the pools.
	if !cache.WaitForNamedCacheSyncWithContext(ctx, k.synced) {
		return
	}
	logger.Info("Keeping the caBundle of the sandbox-apiserver's APIService")
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		for c.processNextAPIService(ctx) {
		}
	}, time.Second)
}

// processNextAPIService checks the queued APIService once; false when the
// queue is shut down.
func (c *Controller) processNextAPIService(ctx context.Context) bool {
	k := c.creds.apiService
	key, shutdown := k.queue.Get()
	if shutdown {
		return false
	}
	defer k.queue.Done(key)
	if err := c.syncAPIService(ctx); err != nil {
		utilruntime.HandleErrorWithContext(ctx, err, "Keeping the caBundle of the APIService failed; retrying", "apiservice", key,
			"retries", k.queue.NumRequeues(key))
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

// syncAPIService makes the APIService's caBundle the serving certificate
// Secret's ca.crt.
func (c *Controller) syncAPIService(ctx context.Context) error {
	k, o := c.creds.apiService, c.creds.apiServer
	logger := klog.FromContext(ctx)
	svc, err := k.lister.Get(k.name)
	if apierrors.IsNotFound(err) {
		logger.V(2).Info("The APIService does not exist (yet); its caBundle is set once it does", "apiservice", k.name)
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting APIService %s: %w", k.name, err)
	}
	if svc.Spec.Service == nil {
		logger.Info("The APIService is served by kube-apiserver itself; it has no caBundle to keep", "apiservice", k.name)
		return nil
	}
	if ref := svc.Spec.Service; ref.Name != o.ServiceName || ref.Namespace != o.ServiceNamespace {
		logger.Info("Warning: the APIService names another Service than the one the serving certificate is for; kube-apiserver will refuse the certificate",
			"apiservice", k.name, "service", klog.KRef(ref.Namespace, ref.Name), "certificateFor", klog.KRef(o.ServiceNamespace, o.ServiceName))
	}
	name := v1alpha1.SandboxAPIServerServingSecretName
	secret, err := c.kubeClient.CoreV1().Secrets(o.ServiceNamespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		// Issued by the credentials loop, which queues the APIService then.
		logger.V(2).Info("The serving certificate Secret does not exist yet", "secret", klog.KRef(o.ServiceNamespace, name))
		return nil
	}
	if err != nil {
		return fmt.Errorf("getting Secret %s/%s: %w", o.ServiceNamespace, name, err)
	}
	bundle := secret.Data[agentpki.KeyCACert]
	if !x509.NewCertPool().AppendCertsFromPEM(bundle) {
		return fmt.Errorf("the %s of Secret %s/%s holds no CA certificate", agentpki.KeyCACert, o.ServiceNamespace, name)
	}
	if string(svc.Spec.CABundle) == string(bundle) && !svc.Spec.InsecureSkipTLSVerify {
		return nil
	}
	spec := map[string]any{"caBundle": bundle}
	if svc.Spec.InsecureSkipTLSVerify {
		spec["insecureSkipTLSVerify"] = nil
	}
	patch, err := json.Marshal(map[string]any{"spec": spec})
	if err != nil {
		return fmt.Errorf("encoding the caBundle patch: %w", err)
	}
	_, err = k.client.ApiregistrationV1().APIServices().Patch(ctx, k.name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: ControllerName})
	if apierrors.IsNotFound(err) {
		logger.V(2).Info("The APIService is gone; its caBundle is set once it is back", "apiservice", k.name)
		return nil
	}
	if err != nil {
		c.event(svc, nil, corev1.EventTypeWarning, EventFailedUpdateCABundle, actionUpdateCABundle,
			"Setting the caBundle to the CA of the serving certificate in Secret %s/%s failed: %v", o.ServiceNamespace, name, err)
		return fmt.Errorf("patching the caBundle of APIService %s: %w", k.name, err)
	}
	c.event(svc, nil, corev1.EventTypeNormal, EventUpdatedCABundle, actionUpdateCABundle,
		"Set the caBundle to the CA of the serving certificate in Secret %s/%s", o.ServiceNamespace, name)
	logger.Info("Set the caBundle of the APIService", "apiservice", k.name, "secret", klog.KRef(o.ServiceNamespace, name),
		"clearedInsecureSkipTLSVerify", svc.Spec.InsecureSkipTLSVerify)
	return nil
}
