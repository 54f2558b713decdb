// Package sandboxapiserver is the sandbox-apiserver: an aggregated API
// server (behind kube-apiserver's aggregation layer) that serves the
// interactive subresources of Sandboxes, subresources.fast-sandbox.io/v1alpha1
// sandboxes/{exec,attach,log,files} (see docs/interactive.md). Every request
// is authenticated and authorized by delegation to kube-apiserver (RBAC on
// the subresources); exec and attach also need "create", whatever the HTTP
// method. A request is proxied to the agent the Sandbox is bound to
// (status.agent, a Pod in the system namespace), over mutual TLS that
// presents the apiserver's client certificate and accepts only that agent
// Pod's identity (pkg/agentpki). The server keeps no state: it reads
// Sandboxes and agent Pods through informers.
package sandboxapiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericfilters "k8s.io/apiserver/pkg/server/filters"
	"k8s.io/apiserver/pkg/server/healthz"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/util/compatibility"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	subv1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/subresources/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	sandboxinformers "github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
)

// DefaultSecurePort is the port the server listens on by default.
const DefaultSecurePort = 8443

// Options are the sandbox-apiserver's command-line options: the
// recommended options of an aggregated API server without storage,
// admission or priority and fairness (kube-apiserver in front does it), and
// its own.
type Options struct {
	Recommended *genericoptions.RecommendedOptions
	// SystemNamespace holds the agent Pods.
	SystemNamespace string
	// AgentClientCertDir holds the client certificate for the agent API
	// (tls.crt, tls.key) and the CA that verifies agents (ca.crt): the
	// mounted Secret fast-sandbox-apiserver-client.
	AgentClientCertDir string
	// AgentPort, if not 0, is the agent API's port instead of the agent
	// Pod's (for tests).
	AgentPort int
}

// NewOptions returns the default options.
func NewOptions() *Options {
	ro := genericoptions.NewRecommendedOptions("", nil)
	ro.Etcd = nil
	ro.Admission = nil
	ro.Features.EnablePriorityAndFairness = false
	ro.SecureServing.BindPort = DefaultSecurePort
	ro.SecureServing.ServerCert.PairName = "sandbox-apiserver"
	return &Options{Recommended: ro, SystemNamespace: v1alpha1.DefaultSystemNamespace}
}

// AddFlags adds the options' flags to fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	o.Recommended.AddFlags(fs)
	fs.StringVar(&o.SystemNamespace, "system-namespace", o.SystemNamespace, "namespace of the agent Pods")
	fs.StringVar(&o.AgentClientCertDir, "agent-client-cert-dir", o.AgentClientCertDir,
		"directory of the client certificate for the agent API (tls.crt, tls.key) and of the CA that verifies agents (ca.crt): "+
			"the mounted Secret "+v1alpha1.SandboxAPIServerClientSecretName+"; re-read when it changes")
}

// Validate checks the options.
func (o *Options) Validate() error {
	errs := o.Recommended.Validate()
	if o.SystemNamespace == "" {
		errs = append(errs, errors.New("--system-namespace is required"))
	}
	if o.AgentClientCertDir == "" {
		errs = append(errs, errors.New("--agent-client-cert-dir is required"))
	}
	return errors.Join(errs...)
}

// Config makes the server's configuration from the options. The serving
// certificate is --tls-cert-file and --tls-private-key-file: in a cluster,
// the mounted Secret v1alpha1.SandboxAPIServerServingSecretName, which the
// pool controller issues for the server's Service and renews, and whose CA
// it writes into the APIService's caBundle; k8s.io/apiserver re-reads the
// files when they change, so a renewed certificate is served without a
// restart. Without them (a development run) it generates a self-signed
// certificate, which kube-apiserver does not accept.
func (o *Options) Config() (*Config, error) {
	if err := o.Recommended.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		return nil, fmt.Errorf("making a self-signed serving certificate: %w", err)
	}
	gc := NewGenericConfig()
	if err := o.Recommended.ApplyTo(gc); err != nil {
		return nil, err
	}
	creds, err := agentpki.LoadClient(filepath.Join(o.AgentClientCertDir, agentpki.KeyCert),
		filepath.Join(o.AgentClientCertDir, agentpki.KeyKey), filepath.Join(o.AgentClientCertDir, agentpki.KeyCACert))
	if err != nil {
		return nil, err
	}
	return &Config{Generic: gc, SystemNamespace: o.SystemNamespace, AgentPort: o.AgentPort, Credentials: creds}, nil
}

