// Package agentfit is the AgentFit scheduler plugin: it lets a sandbox onto
// an agent only if the agent is healthy and not draining, has a free slot,
// and has the CPU and memory the sandbox asks for left.
package agentfit

import (
	"context"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/scheme"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/validation"
)

// Name is the plugin's name in a KubeSchedulerConfiguration.
const Name = "AgentFit"

// Reasons an agent does not fit; the scheduler counts them in its message
// ("0/12 agents available: 7 no free slot, 5 insufficient memory").
const (
	ReasonNotReady           = "agent not ready"
	ReasonDraining           = "agent draining"
	ReasonNoFreeSlot         = "no free slot"
	ReasonInsufficientCPU    = "insufficient cpu"
	ReasonInsufficientMemory = "insufficient memory"
)

// AgentFit filters agents.
type AgentFit struct {
	args config.AgentFitArgs
}

var (
	_ fwk.PreFilterPlugin = &AgentFit{}
	_ fwk.FilterPlugin    = &AgentFit{}
)

// New builds the plugin from its arguments: a *config.AgentFitArgs, as a
// configuration decoded through pkg/apis/config/scheme carries them, or nil
// for the defaults.
func New(_ context.Context, obj runtime.Object, _ fwk.Handle) (fwk.Plugin, error) {
	args := &config.AgentFitArgs{}
	if obj == nil {
		if err := scheme.DefaultArgs(args); err != nil {
			return nil, fmt.Errorf("%s: defaulting args: %w", Name, err)
		}
	} else {
		var ok bool
		if args, ok = obj.(*config.AgentFitArgs); !ok || args == nil {
			return nil, fmt.Errorf("%s: want args of type *config.AgentFitArgs, got %T", Name, obj)
		}
	}
	if err := validation.ValidateAgentFitArgs(field.NewPath("args"), args); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	return &AgentFit{args: *args}, nil
}

// Name returns the plugin's name.
func (pl *AgentFit) Name() string { return Name }

const stateKey fwk.StateKey = Name

type request struct{ milliCPU, memory int64 }

func (r *request) Clone() fwk.StateData { return r }

// PreFilter sums the sandbox's requests once per cycle.
func (pl *AgentFit) PreFilter(_ context.Context, cs fwk.CycleState, pod *v1.Pod, _ []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	cs.Write(stateKey, requestOf(pod))
	return nil, nil
}

// getPreFilterState reads what PreFilter wrote; like noderesources' Fit,
// a missing or foreign state is an error, not a silent recompute.
func getPreFilterState(cs fwk.CycleState) (*request, error) {
	c, err := cs.Read(stateKey)
	if err != nil {
		return nil, fmt.Errorf("reading %q from cycle state: %w", stateKey, err)
	}
	r, ok := c.(*request)
	if !ok {
		return nil, fmt.Errorf("%+v cannot be converted to %s.request", c, Name)
	}
	return r, nil
}

func requestOf(pod *v1.Pod) *request {
	r := &request{}
	for _, c := range pod.Spec.Containers {
		r.milliCPU += c.Resources.Requests.Cpu().MilliValue()
		r.memory += c.Resources.Requests.Memory().Value()
	}
	return r
}

// PreFilterExtensions is not used.
func (pl *AgentFit) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// Filter checks health, draining, slots and resources, in that order.
func (pl *AgentFit) Filter(_ context.Context, cs fwk.CycleState, _ *v1.Pod, nodeInfo fwk.NodeInfo) *fwk.Status {
	node := nodeInfo.Node()
	if node == nil {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, ReasonNotReady)
	}
	if !ready(node) {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, ReasonNotReady)
	}
	if node.Spec.Unschedulable {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, ReasonDraining)
	}
	alloc := nodeInfo.GetAllocatable()
	if len(nodeInfo.GetPods())+1 > int(alloc.GetAllowedPodNumber()) {
		return fwk.NewStatus(fwk.Unschedulable, ReasonNoFreeSlot)
	}
	if pl.args.IgnoreResources {
		return nil
	}
	req, err := getPreFilterState(cs)
	if err != nil {
		return fwk.AsStatus(err)
	}
	used := nodeInfo.GetRequested()
	var reasons []string
	if alloc.GetMilliCPU() > 0 && used.GetMilliCPU()+req.milliCPU > alloc.GetMilliCPU() {
		reasons = append(reasons, ReasonInsufficientCPU)
	}
	if alloc.GetMemory() > 0 && used.GetMemory()+req.memory > alloc.GetMemory() {
		reasons = append(reasons, ReasonInsufficientMemory)
	}
	if len(reasons) > 0 {
		return fwk.NewStatus(fwk.Unschedulable, reasons...)
	}
	return nil
}

func ready(node *v1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}
