// Package config holds the internal types of the arguments of this
// project's scheduler plugins (AgentFitArgs, ImageAffinityArgs), the form
// the plugins receive: a KubeSchedulerConfiguration decoded through the
// scheme of pkg/apis/config/scheme carries them typed, defaulted and
// converted from their versioned form (pkg/apis/config/v1). Like
// kube-scheduler's own plugin args, they are registered in the group
// kubescheduler.config.k8s.io, internal version.
//
// +k8s:deepcopy-gen=package
// +groupName=kubescheduler.config.k8s.io
package config
