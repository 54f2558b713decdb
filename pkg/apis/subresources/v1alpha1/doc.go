// Package v1alpha1 holds the subresources.fast-sandbox.io/v1alpha1 API,
// served by the sandbox-apiserver through the kube-apiserver's aggregation
// layer: the interactive subresources of a Sandbox (exec, attach, log,
// files; see docs/interactive.md). Its resource "sandboxes" has no verbs of
// its own: the Sandbox objects live in fast-sandbox.io, and a Sandbox here
// only names the kind the subresources hang off.
//
// The options types are decoded from the query string. Their parameter names
// are those of core's PodExecOptions, PodAttachOptions and PodLogOptions, so
// a client may encode those.
//
// +k8s:deepcopy-gen=package
// +groupName=subresources.fast-sandbox.io
package v1alpha1
