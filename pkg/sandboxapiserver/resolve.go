package sandboxapiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	sandboxlisters "github.com/fast-sandbox/fast-sandbox/pkg/generated/listers/sandbox/v1alpha1"
)

// SandboxGetter reads a Sandbox from the API server; the resolver asks it
// when its cache does not (yet) know a sandbox or its binding.
type SandboxGetter func(ctx context.Context, namespace, name string) (*v1alpha1.Sandbox, error)

// PodGetter reads an agent Pod from the API server when the cache does not
// know it.
type PodGetter func(ctx context.Context, namespace, name string) (*corev1.Pod, error)

// resolver finds the agent a sandbox runs on and the way to call it.
type resolver struct {
	sandboxes       sandboxlisters.SandboxLister
	pods            corelisters.PodLister
	getSandbox      SandboxGetter // optional
	getPod          PodGetter     // optional
	systemNamespace string
	port            int // 0: the Pod's agent-api port
	creds           *agentpki.ClientCredentials

	mu         sync.Mutex
	transports map[string]agentTransport // by agent Pod name
}

type agentTransport struct {
	uid types.UID
	t   *http.Transport
}

// target is a sandbox's agent: where to call it and how.
type target struct {
	sandbox *v1alpha1.Sandbox
	agent   string // the agent Pod's name
	base    url.URL
	// transport speaks mutual TLS with exactly this agent Pod.
	transport *http.Transport
}

// location is the agent URL of the sandbox's route (api.PathExec, ...)
// with query q.
func (t *target) location(route string, q url.Values) *url.URL {
	u := t.base
	u.Path = pathFor(route, string(t.sandbox.UID))
	u.RawQuery = q.Encode()
	return &u
}

func pathFor(route, uid string) string {
	return strings.Replace(route, "{uid}", url.PathEscape(uid), 1)
}

// resolve finds the agent of sandbox name in the request's namespace. Its
// errors are API errors: NotFound for a missing sandbox, Conflict for one
// that runs on no agent, ServiceUnavailable for an agent that cannot be
// called.
func (r *resolver) resolve(ctx context.Context, name string) (*target, error) {
	ns, ok := genericapirequest.NamespaceFrom(ctx)
	if !ok || ns == "" {
		return nil, apierrors.NewBadRequest("a namespace is required")
	}
	sbx, err := r.sandboxes.Sandboxes(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, apierrors.NewInternalError(err)
	}
	if r.getSandbox != nil && (err != nil || sbx.Status.Agent == "") {
		// The cache may lag behind a sandbox just made or just bound.
		sbx, err = r.getSandbox(ctx, ns, name)
	}
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, apierrors.NewNotFound(v1alpha1.Resource("sandboxes"), name)
		}
		return nil, err
	}
	if sbx.Status.Agent == "" {
		return nil, notOnAgent(sbx)
	}
	agent := sbx.Status.Agent
	pod, err := r.pods.Pods(r.systemNamespace).Get(agent)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, apierrors.NewInternalError(err)
	}
	if r.getPod != nil && (err != nil || pod.Status.PodIP == "" || (sbx.Status.AgentUID != "" && string(pod.UID) != sbx.Status.AgentUID)) {
		pod, err = r.getPod(ctx, r.systemNamespace, agent)
	}
	var why string
	switch {
	case apierrors.IsNotFound(err):
		why = "its Pod is gone"
	case err != nil:
		why = err.Error()
	case sbx.Status.AgentUID != "" && string(pod.UID) != sbx.Status.AgentUID:
		why = "its Pod was replaced"
	case pod.DeletionTimestamp != nil && pod.Status.PodIP == "":
		why = "its Pod is being deleted"
	case pod.Status.PodIP == "":
		why = "its Pod has no IP address yet"
	}
	if why != "" {
		if finished(sbx) {
			// What matters to the caller first is that the sandbox has ended
			// (e.g. Failed with AgentLost), then that its agent went with it.
			err := notOnAgentStatus(sbx)
			err.ErrStatus.Message += fmt.Sprintf("; its agent %s is not reachable: %s", agent, why)
			return nil, err
		}
		return nil, unreachable(agent, why)
	}
	port := r.port
	if port == 0 {
		port = agentPort(pod)
	}
	return &target{
		sandbox:   sbx,
		agent:     agent,
		base:      url.URL{Scheme: "https", Host: net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(port))},
		transport: r.transportFor(pod),
	}, nil
}

