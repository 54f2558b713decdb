package containerd

import (
	"context"
	"errors"
	"fmt"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

var _ runtime.Pinger = &Runtime{}

// Ping asks containerd for its version, the cheapest call it answers. The
// client dials containerd's socket path again after losing it (backoff at
// most its 5 s timeout), so once a restarted containerd listens again, the
// same client answers: Ping says when. Call it after Initialize.
func (r *Runtime) Ping(ctx context.Context) error {
	if r.client == nil {
		return errors.New("not connected to containerd")
	}
	if _, err := r.client.Version(ctx); err != nil {
		return fmt.Errorf("asking containerd at %s for its version: %w", r.cfg.Address, err)
	}
	return nil
}
