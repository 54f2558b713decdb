package v1

import (
	"k8s.io/utils/ptr"
)

// DefaultSpreadFactor is ImageAffinityArgs.SpreadFactor when a
// configuration leaves it out.
const DefaultSpreadFactor = 0.5

// SetDefaults_AgentFitArgs fills what is unset: IgnoreResources false
// (the fit counts CPU and memory).
func SetDefaults_AgentFitArgs(obj *AgentFitArgs) {
	if obj.IgnoreResources == nil {
		obj.IgnoreResources = ptr.To(false)
	}
}

// SetDefaults_ImageAffinityArgs fills what is unset: RequireImage false,
// SpreadFactor DefaultSpreadFactor. An explicit spreadFactor: 0 is kept.
func SetDefaults_ImageAffinityArgs(obj *ImageAffinityArgs) {
	if obj.RequireImage == nil {
		obj.RequireImage = ptr.To(false)
	}
	if obj.SpreadFactor == nil {
		obj.SpreadFactor = ptr.To(DefaultSpreadFactor)
	}
}