// resolveStream is resolve for exec and attach: it also refuses, as a
// Conflict, a sandbox paused by spec or finished. The agent refuses those
// too, but a WebSocket client sees its answer only once this server has
// upgraded the connection (it speaks SPDY to the agent after that), as an
// Internal error. The cache may lag behind a resume: the API server is
// asked before refusing.
func (r *resolver) resolveStream(ctx context.Context, name string) (*target, error) {
	t, err := r.resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	refused := streamRefusal(t.sandbox)
	if refused == nil {
		return t, nil
	}
	if r.getSandbox == nil {
		return nil, refused
	}
	live, err := r.getSandbox(ctx, t.sandbox.Namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		return nil, apierrors.NewNotFound(v1alpha1.Resource("sandboxes"), name)
	case err != nil:
		return nil, err
	case live.UID != t.sandbox.UID:
		return r.resolve(ctx, name) // another sandbox of that name: the agent decides
	}
	if err := streamRefusal(live); err != nil {
		return nil, err
	}
	t.sandbox = live
	return t, nil
}

// streamRefusal is the Conflict that exec and attach get from a sandbox
// paused by spec or finished (the agent's own messages), or nil.
func streamRefusal(sbx *v1alpha1.Sandbox) error {
	var msg string
	switch {
	case finished(sbx):
		msg = "sandbox has finished"
	case sbx.Spec.Paused:
		msg = "sandbox is paused (spec.paused); resume it first"
	default:
		return nil
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusConflict, Reason: metav1.StatusReasonConflict,
		Message: fmt.Sprintf("sandbox %s/%s: %s", sbx.Namespace, sbx.Name, msg),
		Details: &metav1.StatusDetails{Name: sbx.Name, Group: v1alpha1.GroupName, Kind: "sandboxes"},
	}}
}

// agentPort is the agent Pod's port named AgentAPIPortName, or AgentAPIPort.
func agentPort(pod *corev1.Pod) int {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == v1alpha1.AgentAPIPortName {
				return int(p.ContainerPort)
			}
		}
	}
	return v1alpha1.AgentAPIPort
}

// transportFor returns the transport to agent Pod pod, one per Pod so that
// connections are reused; it verifies that the server is that Pod.
func (r *resolver) transportFor(pod *corev1.Pod) *http.Transport {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at, ok := r.transports[pod.Name]; ok && at.uid == pod.UID {
		return at.t
	}
	if old, ok := r.transports[pod.Name]; ok {
		old.t.CloseIdleConnections()
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	// The agent speaks HTTP/1.1 only (streams are upgraded connections).
	base.ForceAttemptHTTP2 = false
	t := r.creds.Transport(base, r.systemNamespace, pod.Name)
	if r.transports == nil {
		r.transports = map[string]agentTransport{}
	}
	r.transports[pod.Name] = agentTransport{uid: pod.UID, t: t}
	return t
}

// forget drops the transport of a deleted agent Pod.
func (r *resolver) forget(podName string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at, ok := r.transports[podName]; ok {
		at.t.CloseIdleConnections()
		delete(r.transports, podName)
	}
}

// finished says a sandbox has ended: Succeeded or Failed.
func finished(sbx *v1alpha1.Sandbox) bool {
	return sbx.Status.Phase == v1alpha1.SandboxSucceeded || sbx.Status.Phase == v1alpha1.SandboxFailed
}

// notOnAgent is the error for a sandbox bound to no agent: 409, since the
// sandbox's state, not the server, is in the way.
func notOnAgent(sbx *v1alpha1.Sandbox) error {
	return notOnAgentStatus(sbx)
}

func notOnAgentStatus(sbx *v1alpha1.Sandbox) *apierrors.StatusError {
	phase := string(sbx.Status.Phase)
	if phase == "" {
		phase = string(v1alpha1.SandboxPending)
	}
	msg := fmt.Sprintf("sandbox %s/%s is not running on an agent yet (phase %s)", sbx.Namespace, sbx.Name, phase)
	if finished(sbx) {
		msg = fmt.Sprintf("sandbox %s/%s has finished (phase %s)", sbx.Namespace, sbx.Name, phase)
	}
	if sbx.Status.Reason != "" {
		msg += ": " + sbx.Status.Reason
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusConflict, Reason: metav1.StatusReasonConflict, Message: msg,
		Details: &metav1.StatusDetails{Name: sbx.Name, Group: v1alpha1.GroupName, Kind: "sandboxes"},
	}}
}

