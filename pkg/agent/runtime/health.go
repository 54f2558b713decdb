package runtime

import "context"

// Pinger is a runtime that can say cheaply whether it answers (e.g. one
// small RPC to its daemon). The agent asks it in the background, never on a
// request's path, and reports the outcome through its readiness and
// liveness probes.
type Pinger interface {
	// Ping returns nil if the runtime answered before ctx ended.
	Ping(ctx context.Context) error
}
