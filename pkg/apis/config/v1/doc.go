// Package v1 is the versioned form of this project's scheduler plugin
// args, as a KubeSchedulerConfiguration of apiVersion
// kubescheduler.config.k8s.io/v1 spells them in a profile's pluginConfig:
// their JSON field names, their defaults (defaults.go), and their
// conversion to the internal types of pkg/apis/config. The types join
// kube-scheduler's own v1 scheme builder, so decoding a configuration
// decodes, defaults and converts them like kube-scheduler's in-tree args.
//
// +k8s:deepcopy-gen=package
// +k8s:conversion-gen=github.com/fast-sandbox/fast-sandbox/pkg/apis/config
// +k8s:defaulter-gen=TypeMeta
// +groupName=kubescheduler.config.k8s.io
package v1
