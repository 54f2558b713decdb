// Package validation checks the internal args of this project's scheduler
// plugins (pkg/apis/config) once defaulted. Errors name the offending field
// under the path given, e.g. profiles[0].pluginConfig[1].args.spreadFactor
// when pkg/scheduler.LoadConfig checks a configuration file, or
// args.spreadFactor when a plugin checks the args it is built with.
package validation

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
)

// ValidateAgentFitArgs checks AgentFit's args. Every value of its one
// field, IgnoreResources, is valid; the function is where a new field's
// check goes, and callers call it like the other plugins'.
func ValidateAgentFitArgs(path *field.Path, args *config.AgentFitArgs) error {
	if args == nil {
		return field.ErrorList{field.Required(path, "AgentFitArgs")}.ToAggregate()
	}
	return nil
}

// ValidateImageAffinityArgs checks ImageAffinity's args: SpreadFactor
// must be within [0, 1].
func ValidateImageAffinityArgs(path *field.Path, args *config.ImageAffinityArgs) error {
	if args == nil {
		return field.ErrorList{field.Required(path, "ImageAffinityArgs")}.ToAggregate()
	}
	var errs field.ErrorList
	// Written so that NaN, which compares false with everything, fails too.
	if f := args.SpreadFactor; !(f >= 0 && f <= 1) {
		errs = append(errs, field.Invalid(path.Child("spreadFactor"), f, "must be between 0 and 1"))
	}
	return errs.ToAggregate()
}
