package imageaffinity

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fast-sandbox/fast-sandbox/pkg/pluginargs"
)

// ArgsKind is the kind ImageAffinityArgs may carry in a configuration.
const ArgsKind = Name + "Args"

// DefaultSpreadFactor is SpreadFactor when the configuration leaves it out.
const DefaultSpreadFactor = 0.5

// SetDefaults_ImageAffinityArgs fills what is unset: SpreadFactor
// DefaultSpreadFactor.
//
//nolint:revive,stylecheck // named like kube-scheduler's defaulting functions
func SetDefaults_ImageAffinityArgs(args *ImageAffinityArgs) {
	if args.SpreadFactor == nil {
		f := DefaultSpreadFactor
		args.SpreadFactor = &f
	}
}

// ValidateImageAffinityArgs checks defaulted arguments; errors name their
// field under path (e.g. profiles[0].pluginConfig[1].args.spreadFactor).
func ValidateImageAffinityArgs(path *field.Path, args *ImageAffinityArgs) error {
	var errs field.ErrorList
	if args.Kind != "" && args.Kind != ArgsKind {
		errs = append(errs, field.Invalid(path.Child("kind"), args.Kind, fmt.Sprintf("must be %s (or left out)", ArgsKind)))
	}
	if args.SpreadFactor == nil {
		errs = append(errs, field.Required(path.Child("spreadFactor"), "defaulting sets it"))
	} else if f := *args.SpreadFactor; f < 0 || f > 1 {
		errs = append(errs, field.Invalid(path.Child("spreadFactor"), f, "must be between 0 and 1"))
	}
	return errs.ToAggregate()
}

// DecodeArgs turns a pluginConfig's args into defaulted, validated
// ImageAffinityArgs. Decoding is strict: a field the type does not have (a
// misspelt "spredFactor") is an error, not silently ignored. obj may be nil
// (no args) or a *runtime.Unknown as the framework passes it.
func DecodeArgs(path *field.Path, obj runtime.Object) (*ImageAffinityArgs, error) {
	args := &ImageAffinityArgs{}
	if err := pluginargs.DecodeStrict(path, ArgsKind, obj, args); err != nil {
		return nil, err
	}
	SetDefaults_ImageAffinityArgs(args)
	if err := ValidateImageAffinityArgs(path, args); err != nil {
		return nil, err
	}
	return args, nil
}