// unreachable is the error for an agent that cannot be called.
func unreachable(agent, why string) error {
	return apierrors.NewServiceUnavailable(fmt.Sprintf("agent %s is not reachable: %s", agent, why))
}

// agentErrors turns an agent's error answers (JSON api.Error or text) into
// API Status objects, so that clients see the same kind of error from the
// agent as from the API server.
type agentErrors struct {
	agent string
	next  *http.Transport
}

// maxAgentErrorBytes bounds the body of an agent's error answer read.
const maxAgentErrorBytes = 64 << 10

func (a *agentErrors) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := a.next.RoundTrip(req)
	if err != nil || resp.StatusCode < http.StatusBadRequest {
		return resp, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxAgentErrorBytes))
	_ = resp.Body.Close()
	msg := string(bytes.TrimSpace(body))
	var ae api.Error
	if json.Unmarshal(body, &ae) == nil && ae.Message != "" {
		msg = ae.Message
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	status := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(resp.StatusCode), Reason: reasonFor(resp.StatusCode),
		Message: fmt.Sprintf("agent %s: %s", a.agent, msg),
	}
	out, err := json.Marshal(&status)
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(out))
	resp.ContentLength = int64(len(out))
	resp.Header.Del("Content-Encoding")
	resp.Header.Set("Content-Type", "application/json")
	resp.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return resp, nil
}

// The UpgradeAwareHandler finds the TLS configuration of the transport
// through this.
func (a *agentErrors) WrappedRoundTripper() http.RoundTripper { return a.next }

func reasonFor(code int) metav1.StatusReason {
	switch code {
	case http.StatusBadRequest:
		return metav1.StatusReasonBadRequest
	case http.StatusUnauthorized:
		return metav1.StatusReasonUnauthorized
	case http.StatusForbidden:
		return metav1.StatusReasonForbidden
	case http.StatusNotFound:
		return metav1.StatusReasonNotFound
	case http.StatusMethodNotAllowed:
		return metav1.StatusReasonMethodNotAllowed
	case http.StatusConflict:
		return metav1.StatusReasonConflict
	case http.StatusGone:
		return metav1.StatusReasonGone
	case http.StatusRequestEntityTooLarge:
		return metav1.StatusReasonRequestEntityTooLarge
	case http.StatusUnsupportedMediaType:
		return metav1.StatusReasonUnsupportedMediaType
	case http.StatusUnprocessableEntity:
		return metav1.StatusReasonInvalid
	case http.StatusTooManyRequests:
		return metav1.StatusReasonTooManyRequests
	case http.StatusServiceUnavailable:
		return metav1.StatusReasonServiceUnavailable
	case http.StatusGatewayTimeout:
		return metav1.StatusReasonTimeout
	case http.StatusInternalServerError:
		return metav1.StatusReasonInternalError
	}
	return metav1.StatusReasonUnknown
}
