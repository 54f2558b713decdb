// Package imageaffinity is the ImageAffinity scheduler plugin: it places a
// sandbox on an agent whose node already holds the sandbox's image, so no
// pull sits on the start path. Unlike kube-scheduler's ImageLocality, which
// sees the 50 images kubelet reports, it reads every image the agents report,
// and it spreads sandboxes over the agents that hold the image instead of
// piling them on one.
package imageaffinity

import (
	"context"
	"fmt"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/scheme"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/validation"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/imageref"
)

// Name is the plugin's name in a KubeSchedulerConfiguration.
const Name = "ImageAffinity"

// ErrReasonImageNotPresent is the Filter's reason for an agent without the image.
const ErrReasonImageNotPresent = "image not present"

const (
	mb           int64 = 1024 * 1024
	minThreshold int64 = 23 * mb
	maxThreshold int64 = 1000 * mb
)

// ImageAffinity scores agents by the image of the sandbox.
type ImageAffinity struct {
	args config.ImageAffinityArgs
}

var (
	_ fwk.FilterPlugin    = &ImageAffinity{}
	_ fwk.ScorePlugin     = &ImageAffinity{}
	_ fwk.PreScorePlugin  = &ImageAffinity{}
	_ fwk.PreFilterPlugin = &ImageAffinity{}
)

// New builds the plugin from its arguments: a *config.ImageAffinityArgs,
// as a configuration decoded through pkg/apis/config/scheme carries them,
// or nil for the defaults.
func New(_ context.Context, obj runtime.Object, _ fwk.Handle) (fwk.Plugin, error) {
	args := &config.ImageAffinityArgs{}
	if obj == nil {
		if err := scheme.DefaultArgs(args); err != nil {
			return nil, fmt.Errorf("%s: defaulting args: %w", Name, err)
		}
	} else {
		var ok bool
		if args, ok = obj.(*config.ImageAffinityArgs); !ok || args == nil {
			return nil, fmt.Errorf("%s: want args of type *config.ImageAffinityArgs, got %T", Name, obj)
		}
	}
	if err := validation.ValidateImageAffinityArgs(field.NewPath("args"), args); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	return &ImageAffinity{args: *args}, nil
}

// Name returns the plugin's name.
func (pl *ImageAffinity) Name() string { return Name }

const stateKey fwk.StateKey = Name

type state struct{ image string }

func (s *state) Clone() fwk.StateData { return s }

// PreFilter normalizes the sandbox's image once per cycle.
func (pl *ImageAffinity) PreFilter(_ context.Context, cs fwk.CycleState, pod *v1.Pod, _ []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	if len(pod.Spec.Containers) == 0 {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "sandbox has no container")
	}
	img, err := imageref.Normalize(pod.Spec.Containers[0].Image)
	if err != nil {
		return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, fmt.Sprintf("invalid image %q: %v", pod.Spec.Containers[0].Image, err))
	}
	cs.Write(stateKey, &state{image: img})
	return nil, nil
}

// PreFilterExtensions is not used.
func (pl *ImageAffinity) PreFilterExtensions() fwk.PreFilterExtensions { return nil }

// getPreFilterState reads what PreFilter wrote; like noderesources' Fit,
// a missing or foreign state is an error, not a silent recompute.
func getPreFilterState(cs fwk.CycleState) (*state, error) {
	c, err := cs.Read(stateKey)
	if err != nil {
		return nil, fmt.Errorf("reading %q from cycle state: %w", stateKey, err)
	}
	s, ok := c.(*state)
	if !ok {
		return nil, fmt.Errorf("%+v cannot be converted to %s.state", c, Name)
	}
	return s, nil
}

// Filter refuses agents without the image when RequireImage is set.
func (pl *ImageAffinity) Filter(_ context.Context, cs fwk.CycleState, _ *v1.Pod, nodeInfo fwk.NodeInfo) *fwk.Status {
	if !pl.args.RequireImage {
		return nil
	}
	s, err := getPreFilterState(cs)
	if err != nil {
		return fwk.AsStatus(err)
	}
	if _, ok := nodeInfo.GetImageStates()[s.image]; !ok {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, ErrReasonImageNotPresent)
	}
	return nil
}

// PreScore checks that PreFilter left the sandbox's image for Score.
func (pl *ImageAffinity) PreScore(_ context.Context, cs fwk.CycleState, _ *v1.Pod, _ []fwk.NodeInfo) *fwk.Status {
	if _, err := getPreFilterState(cs); err != nil {
		return fwk.AsStatus(err)
	}
	return nil
}

// Score is 0 for an agent without the image; with it, the image's size
// (clamped like ImageLocality: bigger images matter more) scaled to
// [0, MaxScore], lowered by how busy the agent is.
func (pl *ImageAffinity) Score(_ context.Context, cs fwk.CycleState, _ *v1.Pod, nodeInfo fwk.NodeInfo) (int64, *fwk.Status) {
	s, err := getPreFilterState(cs)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	image := s.image
	summary, ok := nodeInfo.GetImageStates()[image]
	warm := hasWarm(nodeInfo.Node(), image)
	if !ok && !warm {
		return 0, nil
	}
	// A warm container counts as the biggest image; it may be announced
	// before the agent's image list shows the image (summary nil then).
	size := maxThreshold
	if !warm {
		size = summary.Size
	}
	if size < minThreshold {
		size = minThreshold
	}
	if size > maxThreshold {
		size = maxThreshold
	}
	// Presence is worth at least half the score; size the rest.
	score := float64(fwk.MaxScore)/2 + float64(fwk.MaxScore)/2*float64(size-minThreshold)/float64(maxThreshold-minThreshold)
	if slots := nodeInfo.GetAllocatable().GetAllowedPodNumber(); slots > 0 {
		used := float64(len(nodeInfo.GetPods())) / float64(slots)
		score *= 1 - pl.args.SpreadFactor*used
	}
	return int64(score), nil
}

// hasWarm says whether the agent node has a free warm container for image.
func hasWarm(node *v1.Node, image string) bool {
	if node == nil || image == "" {
		return false
	}
	for _, w := range strings.Split(node.Annotations[v1alpha1.AnnotationWarmImages], ",") {
		if w == image {
			return true
		}
	}
	return false
}

// ScoreExtensions is not used: scores are already in [0, MaxScore].
func (pl *ImageAffinity) ScoreExtensions() fwk.ScoreExtensions { return nil }
