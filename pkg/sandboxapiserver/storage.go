package sandboxapiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/endpoints/filters"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	translator "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/klog/v2"
	"k8s.io/streaming/pkg/httpstream/wsstream"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	subv1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/subresources/v1alpha1"
)

// sandboxREST is the parent of the subresources: the installer needs it for
// their scope and kind. It serves no verb.
type sandboxREST struct{}

var (
	_ rest.Storage              = &sandboxREST{}
	_ rest.Scoper               = &sandboxREST{}
	_ rest.SingularNameProvider = &sandboxREST{}
)

func (*sandboxREST) New() runtime.Object     { return &subv1alpha1.Sandbox{} }
func (*sandboxREST) Destroy()                {}
func (*sandboxREST) NamespaceScoped() bool   { return true }
func (*sandboxREST) GetSingularName() string { return "sandbox" }

// The methods of exec and attach: WebSocket clients upgrade a GET, SPDY
// clients a POST.
var upgradeMethods = []string{http.MethodGet, http.MethodPost}

// execREST is sandboxes/exec.
type execREST struct {
	r     *resolver
	authz authorizer.Authorizer
}

func (*execREST) New() runtime.Object { return &subv1alpha1.SandboxExecOptions{} }
func (*execREST) Destroy()            {}
func (*execREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &subv1alpha1.SandboxExecOptions{}, false, ""
}
func (*execREST) ConnectMethods() []string { return upgradeMethods }

func (e *execREST) Connect(ctx context.Context, name string, opts runtime.Object, responder rest.Responder) (http.Handler, error) {
	if err := requireVerb(ctx, e.authz, "create"); err != nil {
		return nil, err
	}
	o, ok := opts.(*subv1alpha1.SandboxExecOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %#v", opts)
	}
	if len(o.Command) == 0 || o.Command[0] == "" {
		return nil, apierrors.NewBadRequest("command is required")
	}
	if !o.Stdin && !o.Stdout && !o.Stderr {
		return nil, apierrors.NewBadRequest("at least one of stdin, stdout and stderr is required")
	}
	t, err := e.r.resolveStream(ctx, name)
	if err != nil {
		return nil, err
	}
	q := url.Values{"command": o.Command}
	setFlag(q, "input", o.Stdin)
	setFlag(q, "output", o.Stdout)
	setFlag(q, "error", o.Stderr)
	setFlag(q, "tty", o.TTY)
	return streamHandler(t, t.location(api.PathExec, q), responder,
		translator.Options{Stdin: o.Stdin, Stdout: o.Stdout, Stderr: o.Stderr, Tty: o.TTY}), nil
}

// attachREST is sandboxes/attach: the main process's output from now on.
type attachREST struct {
	r     *resolver
	authz authorizer.Authorizer
}

func (*attachREST) New() runtime.Object { return &subv1alpha1.SandboxAttachOptions{} }
func (*attachREST) Destroy()            {}
func (*attachREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &subv1alpha1.SandboxAttachOptions{}, false, ""
}
func (*attachREST) ConnectMethods() []string { return upgradeMethods }

func (a *attachREST) Connect(ctx context.Context, name string, opts runtime.Object, responder rest.Responder) (http.Handler, error) {
	if err := requireVerb(ctx, a.authz, "create"); err != nil {
		return nil, err
	}
	o, ok := opts.(*subv1alpha1.SandboxAttachOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %#v", opts)
	}
	if o.Stdin || o.TTY {
		return nil, apierrors.NewBadRequest("attach streams only the main process's output: its input belongs to its log, so stdin and tty cannot be attached; use exec")
	}
	if !o.Stdout && !o.Stderr {
		return nil, apierrors.NewBadRequest("at least one of stdout and stderr is required")
	}
	t, err := a.r.resolveStream(ctx, name)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	setFlag(q, "output", o.Stdout)
	setFlag(q, "error", o.Stderr)
	return streamHandler(t, t.location(api.PathAttach, q), responder,
		translator.Options{Stdout: o.Stdout, Stderr: o.Stderr}), nil
}

func setFlag(q url.Values, name string, on bool) {
	if on {
		q.Set(name, "1")
	}
}

// streamHandler proxies a remote command stream to the agent as kube-apiserver
// does to kubelet: SPDY and the legacy WebSocket protocols are passed through
// the upgraded connection; WebSocket v5 (which the agent does not speak) is
// terminated here and spoken to the agent as SPDY.
func streamHandler(t *target, location *url.URL, responder rest.Responder, opts translator.Options) http.Handler {
	upgrade := proxy.NewUpgradeAwareHandler(location, t.transport, false, true, agentResponder{t.agent, responder})
	upgrade.RejectForwardingRedirects = true
	translating := translator.NewStreamTranslatorHandler(location, t.transport, 0, opts)
	return stripCredentials(quietStreamEnd(translator.NewTranslatingHandler(upgrade, translating, wsstream.IsWebSocketRequestWithStreamCloseProtocol)))
}

