package v1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// AgentFitArgs are the arguments of the AgentFit plugin.
type AgentFitArgs struct {
	metav1.TypeMeta `json:",inline"`

	// IgnoreResources makes the fit count slots only, for pools whose
	// sandboxes share the agent's CPU and memory without limits of their own.
	// Default false: the fit counts CPU and memory.
	IgnoreResources *bool `json:"ignoreResources,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageAffinityArgs are the arguments of the ImageAffinity plugin.
type ImageAffinityArgs struct {
	metav1.TypeMeta `json:",inline"`

	// RequireImage makes Filter refuse agents whose node lacks the image,
	// for pools that never pull. Default false: Score prefers the image, and
	// an agent without it fails the sandbox with ImageNotPresent.
	RequireImage *bool `json:"requireImage,omitempty"`
	// SpreadFactor in [0, 1] lowers the score of busy agents among those
	// holding the image: score × (1 − SpreadFactor × used/slots). 0 packs,
	// 1 spreads as much as it can. Default 0.5 (DefaultSpreadFactor).
	SpreadFactor *float64 `json:"spreadFactor,omitempty"`
}
