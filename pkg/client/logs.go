package client

import (
	"context"
	"io"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// LogOptions select the part of a sandbox's log (its main process's stdout
// and stderr) to read; the names are core/v1.PodLogOptions'.
type LogOptions struct {
	// Follow streams the log as it grows until the sandbox finishes (or
	// ctx ends).
	Follow bool
	// TailLines starts that many lines before the end.
	TailLines *int64
	// SinceSeconds starts at lines written at most that long ago; only one
	// of SinceSeconds and SinceTime may be set.
	SinceSeconds *int64
	// SinceTime starts at lines written at or after that time.
	SinceTime *metav1.Time
	// Timestamps prefixes each line with its RFC 3339 time.
	Timestamps bool
	// LimitBytes stops after that many bytes.
	LimitBytes *int64
}

// Logs copies a sandbox's log to w.
func (c *Client) Logs(ctx context.Context, namespace, name string, o LogOptions, w io.Writer) error {
	rc, err := c.LogStream(ctx, namespace, name, o)
	if err != nil {
		return err
	}
	defer rc.Close() //nolint:errcheck // read-only stream
	_, err = io.Copy(w, rc)
	return err
}

// LogStream opens a sandbox's log; the caller closes it.
func (c *Client) LogStream(ctx context.Context, namespace, name string, o LogOptions) (io.ReadCloser, error) {
	return c.logRequest(namespace, name, o).Stream(ctx)
}

func (c *Client) logRequest(namespace, name string, o LogOptions) *rest.Request {
	return c.subresource(http.MethodGet, namespace, name, "log").
		SpecificallyVersionedParams(&corev1.PodLogOptions{
			Follow:       o.Follow,
			TailLines:    o.TailLines,
			SinceSeconds: o.SinceSeconds,
			SinceTime:    o.SinceTime,
			Timestamps:   o.Timestamps,
			LimitBytes:   o.LimitBytes,
		}, scheme.ParameterCodec, corev1.SchemeGroupVersion)
}
