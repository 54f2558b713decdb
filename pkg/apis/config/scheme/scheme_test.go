package scheme

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/diff"
	"k8s.io/apimachinery/pkg/util/validation/field"
	schedconfig "k8s.io/kubernetes/pkg/scheduler/apis/config"
	kubeschedulerscheme "k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
	configv1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/config/v1"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/validation"
)

// head enables both our plugins and nothing else, so the only args the
// decoded profile carries are ours (kube-scheduler adds defaulted args for
// every enabled plugin whose kind the scheme knows).
const head = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: fast-sandbox
  plugins:
    multiPoint:
      enabled:
      - name: AgentFit
      - name: ImageAffinity
      disabled:
      - name: "*"
`

var (
	defaultAgentFit      = &config.AgentFitArgs{IgnoreResources: false}
	defaultImageAffinity = &config.ImageAffinityArgs{RequireImage: false, SpreadFactor: configv1.DefaultSpreadFactor}
)

// validateArgs checks our plugins' args in cfg as pkg/scheduler.LoadConfig
// does, naming each field by its path in the file.
func validateArgs(cfg *schedconfig.KubeSchedulerConfiguration) error {
	for i, p := range cfg.Profiles {
		for j, pc := range p.PluginConfig {
			path := field.NewPath("profiles").Index(i).Child("pluginConfig").Index(j).Child("args")
			var err error
			switch args := pc.Args.(type) {
			case *config.AgentFitArgs:
				err = validation.ValidateAgentFitArgs(path, args)
			case *config.ImageAffinityArgs:
				err = validation.ValidateImageAffinityArgs(path, args)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// TestCodecsDecodePluginArgs decodes whole KubeSchedulerConfigurations:
// our args come out typed (internal types), defaulted when left out or
// empty, explicit values kept; an unknown or duplicate field, a value of
// the wrong type or args of another kind are decoding errors. Both our
// Codecs and kube-scheduler's own (which is strict too) are checked, so a
// loader using either cannot silently drop a misspelt field.
func TestCodecsDecodePluginArgs(t *testing.T) {
	cases := []struct {
		name         string
		pluginConfig string
		want         map[string]runtime.Object // args by plugin name
		wantErr      string                    // decoding fails with this
		wantStrict   bool                      // ... as a strict decoding error
		wantInvalid  string                    // decoding succeeds, validation fails with this
	}{
		{
			name: "no pluginConfig: defaults for both",
			want: map[string]runtime.Object{"AgentFit": defaultAgentFit, "ImageAffinity": defaultImageAffinity},
		},
		{
			name: "entries without args: defaults",
			pluginConfig: `  - name: AgentFit
  - name: ImageAffinity
`,
			want: map[string]runtime.Object{"AgentFit": defaultAgentFit, "ImageAffinity": defaultImageAffinity},
		},
		{
			name: "null args: defaults",
			pluginConfig: `  - name: AgentFit
    args: null
  - name: ImageAffinity
    args: null
`,
			want: map[string]runtime.Object{"AgentFit": defaultAgentFit, "ImageAffinity": defaultImageAffinity},
		},
		{
			name: "empty args: defaults",
			pluginConfig: `  - name: AgentFit
    args: {}
  - name: ImageAffinity
    args: {}
`,
			want: map[string]runtime.Object{"AgentFit": defaultAgentFit, "ImageAffinity": defaultImageAffinity},
		},
		{
			name: "explicit values are kept; spreadFactor 0 is not defaulted",
			pluginConfig: `  - name: AgentFit
    args:
      ignoreResources: true
  - name: ImageAffinity
    args:
      requireImage: true
      spreadFactor: 0
`,
			want: map[string]runtime.Object{
				"AgentFit":      &config.AgentFitArgs{IgnoreResources: true},
				"ImageAffinity": &config.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0},
			},
		},
		{
			name: "one field given, the other defaulted",
			pluginConfig: `  - name: ImageAffinity
    args:
      spreadFactor: 1
`,
			want: map[string]runtime.Object{"AgentFit": defaultAgentFit, "ImageAffinity": &config.ImageAffinityArgs{SpreadFactor: 1}},
		},
		{
			name: "apiVersion and kind may be given",
			pluginConfig: `  - name: ImageAffinity
    args:
      apiVersion: kubescheduler.config.k8s.io/v1
      kind: ImageAffinityArgs
      spreadFactor: 0.25
`,
			want: map[string]runtime.Object{"AgentFit": defaultAgentFit, "ImageAffinity": &config.ImageAffinityArgs{SpreadFactor: 0.25}},
		},
		{
			name: "unknown field spredFactor",
			pluginConfig: `  - name: ImageAffinity
    args:
      spredFactor: 0.2
`,
			wantErr:    `decoding args for plugin ImageAffinity: strict decoding error: unknown field "spredFactor"`,
			wantStrict: true,
		},
		{
			name: "unknown AgentFit field ignoreResource",
			pluginConfig: `  - name: AgentFit
    args:
      ignoreResource: true
`,
			wantErr:    `decoding args for plugin AgentFit: strict decoding error: unknown field "ignoreResource"`,
			wantStrict: true,
		},
		{
			name: "duplicate field",
			pluginConfig: `  - name: ImageAffinity
    args:
      spreadFactor: 0.2
      spreadFactor: 0.3
`,
			wantErr:    `key "spreadFactor" already set`,
			wantStrict: true,
		},
		{
			name: "value of the wrong type",
			pluginConfig: `  - name: ImageAffinity
    args:
      spreadFactor: half
