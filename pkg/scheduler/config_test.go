package scheduler

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	fwk "k8s.io/kube-scheduler/framework"
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
`, "profiles[0].pluginConfig[0].args.kind: Invalid value"},
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
