package scheduler

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/metrics"

	argsconfig "github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
	"github.com/fast-sandbox/fast-sandbox/plugins/agentfit"
	"github.com/fast-sandbox/fast-sandbox/plugins/imageaffinity"
	"github.com/fast-sandbox/fast-sandbox/plugins/sandboxbinder"
)

func TestLoadConfig(t *testing.T) {
	files, _ := filepath.Glob("../../manifests/scheduler/*.yaml")
	var configs []string
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" {
			configs = append(configs, f)
		}
	}
	if len(configs) == 0 {
		t.Fatal("no example configurations found")
	}
	for _, f := range append(configs, "") {
		if _, err := LoadConfig(f); err != nil {
			t.Errorf("LoadConfig(%q): %v", f, err)
		}
	}

	bad := []struct{ name, config, want string }{
		{"no binder", `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: x
  plugins:
    multiPoint:
      enabled: [{name: AgentFit}]
`, "must enable SandboxBinder"},
		{"no fit filter", `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: x
  plugins:
    multiPoint:
      enabled: [{name: SandboxBinder}]
`, "must enable the AgentFit filter"},
		{"not a scheduler configuration", `apiVersion: v1
kind: ConfigMap
`, "decoding"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestDefaultConfigMatchesManifest keeps the built-in configuration and the
// one deployed by manifests/ the same.
func TestDefaultConfigMatchesManifest(t *testing.T) {
	builtin, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	deployed, err := LoadConfig("../../manifests/scheduler/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if builtin.Profiles[0].SchedulerName != deployed.Profiles[0].SchedulerName ||
		len(builtin.Profiles[0].Plugins.MultiPoint.Enabled) != len(deployed.Profiles[0].Plugins.MultiPoint.Enabled) {
		t.Errorf("the built-in default profile differs from manifests/scheduler/default.yaml")
	}
}

func TestFitMessage(t *testing.T) {
	got := fitMessage(12, map[string]int{"no free slot": 7, "insufficient memory": 5})
	if want := "0/12 agents available: 5 insufficient memory, 7 no free slot"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestPickBest(t *testing.T) {
	scores := []fwk.NodePluginScores{{Name: "a", TotalScore: 10}, {Name: "b", TotalScore: 90}, {Name: "c", TotalScore: 50}}
	if got := pickBest(scores); got != "b" {
		t.Errorf("pickBest = %s, want b", got)
	}
	tied := []fwk.NodePluginScores{{Name: "a", TotalScore: 5}, {Name: "b", TotalScore: 5}}
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		seen[pickBest(tied)] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("ties must be shared, picked %v", seen)
	}
}

// TestUnknownPluginArgFieldIsAnError: our plugins' args are decoded
// strictly, so a misspelt field fails LoadConfig naming the field, and bad
// values fail with the field's path in the configuration.
func TestUnknownPluginArgFieldIsAnError(t *testing.T) {
	const head = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: fast-sandbox
  plugins:
    multiPoint:
      enabled:
      - name: AgentFit
      - name: ImageAffinity
      - name: SandboxBinder
  pluginConfig:
`
	cases := []struct{ name, pluginConfig, want string }{
		{"misspelt ImageAffinity field", `  - name: ImageAffinity
    args:
      spredFactor: 0.2
`, `unknown field "spredFactor"`},
		{"misspelt AgentFit field", `  - name: AgentFit
    args:
      ignoreResource: true
`, `unknown field "ignoreResource"`},
		{"ImageAffinity value out of range", `  - name: AgentFit
    args: {}
  - name: ImageAffinity
    args:
      spreadFactor: 2
`, "profiles[0].pluginConfig[1].args.spreadFactor: Invalid value: 2"},
		{"args of another kind", `  - name: AgentFit
    args:
      kind: ImageAffinityArgs
`, "decoding .profiles[0].pluginConfig[0]: args for plugin AgentFit were not of type AgentFitArgs.kubescheduler.config.k8s.io, got ImageAffinityArgs"},
		{"negative spreadFactor", `  - name: ImageAffinity
    args:
      spreadFactor: -1
`, "profiles[0].pluginConfig[0].args.spreadFactor: Invalid value: -1: must be between 0 and 1"},
		{"value of the wrong type", `  - name: ImageAffinity
    args:
      spreadFactor: half
`, "decoding args for plugin ImageAffinity: json: cannot unmarshal string"},
		{"duplicate field", `  - name: ImageAffinity
    args:
      spreadFactor: 0.2
      spreadFactor: 0.3
`, `key "spreadFactor" already set`},
		{"null args", `  - name: ImageAffinity
    args: null
`, ""},
		{"valid args", `  - name: AgentFit
    args:
      ignoreResources: true
  - name: ImageAffinity
    args:
      spreadFactor: 0
      requireImage: true
`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(head+tc.pluginConfig), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// nopBinder is a sandboxbinder.Binder that does nothing; frameworks built
// with it are only built, not run.
type nopBinder struct{}

func (nopBinder) Assume(context.Context, *v1.Pod, string) error { return nil }
func (nopBinder) Forget(context.Context, *v1.Pod, string)       {}
func (nopBinder) Bind(context.Context, *v1.Pod, string) error   { return nil }

// TestLoadConfigTypedArgs: LoadConfig hands the framework our plugins' args
// as their internal types, explicit values kept and the rest defaulted,
// also for a plugin that has no pluginConfig entry; the framework runtime
// builds every plugin of the profile from them.
func TestLoadConfigTypedArgs(t *testing.T) {
	const file = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: fast-sandbox
  plugins:
    multiPoint:
      enabled:
      - name: PrioritySort
      - name: AgentFit
      - name: ImageAffinity
      - name: SandboxBinder
      disabled:
      - name: "*"
  pluginConfig:
  - name: ImageAffinity
    args:
      requireImage: true
`
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	metrics.Register() // the framework records plugin metrics
	for _, tc := range []struct {
		name, path string
		want       map[string]any
	}{
		{"the built-in configuration", "", map[string]any{
			agentfit.Name:      &argsconfig.AgentFitArgs{},
			imageaffinity.Name: &argsconfig.ImageAffinityArgs{SpreadFactor: 0.5},
		}},
		{"a file setting one field", path, map[string]any{
			agentfit.Name:      &argsconfig.AgentFitArgs{},
			imageaffinity.Name: &argsconfig.ImageAffinityArgs{RequireImage: true, SpreadFactor: 0.5},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadConfig(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]any{}
			for _, pc := range cfg.Profiles[0].PluginConfig {
				if _, ok := tc.want[pc.Name]; ok {
					got[pc.Name] = pc.Args
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("args %#v, want %#v", got, tc.want)
			}
			registry := plugins.NewInTreeRegistry()
			for name, f := range map[string]frameworkruntime.PluginFactory{
				agentfit.Name:      agentfit.New,
				imageaffinity.Name: imageaffinity.New,
				sandboxbinder.Name: sandboxbinder.NewFactory(nopBinder{}),
			} {
				if err := registry.Register(name, f); err != nil {
					t.Fatal(err)
				}
			}
			fw, err := frameworkruntime.NewFramework(context.Background(), registry, &cfg.Profiles[0])
			if err != nil {
				t.Fatalf("building the framework: %v", err)
			}
			if !fw.HasFilterPlugins() || !fw.HasScorePlugins() {
				t.Errorf("framework without filter or score plugins: %v", fw.ListPlugins())
			}
		})
	}
}
