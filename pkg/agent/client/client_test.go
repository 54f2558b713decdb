package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// An agent's answer is read only up to MaxResponseBytes: an endless answer
// is an error, not a scheduler that reads forever.
func TestAnswerIsBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"agent":`))
		pad := []byte(strings.Repeat(" ", 1<<20))
		for { // without end: only the client's bound ends the call
			if _, err := w.Write(pad); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := New(srv.URL, nil).Status(ctx)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "decoding") {
		t.Fatalf("an endless answer: err %v (context: %v), want a decoding error once %d bytes are read", err, ctx.Err(), MaxResponseBytes)
	}
}

// Calls are bounded by their own context only: a sync given a minute (a
// create may pull an image) is not cut short by a client-wide timeout.
func TestCallsBoundedByTheirContext(t *testing.T) {
	if DefaultHTTPClient.Timeout != 0 {
		t.Fatalf("DefaultHTTPClient.Timeout = %s; calls must be bounded by their context only", DefaultHTTPClient.Timeout)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(time.Second)
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := New(srv.URL, nil).Status(ctx); err == nil {
		t.Fatal("a call past its context's deadline succeeded")
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("the call took %s; its context allowed 100ms", d)
	}
}
