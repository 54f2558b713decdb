// Package scheme registers this project's scheduler plugin args
// (pkg/apis/config and pkg/apis/config/v1) in kube-scheduler's scheme,
// k8s.io/kubernetes/pkg/scheduler/apis/config/scheme.Scheme, when it is
// imported. A KubeSchedulerConfiguration decoded through Codecs then
// carries our plugins' args as typed internal objects
// (*config.ImageAffinityArgs), defaulted, instead of opaque
// *runtime.Unknown; a field the args do not have (a misspelt
// "spredFactor") is a strict decoding error.
package scheme

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	kubeschedulerscheme "k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
	configv1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/config/v1"
)

var (
	// Scheme is kube-scheduler's scheme, with our args added.
	Scheme = kubeschedulerscheme.Scheme

	// Codecs decodes and encodes through Scheme. It is strict: an unknown
	// or duplicate field, in the configuration or in any plugin's args
	// that the scheme knows, is an error.
	Codecs = serializer.NewCodecFactory(Scheme, serializer.EnableStrict)
)

func init() {
	// kube-scheduler's scheme package filled Scheme in its own init, before
	// our types had joined its scheme builders; add them now.
	AddToScheme(Scheme)
}

// AddToScheme adds kube-scheduler's configuration types and our plugins'
// args, internal and v1, to a scheme.
func AddToScheme(scheme *runtime.Scheme) {
	utilruntime.Must(config.AddToScheme(scheme))
	utilruntime.Must(configv1.AddToScheme(scheme))
}

// DefaultArgs fills into, a plugin's internal args (a *config.AgentFitArgs
// or *config.ImageAffinityArgs), with what a configuration that leaves
// them out gets: the v1 type's defaults, converted. A plugin built without
// args uses it.
func DefaultArgs(into runtime.Object) error {
	gvks, _, err := Scheme.ObjectKinds(into)
	if err != nil {
		return err
	}
	versioned, err := Scheme.New(configv1.SchemeGroupVersion.WithKind(gvks[0].Kind))
	if err != nil {
		return fmt.Errorf("no v1 form of %s: %w", gvks[0].Kind, err)
	}
	Scheme.Default(versioned)
	return Scheme.Convert(versioned, into, nil)
}
