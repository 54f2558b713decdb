// Package sandboxbinder is the SandboxBinder scheduler plugin: Reserve takes
// the slot in the scheduler's agent cache at once, so the next sandbox does
// not see it free; Bind records the placement on the Sandbox before the
// agent is told, then tells the agent and records what it answered.
package sandboxbinder

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fwk "k8s.io/kube-scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
)

// Name is the plugin's name in a KubeSchedulerConfiguration.
const Name = "SandboxBinder"

// Binder is what the scheduler provides: the agent cache and the binding.
type Binder interface {
	// Assume takes a slot of the agent for the sandbox in the cache.
	Assume(ctx context.Context, pod *v1.Pod, agent string) error
	// Forget gives the slot back.
	Forget(ctx context.Context, pod *v1.Pod, agent string)
	// Bind records the placement durably, tells the agent, and records the outcome.
	Bind(ctx context.Context, pod *v1.Pod, agent string) error
}

// SandboxBinder binds sandboxes to agent slots.
type SandboxBinder struct {
	binder Binder
}

var (
	_ fwk.ReservePlugin = &SandboxBinder{}
	_ fwk.BindPlugin    = &SandboxBinder{}
)

// NewFactory returns the plugin factory bound to the scheduler's Binder.
func NewFactory(b Binder) frameworkruntime.PluginFactory {
	return func(_ context.Context, _ runtime.Object, _ fwk.Handle) (fwk.Plugin, error) {
		if b == nil {
			return nil, fmt.Errorf("%s needs a binder", Name)
		}
		return &SandboxBinder{binder: b}, nil
	}
}

// Name returns the plugin's name.
func (pl *SandboxBinder) Name() string { return Name }

// Reserve assumes the sandbox on the agent.
func (pl *SandboxBinder) Reserve(ctx context.Context, _ fwk.CycleState, pod *v1.Pod, agent string) *fwk.Status {
	if err := pl.binder.Assume(ctx, pod, agent); err != nil {
		return fwk.AsStatus(fmt.Errorf("assuming sandbox on agent %s: %w", agent, err))
	}
	return nil
}

// Unreserve forgets the assumption.
func (pl *SandboxBinder) Unreserve(ctx context.Context, _ fwk.CycleState, pod *v1.Pod, agent string) {
	pl.binder.Forget(ctx, pod, agent)
}

// Bind binds the sandbox to the agent.
func (pl *SandboxBinder) Bind(ctx context.Context, _ fwk.CycleState, pod *v1.Pod, agent string) *fwk.Status {
	if err := pl.binder.Bind(ctx, pod, agent); err != nil {
		return fwk.AsStatus(err)
	}
	return nil
}
