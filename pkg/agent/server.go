package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
)

const maxLogBytes = 4 << 20

// HandlerOption configures Handler.
type HandlerOption func(*handlerOptions)

type handlerOptions struct {
	health *Health
}

// WithHealth makes /readyz and /healthz answer for the runtime too: /readyz
// fails while h says the runtime does not answer, /healthz once it has not
// answered for h's liveness threshold.
func WithHealth(h *Health) HandlerOption {
	return func(o *handlerOptions) { o.health = h }
}

// Handler serves the agent's HTTP API. It is served only behind mutual TLS
// that admits the certificates of the scheduler and of the sandbox-apiserver
// (agentpki.ServerConfig), and it authorizes each request by the identity of
// the verified client certificate: the scheduler may call every route, the
// sandbox-apiserver only the interactive ones (exec, attach, logs, files);
// any other request of the API, one without TLS included, is answered 403
// before it is handled. It also answers /healthz, /readyz and /metrics, as
// ProbeHandler does, to any client.
func (a *Agent) Handler(opts ...HandlerOption) http.Handler {
	return a.handler(true, opts...)
}

// Who may call a route.
type access int

const (
	// accessOpen: the probes and metrics, for anyone who reaches the port.
	accessOpen access = iota
	// accessScheduler: the scheduler only (status, sync).
	accessScheduler
	// accessInteractive: the scheduler and the sandbox-apiserver.
	accessInteractive
)

// authorize says whether the request's verified client identity may call a
// route of access acc.
func authorize(r *http.Request, acc access, route string) error {
	if acc == accessOpen {
		return nil
	}
	id, err := agentpki.PeerIdentity(r.TLS)
	if err != nil {
		return refuse(http.StatusForbidden, "%s: no verified client certificate", route)
	}
	if id == agentpki.SchedulerIdentity || (acc == accessInteractive && id == agentpki.APIServerIdentity) {
		return nil
	}
	return refuse(http.StatusForbidden, "client %q may not call %s", short(id), route)
}

// ProbeHandler serves /healthz, /readyz and /metrics only, for kubelet's
// probes and scrapers, which have no client certificate; they reveal nothing
// about sandboxes. Neither probe waits on the runtime: they answer from what
// the agent and its Health (WithHealth) already know.
func (a *Agent) ProbeHandler(opts ...HandlerOption) http.Handler {
	return a.handler(false, opts...)
}