// NewGenericConfig returns the generic configuration of the server before
// the options are applied: codecs, version, OpenAPI, long-running requests.
func NewGenericConfig() *genericapiserver.RecommendedConfig {
	gc := genericapiserver.NewRecommendedConfig(Codecs)
	gc.EffectiveVersion = compatibility.DefaultBuildEffectiveVersion()
	namer := openapinamer.NewDefinitionNamer(Scheme)
	gc.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openAPIDefinitions, namer)
	gc.OpenAPIConfig.Info.Title = "fast-sandbox subresources"
	gc.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openAPIDefinitions, namer)
	gc.OpenAPIV3Config.Info.Title = "fast-sandbox subresources"
	// Streams are long-running: no request timeout, not counted in flight.
	gc.LongRunningFunc = genericfilters.BasicLongRunningRequestCheck(
		sets.NewString("watch", "proxy"), sets.NewString("exec", "attach", "log", "files"))
	return gc
}

// Config is the configuration of the server.
type Config struct {
	// Generic is the generic API server's configuration, with the options
	// applied (authentication, authorization, serving, ClientConfig).
	Generic *genericapiserver.RecommendedConfig
	// SystemNamespace holds the agent Pods.
	SystemNamespace string
	// AgentPort, if not 0, is the agent API's port instead of the agent
	// Pod's.
	AgentPort int
	// Credentials are the client credentials for the agent API.
	Credentials *agentpki.ClientCredentials
	// Kube and Sandbox are the clients of kube-apiserver; made from
	// Generic.ClientConfig when nil.
	Kube    kubernetes.Interface
	Sandbox versioned.Interface
}

// Server is a sandbox-apiserver ready to run.
type Server struct {
	Generic *genericapiserver.GenericAPIServer
}

// New builds the server: the informers of Sandboxes and agent Pods, and the
// generic API server with the group installed.
func (c *Config) New() (*Server, error) {
	if c.Credentials == nil {
		return nil, errors.New("sandboxapiserver: no agent client credentials")
	}
	if c.Kube == nil || c.Sandbox == nil {
		if c.Generic.ClientConfig == nil {
			return nil, errors.New("sandboxapiserver: no client configuration")
		}
		var err error
		if c.Kube == nil {
			if c.Kube, err = kubernetes.NewForConfig(c.Generic.ClientConfig); err != nil {
				return nil, err
			}
		}
		if c.Sandbox == nil {
			if c.Sandbox, err = versioned.NewForConfig(c.Generic.ClientConfig); err != nil {
				return nil, err
			}
		}
	}
	sandboxFactory := sandboxinformers.NewSharedInformerFactory(c.Sandbox, 0)
	podFactory := informers.NewSharedInformerFactoryWithOptions(c.Kube, 0, informers.WithNamespace(c.SystemNamespace))
	sandboxInformer := sandboxFactory.Sandbox().V1alpha1().Sandboxes()
	podInformer := podFactory.Core().V1().Pods()
	r := &resolver{
		sandboxes: sandboxInformer.Lister(),
		pods:      podInformer.Lister(),
		getSandbox: func(ctx context.Context, namespace, name string) (*v1alpha1.Sandbox, error) {
			return c.Sandbox.SandboxV1alpha1().Sandboxes(namespace).Get(ctx, name, metav1.GetOptions{})
		},
		getPod: func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
			return c.Kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		},
		systemNamespace: c.SystemNamespace,
		port:            c.AgentPort,
		creds:           c.Credentials,
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				if _, name, err := cache.SplitMetaNamespaceKey(key); err == nil {
					r.forget(name)
				}
			}
		},
	}); err != nil {
		return nil, err
	}
	sandboxesSynced := sandboxInformer.Informer().HasSynced
	podsSynced := podInformer.Informer().HasSynced

	gs, err := c.Generic.Complete().New("sandbox-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, err
	}
	authz := c.Generic.Authorization.Authorizer
	info := genericapiserver.NewDefaultAPIGroupInfo(subv1alpha1.GroupName, Scheme, ParameterCodec, Codecs)
	info.VersionedResourcesStorageMap[subv1alpha1.SchemeGroupVersion.Version] = map[string]rest.Storage{
		"sandboxes":        &sandboxREST{},
		"sandboxes/exec":   &execREST{r: r, authz: authz},
		"sandboxes/attach": &attachREST{r: r, authz: authz},
		"sandboxes/log":    &logREST{r: r},
		"sandboxes/files":  &filesREST{r: r},
	}
	if err := gs.InstallAPIGroup(&info); err != nil {
		return nil, err
	}
	if err := gs.AddPostStartHook("start-sandbox-informers", func(ctx genericapiserver.PostStartHookContext) error {
		sandboxFactory.Start(ctx.Done())
		podFactory.Start(ctx.Done())
		return nil
	}); err != nil {
		return nil, err
	}
	if err := gs.AddReadyzChecks(healthz.NamedCheck("sandbox-informers-synced", func(*http.Request) error {
		if !sandboxesSynced() || !podsSynced() {
			return errors.New("the Sandbox and agent Pod caches are not synced yet")
		}
		return nil
	})); err != nil {
		return nil, err
	}
	return &Server{Generic: gs}, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	return s.Generic.PrepareRun().RunWithContext(ctx)
}
