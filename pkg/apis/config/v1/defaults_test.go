package v1

import (
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/utils/ptr"
)

// TestDefaults runs the defaulters as the scheme does: what is unset gets
// its default, what is set (even to a zero value) is kept.
func TestDefaults(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		in, out runtime.Object
	}{
		{"AgentFit empty", &AgentFitArgs{}, &AgentFitArgs{IgnoreResources: ptr.To(false)}},
		{"AgentFit set", &AgentFitArgs{IgnoreResources: ptr.To(true)}, &AgentFitArgs{IgnoreResources: ptr.To(true)}},
		{"ImageAffinity empty", &ImageAffinityArgs{}, &ImageAffinityArgs{RequireImage: ptr.To(false), SpreadFactor: ptr.To(DefaultSpreadFactor)}},
		{"ImageAffinity spreadFactor 0 is kept", &ImageAffinityArgs{SpreadFactor: ptr.To(0.0)}, &ImageAffinityArgs{RequireImage: ptr.To(false), SpreadFactor: ptr.To(0.0)}},
		{"ImageAffinity set", &ImageAffinityArgs{RequireImage: ptr.To(true), SpreadFactor: ptr.To(1.0)}, &ImageAffinityArgs{RequireImage: ptr.To(true), SpreadFactor: ptr.To(1.0)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			scheme.Default(tc.in)
			if !reflect.DeepEqual(tc.in, tc.out) {
				t.Errorf("(-want +got):\n%s", diff.Diff(tc.out, tc.in))
			}
		})
	}
}