func (a *Agent) handler(withAPI bool, opts ...HandlerOption) http.Handler {
	var o handlerOptions
	for _, opt := range opts {
		opt(&o)
	}
	mux := http.NewServeMux()
	route := func(pattern string, acc access, h func(http.ResponseWriter, *http.Request) error) {
		if acc != accessOpen && !withAPI {
			return
		}
		name := pattern[strings.Index(pattern, " ")+1:]
		var handler http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
			err := authorize(r, acc, name)
			if err == nil {
				err = h(rec, r)
			}
			if err != nil && rec.started {
				// The answer has begun (a stream, a file): it cannot be
				// turned into an error any more, only cut short, so that the
				// client does not take it for complete.
				a.metrics.requests.WithLabelValues(name, strconv.Itoa(rec.code)).Inc()
				a.log.Error(err, "request failed after its answer began", "route", name)
				panic(http.ErrAbortHandler)
			}
			if err != nil {
				writeError(rec, a.log, err)
			}
			a.metrics.requests.WithLabelValues(name, strconv.Itoa(rec.code)).Inc()
		})
		mux.Handle(pattern, handler)
	}
	route("GET "+api.PathStatus, accessScheduler, func(w http.ResponseWriter, r *http.Request) error {
		// Before the agent has adopted what the runtime runs, its status would
		// say it runs nothing, and the control plane would take its sandboxes
		// for lost.
		if !a.Ready() {
			return refuse(http.StatusServiceUnavailable, "the agent is starting")
		}
		return writeJSON(w, a.Status(r.Context()))
	})
	sync := func(w http.ResponseWriter, r *http.Request) error {
		req := &api.SyncRequest{}
		if err := decodeJSON(w, r, req); err != nil {
			return err
		}
		resp, err := a.Sync(r.Context(), req)
		if err != nil {
			return err
		}
		return writeJSON(w, resp)
	}
	route("PUT "+api.PathSync, accessScheduler, sync)
	route("POST "+api.PathSync, accessScheduler, sync)
	route("GET "+api.PathLogs, accessInteractive, a.serveLogs)
	// exec and attach take GET (WebSocket) and POST (SPDY, as the
	// sandbox-apiserver's translator sends).
	route("GET "+api.PathExec, accessInteractive, a.serveExec)
	route("POST "+api.PathExec, accessInteractive, a.serveExec)
	route("GET "+api.PathAttach, accessInteractive, a.serveAttach)
	route("POST "+api.PathAttach, accessInteractive, a.serveAttach)
	route("GET "+api.PathFiles, accessInteractive, a.serveFiles)
	route("PUT "+api.PathFiles, accessInteractive, a.serveFiles)
	route("GET "+api.PathHealthz, accessOpen, func(w http.ResponseWriter, _ *http.Request) error {
		if err := o.health.Live(); err != nil {
			return refuse(http.StatusServiceUnavailable, "%v", err)
		}
		_, err := io.WriteString(w, "ok")
		return err
	})
	route("GET "+api.PathReadyz, accessOpen, func(w http.ResponseWriter, _ *http.Request) error {
		if !a.Ready() {
			return refuse(http.StatusServiceUnavailable, "the agent is starting")
		}
		if err := o.health.Ready(); err != nil {
			return refuse(http.StatusServiceUnavailable, "%v", err)
		}
		_, err := io.WriteString(w, "ok")
		return err
	})
	mux.Handle("GET "+api.PathMetrics, promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}))
	return mux
}

// decodeJSON reads a JSON body strictly: the right content type, at most
// MaxRequestBytes, no unknown fields, nothing after the object.
func decodeJSON(w http.ResponseWriter, r *http.Request, into any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return refuse(http.StatusUnsupportedMediaType, "Content-Type %q: must be application/json", ct)
		}
	}
	body := http.MaxBytesReader(w, r.Body, api.MaxRequestBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return refuse(http.StatusRequestEntityTooLarge, "the body is larger than %d bytes", api.MaxRequestBytes)
		}
		return refuse(http.StatusBadRequest, "malformed body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return refuse(http.StatusBadRequest, "malformed body: data after the JSON object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		return fmt.Errorf("encoding the answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(buf.Bytes())
	return err
}

func writeError(w http.ResponseWriter, log logr.Logger, err error) {
	var re *RequestError
	if !errors.As(err, &re) {
		log.Error(err, "request failed")
		re = &RequestError{Code: http.StatusInternalServerError, Message: err.Error()}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(re.Code)
	_ = json.NewEncoder(w).Encode(api.Error{Code: re.Code, Message: re.Message,
		AppliedEpoch: re.AppliedEpoch, AppliedRevision: re.AppliedRevision})
}

// statusRecorder records the status code of an answer for the request
// metrics, and whether the answer has begun. It passes flushes (streamed
// logs) and hijacks (upgrades to SPDY or WebSocket) through.
type statusRecorder struct {
	http.ResponseWriter
	code    int
	started bool // the status line was written, or the connection hijacked
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code, s.started = code, true
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	s.started = true
	return s.ResponseWriter.Write(p)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		s.started = true
		f.Flush()
	}
}

func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the connection cannot be hijacked")
	}
	s.started = true
	return hj.Hijack()
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// readTail reads r to its end and returns its last limit bytes: a log's
// newest lines are the ones worth serving.
func readTail(r io.Reader, limit int) ([]byte, error) {
	buf := make([]byte, 0, min(limit, 64<<10))
	chunk := make([]byte, 32<<10)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if len(buf) > 2*limit {
			buf = append(buf[:0], buf[len(buf)-limit:]...)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(buf) > limit {
		buf = buf[len(buf)-limit:]
	}
	return buf, nil
}
