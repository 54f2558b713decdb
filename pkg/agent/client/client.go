// Package client calls an agent's HTTP API from the control plane.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// Client talks to one agent.
type Client struct {
	base string
	http *http.Client
}

// DefaultHTTPClient keeps connections to agents alive. It sets no overall
// timeout: every call is bounded by its context, so a sync given a minute
// (a create may pull an image) is not cut short by a shorter client-wide
// limit.
var DefaultHTTPClient = &http.Client{
	Transport: &http.Transport{
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	},
}

// MaxResponseBytes bounds what is read of an agent's answer.
const MaxResponseBytes = 64 << 20

// New returns a client for the agent at baseURL (e.g.
// "https://10.244.0.7:8081"). hc authenticates both ends: the agent API takes
// only mutual TLS with the scheduler's certificate (or, for the interactive
// routes only, the sandbox-apiserver's; status and sync answer it 403), and
// the caller must verify that the server's certificate names the agent it
// means to reach (agentpki.ClientCredentials.Transport does both).
func New(baseURL string, hc *http.Client) *Client {
	if hc == nil {
		hc = DefaultHTTPClient
	}
	return &Client{base: strings.TrimSuffix(baseURL, "/"), http: hc}
}

// StatusError is an answer other than 2xx.
type StatusError struct {
	Code    int
	Message string
	// AppliedEpoch and AppliedRevision come with a 409: the newest sync the
	// agent applied.
	AppliedEpoch, AppliedRevision int64
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("agent answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// IsConflict says whether err is the agent refusing a stale sync.
func IsConflict(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusConflict
}

// IsRefused says whether err is the agent refusing a request as invalid or
// impossible (4xx other than 409).
func IsRefused(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code/100 == 4 && se.Code != http.StatusConflict
}

// IsStarting says whether err is the agent answering that it is still
// starting (503): it is alive, not silent.
func IsStarting(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusServiceUnavailable
}

// Status asks the agent for its status.
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	out := &api.Status{}
	return out, c.do(ctx, http.MethodGet, api.PathStatus, nil, out)
}

// Sync sends the complete desired set of sandboxes.
func (c *Client) Sync(ctx context.Context, req *api.SyncRequest) (*api.SyncResponse, error) {
	out := &api.SyncResponse{}
	return out, c.do(ctx, http.MethodPut, api.PathSync, req, out)
}

// Logs returns a sandbox's output.
func (c *Client) Logs(ctx context.Context, uid string) ([]byte, error) {
	var out bytes.Buffer
	if err := c.do(ctx, http.MethodGet, strings.Replace(api.PathLogs, "{uid}", uid, 1), nil, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		// Sandbox env values are data, not HTML: escaping <, > and & would
		// grow them sixfold.
		enc.SetEscapeHTML(false)
		if err := enc.Encode(in); err != nil {
			return fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		body = &buf
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s%s: %w", method, c.base, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode/100 != 2 {
		e := api.Error{}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Message, AppliedEpoch: e.AppliedEpoch, AppliedRevision: e.AppliedRevision}
	}
	limited := io.LimitReader(resp.Body, MaxResponseBytes)
	if buf, ok := out.(*bytes.Buffer); ok {
		_, err = io.Copy(buf, limited)
		return err
	}
	if err := json.NewDecoder(limited).Decode(out); err != nil {
		return fmt.Errorf("decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
}
