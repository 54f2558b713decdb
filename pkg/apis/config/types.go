package config

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// AgentFitArgs are the arguments of the AgentFit plugin.
type AgentFitArgs struct {
	metav1.TypeMeta

	// IgnoreResources makes the fit count slots only, for pools whose
	// sandboxes share the agent's CPU and memory without limits of their own.
	IgnoreResources bool
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object

// ImageAffinityArgs are the arguments of the ImageAffinity plugin.
type ImageAffinityArgs struct {
	metav1.TypeMeta

	// RequireImage makes Filter refuse agents whose node lacks the image,
	// for pools that never pull. False: Score prefers the image, and an
	// agent without it fails the sandbox with ImageNotPresent.
	RequireImage bool
	// SpreadFactor in [0, 1] lowers the score of busy agents among those
	// holding the image: score × (1 − SpreadFactor × used/slots). 0 packs,
	// 1 spreads as much as it can.
	SpreadFactor float64
}
