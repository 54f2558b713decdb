package pluginargs

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

type testArgs struct {
	SpreadFactor float64 `json:"spreadFactor"`
}

func TestDecodeStrict(t *testing.T) {
	path := field.NewPath("profiles").Index(0).Child("pluginConfig").Index(1).Child("args")
	cases := []struct {
		name    string
		obj     runtime.Object
		want    float64
		wantErr string
	}{
		{name: "no args", obj: nil, want: 0.5},
		{name: "JSON", obj: &runtime.Unknown{Raw: []byte(`{"spreadFactor":0.2}`), ContentType: runtime.ContentTypeJSON}, want: 0.2},
		{name: "unknown field", obj: &runtime.Unknown{Raw: []byte(`{"spredFactor":0.2}`)}, wantErr: `profiles[0].pluginConfig[1].args`},
		{name: "content type", obj: &runtime.Unknown{Raw: []byte(`x`), ContentType: "application/vnd.kubernetes.protobuf"}, wantErr: "unsupported content type"},
		{name: "another type", obj: &runtime.Unknown{}, want: 0.5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := &testArgs{SpreadFactor: 0.5}
			err := DecodeStrict(path, "TestArgs", tc.obj, args)
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			case tc.wantErr == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.wantErr == "" && args.SpreadFactor != tc.want:
				t.Errorf("spreadFactor %v, want %v", args.SpreadFactor, tc.want)
			}
		})
	}
	if err := DecodeStrict(path, "TestArgs", &metav1.Status{}, &testArgs{}); err == nil || !strings.Contains(err.Error(), "want TestArgs") {
		t.Errorf("a typed object of another kind: %v", err)
	}
}