// quietStreamEnd keeps the normal end of a translated WebSocket stream out
// of the log. The translation closes the client's connection once it has
// written the stream's status, while wsstream's reader still waits on it;
// that reader then logs "Error on socket receive" with "use of closed
// network connection", through the request context's logger. Errors that
// are not our own close are logged as before.
func quietStreamEnd(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		logger := klog.FromContext(req.Context())
		if sink := logger.GetSink(); sink != nil {
			logger = logger.WithSink(withoutClosedConnErrors(sink))
		}
		next.ServeHTTP(w, req.WithContext(klog.NewContext(req.Context(), logger)))
	})
}

// closedConnFilter is a logr.LogSink that drops errors caused by a closed
// connection (net.ErrClosed) and passes everything else to its sink.
type closedConnFilter struct {
	logr.LogSink
}

var _ logr.CallDepthLogSink = closedConnFilter{}

// withoutClosedConnErrors filters sink; the filter's own frame is not taken
// for the caller's.
func withoutClosedConnErrors(sink logr.LogSink) logr.LogSink {
	if cd, ok := sink.(logr.CallDepthLogSink); ok {
		sink = cd.WithCallDepth(1)
	}
	return closedConnFilter{sink}
}

func (f closedConnFilter) Error(err error, msg string, keysAndValues ...any) {
	if errors.Is(err, net.ErrClosed) {
		return
	}
	f.LogSink.Error(err, msg, keysAndValues...)
}

func (f closedConnFilter) WithValues(keysAndValues ...any) logr.LogSink {
	return closedConnFilter{f.LogSink.WithValues(keysAndValues...)}
}

func (f closedConnFilter) WithName(name string) logr.LogSink {
	return closedConnFilter{f.LogSink.WithName(name)}
}

func (f closedConnFilter) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := f.LogSink.(logr.CallDepthLogSink); ok {
		return closedConnFilter{cd.WithCallDepth(depth)}
	}
	return f
}

// logREST is sandboxes/log.
type logREST struct {
	r *resolver
}

func (*logREST) New() runtime.Object { return &subv1alpha1.SandboxLogOptions{} }
func (*logREST) Destroy()            {}
func (*logREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &subv1alpha1.SandboxLogOptions{}, false, ""
}
func (*logREST) ConnectMethods() []string { return []string{http.MethodGet} }

func (l *logREST) Connect(ctx context.Context, name string, opts runtime.Object, responder rest.Responder) (http.Handler, error) {
	o, ok := opts.(*subv1alpha1.SandboxLogOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %#v", opts)
	}
	q, err := logQuery(o)
	if err != nil {
		return nil, err
	}
	t, err := l.r.resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	return plainProxy(t, t.location(api.PathLogs, q), responder), nil
}

// logQuery validates log options and makes the agent's query of them.
func logQuery(o *subv1alpha1.SandboxLogOptions) (url.Values, error) {
	q := url.Values{}
	switch {
	case o.SinceSeconds != nil && o.SinceTime != nil:
		return nil, apierrors.NewBadRequest("at most one of sinceSeconds and sinceTime may be set")
	case o.SinceSeconds != nil && *o.SinceSeconds < 1:
		return nil, apierrors.NewBadRequest("sinceSeconds must be at least 1")
	case o.TailLines != nil && *o.TailLines < 0:
		return nil, apierrors.NewBadRequest("tailLines must not be negative")
	case o.LimitBytes != nil && *o.LimitBytes < 1:
		return nil, apierrors.NewBadRequest("limitBytes must be at least 1")
	}
	if o.Follow {
		q.Set("follow", "true")
	}
	if o.Timestamps {
		q.Set("timestamps", "true")
	}
	if o.SinceSeconds != nil {
		q.Set("sinceSeconds", strconv.FormatInt(*o.SinceSeconds, 10))
	}
	if o.SinceTime != nil {
		q.Set("sinceTime", o.SinceTime.UTC().Format(time.RFC3339))
	}
	if o.TailLines != nil {
		q.Set("tailLines", strconv.FormatInt(*o.TailLines, 10))
	}
	if o.LimitBytes != nil {
		q.Set("limitBytes", strconv.FormatInt(*o.LimitBytes, 10))
	}
	return q, nil
}

// filesREST is sandboxes/files: GET reads, lists or describes a file, PUT
// writes one (the verbs get and update).
type filesREST struct {
	r *resolver
}

func (*filesREST) New() runtime.Object { return &subv1alpha1.SandboxFilesOptions{} }
func (*filesREST) Destroy()            {}
func (*filesREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &subv1alpha1.SandboxFilesOptions{}, false, ""
}
func (*filesREST) ConnectMethods() []string { return []string{http.MethodGet, http.MethodPut} }

