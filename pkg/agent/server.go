package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
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

// Handler serves the agent's HTTP API. It authenticates nobody itself: it is
// served only behind mutual TLS that admits the scheduler's certificate
// alone (agentpki.ServerConfig). It also answers /healthz, /readyz and
// /metrics, as ProbeHandler does.
func (a *Agent) Handler(opts ...HandlerOption) http.Handler {
	return a.handler(true, opts...)
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
	route := func(pattern string, isAPI bool, h func(http.ResponseWriter, *http.Request) error) {
		if isAPI && !withAPI {
			return
		}
		name := pattern[strings.Index(pattern, " ")+1:]
		var handler http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
			if err := h(rec, r); err != nil {
				writeError(rec, a.log, err)
			}
			a.metrics.requests.WithLabelValues(name, strconv.Itoa(rec.code)).Inc()
		})
		mux.Handle(pattern, handler)
	}
	route("GET "+api.PathStatus, true, func(w http.ResponseWriter, r *http.Request) error {
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
	route("PUT "+api.PathSync, true, sync)
	route("POST "+api.PathSync, true, sync)
	route("GET "+api.PathLogs, true, func(w http.ResponseWriter, r *http.Request) error {
		logs, err := a.Logs(r.Context(), r.PathValue("uid"))
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, err = w.Write(logs)
		return err
	})
	route("GET "+api.PathHealthz, false, func(w http.ResponseWriter, _ *http.Request) error {
		if err := o.health.Live(); err != nil {
			return refuse(http.StatusServiceUnavailable, "%v", err)
		}
		_, err := io.WriteString(w, "ok")
		return err
	})
	route("GET "+api.PathReadyz, false, func(w http.ResponseWriter, _ *http.Request) error {
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

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

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