`,
			wantErr: "decoding .profiles[0].pluginConfig[0]: decoding args for plugin ImageAffinity: json: cannot unmarshal string",
		},
		{
			name: "args of another plugin's kind",
			pluginConfig: `  - name: ImageAffinity
    args:
      kind: AgentFitArgs
`,
			wantErr: "args for plugin ImageAffinity were not of type ImageAffinityArgs.kubescheduler.config.k8s.io, got AgentFitArgs.kubescheduler.config.k8s.io",
		},
		{
			name: "args of an unknown kind",
			pluginConfig: `  - name: AgentFit
    args:
      kind: AgentFitArguments
`,
			wantErr: `no kind "AgentFitArguments" is registered`,
		},
		{
			name: "spreadFactor above 1",
			pluginConfig: `  - name: AgentFit
  - name: ImageAffinity
    args:
      spreadFactor: 2
`,
			wantInvalid: "profiles[0].pluginConfig[1].args.spreadFactor: Invalid value: 2: must be between 0 and 1",
		},
		{
			name: "negative spreadFactor",
			pluginConfig: `  - name: ImageAffinity
    args:
      spreadFactor: -0.5
`,
			wantInvalid: "profiles[0].pluginConfig[0].args.spreadFactor: Invalid value: -0.5: must be between 0 and 1",
		},
	}
	codecs := []struct {
		name   string
		codecs serializer.CodecFactory
	}{
		{"our Codecs", Codecs},
		{"kube-scheduler's Codecs", kubeschedulerscheme.Codecs},
	}
	for _, c := range codecs {
		for _, tc := range cases {
			t.Run(c.name+"/"+tc.name, func(t *testing.T) {
				data := head
				if tc.pluginConfig != "" {
					data += "  pluginConfig:\n" + tc.pluginConfig
				}
				obj, _, err := c.codecs.UniversalDecoder().Decode([]byte(data), nil, nil)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
					}
					if got := runtime.IsStrictDecodingError(err); got != tc.wantStrict {
						t.Errorf("strict decoding error %v, want %v: %v", got, tc.wantStrict, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("decoding: %v", err)
				}
				cfg, ok := obj.(*schedconfig.KubeSchedulerConfiguration)
				if !ok {
					t.Fatalf("decoded a %T", obj)
				}
				err = validateArgs(cfg)
				if tc.wantInvalid != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantInvalid) {
						t.Fatalf("validation error %v, want one containing %q", err, tc.wantInvalid)
					}
					return
				}
				if err != nil {
					t.Fatalf("validation: %v", err)
				}
				got := map[string]runtime.Object{}
				for _, pc := range cfg.Profiles[0].PluginConfig {
					got[pc.Name] = pc.Args
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("args (-want +got):\n%s", diff.Diff(tc.want, got))
				}
			})
		}
	}
}

// TestEncodeDecodeRoundTrip encodes an internal configuration holding our
// args as kubescheduler.config.k8s.io/v1 YAML and decodes it back.
func TestEncodeDecodeRoundTrip(t *testing.T) {
	want := []schedconfig.PluginConfig{
		{Name: "AgentFit", Args: &config.AgentFitArgs{IgnoreResources: true}},
		{Name: "ImageAffinity", Args: &config.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0.25}},
	}
	cfg := &schedconfig.KubeSchedulerConfiguration{
		Parallelism: 8,
		Profiles:    []schedconfig.KubeSchedulerProfile{{SchedulerName: "fast-sandbox", PluginConfig: want}},
	}
	info, ok := runtime.SerializerInfoForMediaType(Codecs.SupportedMediaTypes(), runtime.ContentTypeYAML)
	if !ok {
		t.Fatal("no YAML serializer")
	}
	var buf bytes.Buffer
	if err := Codecs.EncoderForVersion(info.Serializer, configv1.SchemeGroupVersion).Encode(cfg, &buf); err != nil {
		t.Fatalf("encoding: %v", err)
	}
	encoded := buf.String()
	for _, s := range []string{"kind: AgentFitArgs", "ignoreResources: true", "kind: ImageAffinityArgs", "requireImage: true", "spreadFactor: 0.25"} {
		if !strings.Contains(encoded, s) {
			t.Errorf("encoded configuration lacks %q:\n%s", s, encoded)
		}
	}
	obj, _, err := Codecs.UniversalDecoder().Decode(buf.Bytes(), nil, nil)
	if err != nil {
		t.Fatalf("decoding what was encoded: %v\n%s", err, encoded)
	}
	got := map[string]runtime.Object{}
	for _, pc := range obj.(*schedconfig.KubeSchedulerConfiguration).Profiles[0].PluginConfig {
		got[pc.Name] = pc.Args
	}
	for _, pc := range want {
		if !reflect.DeepEqual(got[pc.Name], pc.Args) {
			t.Errorf("%s after the round trip (-want +got):\n%s", pc.Name, diff.Diff(pc.Args, got[pc.Name]))
		}
	}
}

// TestDefaultArgs: args a plugin is built without are the v1 defaults,
// as a configuration that leaves them out gets.
func TestDefaultArgs(t *testing.T) {
	for _, tc := range []struct{ into, want runtime.Object }{
		{&config.AgentFitArgs{IgnoreResources: true}, defaultAgentFit},
		{&config.ImageAffinityArgs{}, defaultImageAffinity},
	} {
		if err := DefaultArgs(tc.into); err != nil {
			t.Fatalf("%T: %v", tc.into, err)
		}
		if !reflect.DeepEqual(tc.into, tc.want) {
			t.Errorf("%T (-want +got):\n%s", tc.into, diff.Diff(tc.want, tc.into))
		}
	}
	if err := DefaultArgs(&runtime.Unknown{}); err == nil {
		t.Error("DefaultArgs of a type the scheme does not know: no error")
	}
}
