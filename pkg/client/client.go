// Package client is the Go client of fast-sandbox: it creates Sandboxes,
// waits for them, and talks to running ones through the aggregated API
// subresources.fast-sandbox.io (exec, attach, log, files), all through the
// Kubernetes API server, so RBAC decides who may do what (see
// docs/interactive.md). The kubectl plugin cmd/kubectl-sandbox is built on it.
//
// Errors the API server answered with a Status are returned as
// *apierrors.StatusError (use apierrors.IsNotFound, IsConflict, ... on them).
package client

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
)

// SubresourcesGroupVersion is the aggregated API that serves the exec,
// attach, log and files subresources of Sandboxes.
var SubresourcesGroupVersion = schema.GroupVersion{Group: "subresources.fast-sandbox.io", Version: "v1alpha1"}

// Client talks to Sandboxes: the sandboxes.fast-sandbox.io objects through
// the generated clientset, their interactive subresources through the
// aggregated API. It is safe for concurrent use.
type Client struct {
	// config is what the streaming executors (exec, attach) dial with.
	config *rest.Config
	// sandboxes is the clientset of the Sandbox objects.
	sandboxes versioned.Interface
	// subresources is a REST client of SubresourcesGroupVersion.
	subresources rest.Interface
}

// New builds a Client from a client configuration (e.g. a kubeconfig's).
func New(config *rest.Config) (*Client, error) {
	cs, err := versioned.NewForConfig(config)
	if err != nil {
		return nil, fmt.Errorf("building the sandbox clientset: %w", err)
	}
	return NewWithClientset(config, cs)
}

// NewWithClientset builds a Client that reads and writes Sandbox objects
// through the given clientset (e.g. a fake one in tests) and reaches the
// subresources with config.
func NewWithClientset(config *rest.Config, sandboxes versioned.Interface) (*Client, error) {
	rc, err := subresourcesRESTClient(config)
	if err != nil {
		return nil, err
	}
	return &Client{config: rest.CopyConfig(config), sandboxes: sandboxes, subresources: rc}, nil
}

// subresourcesRESTClient is a REST client of the aggregated group. Its
// serializer is client-go's scheme without conversion: it decodes the Status
// of an error, and options are encoded as query parameters by core/v1's
// options types (see the Request builders), whose names the aggregated API
// shares.
func subresourcesRESTClient(config *rest.Config) (*rest.RESTClient, error) {
	cfg := rest.CopyConfig(config)
	gv := SubresourcesGroupVersion
	cfg.GroupVersion = &gv
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the %s client: %w", gv, err)
	}
	return rc, nil
}

// Clientset is the clientset of the Sandbox objects the Client uses.
func (c *Client) Clientset() versioned.Interface { return c.sandboxes }

// Run creates the Sandbox (in metav1.NamespaceDefault when it names no
// namespace) and returns it as created. It does not wait: see Wait.
func (c *Client) Run(ctx context.Context, sb *v1alpha1.Sandbox) (*v1alpha1.Sandbox, error) {
	ns := sb.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	return c.sandboxes.SandboxV1alpha1().Sandboxes(ns).Create(ctx, sb, metav1.CreateOptions{})
}

// Get reads a Sandbox.
func (c *Client) Get(ctx context.Context, namespace, name string) (*v1alpha1.Sandbox, error) {
	return c.sandboxes.SandboxV1alpha1().Sandboxes(namespace).Get(ctx, name, metav1.GetOptions{})
}

// Sandboxes lists the Sandboxes of a namespace (of all namespaces when
// namespace is metav1.NamespaceAll).
func (c *Client) Sandboxes(ctx context.Context, namespace string, opts metav1.ListOptions) (*v1alpha1.SandboxList, error) {
	return c.sandboxes.SandboxV1alpha1().Sandboxes(namespace).List(ctx, opts)
}

// Delete deletes a Sandbox. It returns once the API server accepted the
// deletion; the object stays until the agent removed its container.
func (c *Client) Delete(ctx context.Context, namespace, name string) error {
	return c.sandboxes.SandboxV1alpha1().Sandboxes(namespace).Delete(ctx, name, metav1.DeleteOptions{})
}

// Pause sets spec.paused: every process of the sandbox is frozen (no CPU,
// memory kept) until Resume. It returns the patched Sandbox; its phase
// becomes Paused once the agent froze it.
func (c *Client) Pause(ctx context.Context, namespace, name string) (*v1alpha1.Sandbox, error) {
	return c.setPaused(ctx, namespace, name, true)
}

// Resume clears spec.paused: the sandbox's processes are thawed.
func (c *Client) Resume(ctx context.Context, namespace, name string) (*v1alpha1.Sandbox, error) {
	return c.setPaused(ctx, namespace, name, false)
}

// setPaused merge-patches spec.paused, the one field it changes.
func (c *Client) setPaused(ctx context.Context, namespace, name string, paused bool) (*v1alpha1.Sandbox, error) {
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"paused": paused}})
	if err != nil {
		return nil, err
	}
	return c.sandboxes.SandboxV1alpha1().Sandboxes(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
}

// subresource starts a request on a Sandbox's subresource of the aggregated
// API: /apis/subresources.fast-sandbox.io/v1alpha1/namespaces/NS/sandboxes/NAME/SUB.
func (c *Client) subresource(verb, namespace, name, sub string) *rest.Request {
	return c.subresources.Verb(verb).Namespace(namespace).Resource("sandboxes").Name(name).SubResource(sub)
}
