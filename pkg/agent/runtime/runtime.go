// Package runtime defines what the agent needs of a container runtime to run
// sandboxes. The containerd backend lives in runtime/containerd; a VM backend
// (Kata, gVisor, Firecracker through containerd runtime handlers) or a Docker
// backend implements the same interface.
package runtime

import (
	"context"
	"errors"
	"io"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
)

// ErrNotFound is returned for a sandbox the runtime does not have.
var ErrNotFound = errors.New("sandbox not found")

// Info describes a runtime once it is initialized.
type Info struct {
	// Name and version of the runtime, e.g. "containerd 1.6.20".
	Runtime string
	// CgroupParent is the cgroup under which every sandbox is placed.
	CgroupParent string
}

// Runtime runs sandbox containers. Implementations are safe for concurrent
// use; every method is idempotent for one sandbox UID, and the runtime's own
// records (e.g. container labels) are the source of truth, so a restarted
// agent finds every sandbox again with ListSandboxes.
type Runtime interface {
	// Initialize connects to the runtime and prepares it; it is called once
	// before anything else.
	Initialize(ctx context.Context) (Info, error)
	// CreateSandbox creates and starts the sandbox's container and returns its
	// status: Running, or Failed with a reason (e.g. ImageNotPresent). A
	// sandbox that already exists is not created again; its status is returned.
	CreateSandbox(ctx context.Context, spec api.SandboxSpec) api.SandboxStatus
	// StopSandbox kills the sandbox's process if it runs and keeps its
	// container and logs; its exit is reported as any other. Stopping a
	// sandbox that does not run, or does not exist, succeeds.
	StopSandbox(ctx context.Context, uid string) error
	// DeleteSandbox kills the sandbox's process and removes its container,
	// snapshot and logs. Deleting a sandbox that does not exist succeeds.
	DeleteSandbox(ctx context.Context, uid string) error
	// ListSandboxes returns every sandbox the runtime has, with its state.
	ListSandboxes(ctx context.Context) ([]api.SandboxStatus, error)
	// ListImages returns the images available to sandboxes.
	ListImages(ctx context.Context) ([]api.Image, error)
	// Logs returns the sandbox's combined stdout and stderr so far.
	Logs(ctx context.Context, uid string) (io.ReadCloser, error)
	// Exits delivers the final status of each sandbox whose process ended.
	Exits() <-chan api.SandboxStatus
	// Close releases the runtime's connections; sandboxes keep running.
	Close() error
}

// WarmLister is a runtime that keeps warm containers (created ahead of time
// so that sandboxes start in them without a container creation).
type WarmLister interface {
	// WarmContainers counts the warm containers waiting for a sandbox.
	WarmContainers() []api.WarmImage
}
