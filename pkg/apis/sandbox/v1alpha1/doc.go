// Package v1alpha1 holds the fast-sandbox.io/v1alpha1 API: Sandbox, a
// container that a user asks to run, and SandboxPool, a set of warm agent
// Pods that run Sandboxes in their slots.
//
// +k8s:deepcopy-gen=package
// +groupName=fast-sandbox.io
// +groupGoName=Sandbox
// +kubebuilder:object:generate=true
package v1alpha1