func (f *filesREST) Connect(ctx context.Context, name string, opts runtime.Object, responder rest.Responder) (http.Handler, error) {
	o, ok := opts.(*subv1alpha1.SandboxFilesOptions)
	if !ok {
		return nil, fmt.Errorf("invalid options object: %#v", opts)
	}
	if o.Path == "" {
		return nil, apierrors.NewBadRequest("path is required")
	}
	info, _ := genericapirequest.RequestInfoFrom(ctx)
	write := info != nil && info.Verb == "update"
	q := url.Values{"path": {o.Path}}
	if write {
		if o.Op != "" {
			return nil, apierrors.NewBadRequest("op is for GET only")
		}
		if o.Mode != "" {
			m, err := strconv.ParseUint(o.Mode, 8, 32)
			if err != nil || m > 0o7777 {
				return nil, apierrors.NewBadRequest(fmt.Sprintf("mode %q: must be octal permission bits (at most 07777)", o.Mode))
			}
			q.Set("mode", o.Mode)
		}
	} else {
		switch o.Op {
		case "", subv1alpha1.FilesOpRead, subv1alpha1.FilesOpList, subv1alpha1.FilesOpStat:
		default:
			return nil, apierrors.NewBadRequest(fmt.Sprintf("op %q: must be read, list or stat", o.Op))
		}
		if o.Mode != "" {
			return nil, apierrors.NewBadRequest("mode is for PUT only")
		}
		if o.Op != "" {
			q.Set("op", o.Op)
		}
	}
	t, err := f.r.resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	return plainProxy(t, t.location(api.PathFiles, q), responder), nil
}

// plainProxy proxies a plain request (no upgrade) to the agent, streaming
// both bodies; the agent's errors become API Status objects.
func plainProxy(t *target, location *url.URL, responder rest.Responder) http.Handler {
	h := proxy.NewUpgradeAwareHandler(location, &agentErrors{agent: t.agent, next: t.transport}, false, false,
		agentResponder{t.agent, responder})
	h.RejectForwardingRedirects = true
	// Flush every write at once: a followed log is read as it is written.
	h.FlushInterval = -1
	// The handler takes the query (and a trailing slash) of the request it
	// serves; the agent's query and path are ours.
	return stripCredentials(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		u := *req.URL
		u.Path, u.RawPath, u.RawQuery = location.Path, location.RawPath, location.RawQuery
		req.URL = &u
		h.ServeHTTP(w, req)
	}))
}

// stripCredentials keeps the caller's credentials from the agent. The
// authentication filter removes a bearer token; this also covers the headers
// of a front proxy and of impersonation.
func stripCredentials(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		for name := range req.Header {
			c := http.CanonicalHeaderKey(name)
			if c == "Authorization" || c == "Proxy-Authorization" || c == "Cookie" ||
				strings.HasPrefix(c, "X-Remote-") || strings.HasPrefix(c, "Impersonate-") {
				req.Header.Del(name)
			}
		}
		next.ServeHTTP(w, req)
	})
}

// agentResponder reports a failed call of the agent (it could not be
// dialed, or the TLS handshake failed) as 503.
type agentResponder struct {
	agent     string
	responder rest.Responder
}

func (a agentResponder) Error(w http.ResponseWriter, req *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		a.responder.Error(err)
		return
	}
	a.responder.Error(unreachable(a.agent, err.Error()))
}

// requireVerb authorizes the request again with verb (as kube-apiserver
// does for pods/exec): WebSocket clients must GET, which RBAC calls "get",
// but a shell must need "create".
func requireVerb(ctx context.Context, authz authorizer.Authorizer, verb string) error {
	info, ok := genericapirequest.RequestInfoFrom(ctx)
	if !ok {
		return apierrors.NewInternalError(errors.New("no request info in the context"))
	}
	if info.Verb == verb {
		return nil
	}
	if authz == nil {
		return apierrors.NewInternalError(errors.New("no authorizer"))
	}
	attrs, err := filters.GetAuthorizerAttributes(ctx)
	if err != nil {
		return apierrors.NewInternalError(fmt.Errorf("building the authorization attributes: %w", err))
	}
	decision, reason, err := authz.Authorize(ctx, withVerb{Attributes: attrs, verb: verb})
	if decision == authorizer.DecisionAllow {
		return nil
	}
	if err != nil && reason == "" {
		reason = err.Error()
	}
	return apierrors.NewForbidden(schema.GroupResource{Group: info.APIGroup, Resource: info.Resource + "/" + info.Subresource},
		info.Name, fmt.Errorf("%s requires verb %q: %s", info.Subresource, verb, reason))
}

type withVerb struct {
	authorizer.Attributes
	verb string
}

func (w withVerb) GetVerb() string { return w.verb }
