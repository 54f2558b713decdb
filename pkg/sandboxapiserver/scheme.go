package sandboxapiserver

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"

	subv1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/subresources/v1alpha1"
)

var (
	// Scheme holds the served group (subresources.fast-sandbox.io/v1alpha1,
	// with the conversions of its options from query parameters) and the
	// meta types every API server serves.
	Scheme = runtime.NewScheme()
	// Codecs are the serializers of Scheme.
	Codecs = serializer.NewCodecFactory(Scheme)
	// ParameterCodec decodes the options of a request from its query over
	// Scheme (metav1.ParameterCodec knows only the meta types).
	ParameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	utilruntime.Must(subv1alpha1.AddToScheme(Scheme))
	// The installer creates the v1 list, get and delete options of every
	// group version from the scheme.
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	Scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
}
