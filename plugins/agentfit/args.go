package agentfit

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fast-sandbox/fast-sandbox/pkg/pluginargs"
)

// ArgsKind is the kind AgentFitArgs may carry in a configuration.
const ArgsKind = Name + "Args"

// SetDefaults_AgentFitArgs fills what is unset. Every field's zero value is
// its default today (IgnoreResources false: the fit counts CPU and memory);
// the function is where a new field's default goes, as in kube-scheduler.
//
//nolint:revive,stylecheck // named like kube-scheduler's defaulting functions
func SetDefaults_AgentFitArgs(_ *AgentFitArgs) {}

// ValidateAgentFitArgs checks defaulted arguments; errors name their field
// under path (e.g. profiles[0].pluginConfig[1].args.kind).
func ValidateAgentFitArgs(path *field.Path, args *AgentFitArgs) error {
	var errs field.ErrorList
	if args.Kind != "" && args.Kind != ArgsKind {
		errs = append(errs, field.Invalid(path.Child("kind"), args.Kind, fmt.Sprintf("must be %s (or left out)", ArgsKind)))
	}
	return errs.ToAggregate()
}

// DecodeArgs turns a pluginConfig's args into defaulted, validated
// AgentFitArgs. Decoding is strict: a field the type does not have (a
// misspelt "ignoreResource") is an error, not silently ignored. obj may be
// nil (no args) or a *runtime.Unknown as the framework passes it.
func DecodeArgs(path *field.Path, obj runtime.Object) (*AgentFitArgs, error) {
	args := &AgentFitArgs{}
	if err := pluginargs.DecodeStrict(path, ArgsKind, obj, args); err != nil {
		return nil, err
	}
	SetDefaults_AgentFitArgs(args)
	if err := ValidateAgentFitArgs(path, args); err != nil {
		return nil, err
	}
	return args, nil
}
