// Package pluginargs decodes the args of a plugin's pluginConfig entry
// strictly, for every plugin of this project: a field the args type does
// not have (a misspelt "spredFactor") is an error naming the entry, not
// silently ignored as kube-scheduler's lenient decoding of unknown args
// would.
package pluginargs

import (
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// DecodeStrict decodes obj into into. obj may be nil (no args: into is left
// as it is) or a *runtime.Unknown as the framework passes it; kind names
// the args type in errors.
func DecodeStrict(path *field.Path, kind string, obj runtime.Object, into any) error {
	switch o := obj.(type) {
	case nil:
		return nil
	case *runtime.Unknown:
		if o.ContentType != "" && o.ContentType != runtime.ContentTypeJSON && o.ContentType != runtime.ContentTypeYAML {
			return fmt.Errorf("%s: unsupported content type %q", path, o.ContentType)
		}
		if len(o.Raw) > 0 {
			if err := yaml.UnmarshalStrict(o.Raw, into); err != nil {
				return fmt.Errorf("decoding %s: %w", path, err)
			}
		}
		return nil
	default:
		return fmt.Errorf("%s: want %s, got %T", path, kind, obj)
	}
}
