package v1

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	schedconfigv1 "k8s.io/kube-scheduler/config/v1"
)

// SchemeGroupVersion is kube-scheduler's configuration group at v1, which
// the args types join.
var SchemeGroupVersion = schema.GroupVersion{Group: schedconfigv1.GroupName, Version: "v1"}

var (
	// localSchemeBuilder is kube-scheduler's own v1 builder: every scheme
	// built from it after this package's init, including the one
	// kube-scheduler defaults and converts plugin args with, knows our
	// types, their defaults and their conversions.
	localSchemeBuilder = &schedconfigv1.SchemeBuilder
	// AddToScheme adds kube-scheduler's v1 configuration types and ours to
	// a scheme.
	AddToScheme = localSchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&AgentFitArgs{},
		&ImageAffinityArgs{},
	)
	return nil
}

func init() {
	// The generated conversions register themselves
	// (zz_generated.conversion.go); the types and the defaulters here.
	localSchemeBuilder.Register(addKnownTypes, RegisterDefaults)
}
