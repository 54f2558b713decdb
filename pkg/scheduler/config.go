package scheduler

import (
	"fmt"
	"os"

	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"

	"github.com/fast-sandbox/fast-sandbox/plugins/agentfit"
	"github.com/fast-sandbox/fast-sandbox/plugins/sandboxbinder"
)

// DefaultConfig is the configuration used without a file: one profile,
// "fast-sandbox", with AgentFit, ImageAffinity and SandboxBinder and no
// in-tree plugin but the queue sort.
const DefaultConfig = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: fast-sandbox
  plugins:
    multiPoint:
      enabled:
      - name: PrioritySort
      - name: AgentFit
      - name: ImageAffinity
        weight: 2
      - name: SandboxBinder
      disabled:
      - name: "*"
  pluginConfig:
  - name: ImageAffinity
    args:
      spreadFactor: 0.5
`

// LoadConfig reads a KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1),
// defaulted like kube-scheduler's; an empty path gives DefaultConfig. Every
// profile must bind with SandboxBinder, and plugin args are checked by the
// plugins when the profiles are built, so a bad file fails at start.
func LoadConfig(path string) (*config.KubeSchedulerConfiguration, error) {
	data := []byte(DefaultConfig)
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
			return nil, fmt.Errorf("reading scheduler configuration: %w", err)
		}
	}
	obj, gvk, err := scheme.Codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decoding scheduler configuration %s: %w", path, err)
	}
	cfg, ok := obj.(*config.KubeSchedulerConfiguration)
	if !ok {
		return nil, fmt.Errorf("%s holds a %s, want a KubeSchedulerConfiguration", path, gvk)
	}
	if len(cfg.Profiles) == 0 {
		return nil, fmt.Errorf("%s: no profiles", path)
	}
	seen := map[string]bool{}
	for _, p := range cfg.Profiles {
		if seen[p.SchedulerName] {
			return nil, fmt.Errorf("%s: profile %q appears twice", path, p.SchedulerName)
		}
		seen[p.SchedulerName] = true
		if p.Plugins == nil || !enabled(p.Plugins, p.Plugins.Bind, sandboxbinder.Name) || !enabled(p.Plugins, p.Plugins.Reserve, sandboxbinder.Name) {
			return nil, fmt.Errorf("%s: profile %q must enable %s for reserve and bind (sandboxes bind to agent slots, not to nodes)", path, p.SchedulerName, sandboxbinder.Name)
		}
		if !enabled(p.Plugins, p.Plugins.Filter, agentfit.Name) {
			return nil, fmt.Errorf("%s: profile %q must enable the %s filter (slots and resources of agents)", path, p.SchedulerName, agentfit.Name)
		}
	}
	return cfg, nil
}

// enabled says whether a plugin is enabled at an extension point, directly
// or through multiPoint (and not disabled there).
func enabled(plugins *config.Plugins, set config.PluginSet, name string) bool {
	for _, d := range set.Disabled {
		if d.Name == name || d.Name == "*" {
			return false
		}
	}
	for _, p := range append(append([]config.Plugin{}, set.Enabled...), plugins.MultiPoint.Enabled...) {
		if p.Name == name {
			return true
		}
	}
	return false
}

// withWeights returns a copy of a profile whose score plugins take the
// given weights (a pool's overrides).
func withWeights(p *config.KubeSchedulerProfile, weights map[string]int32) *config.KubeSchedulerProfile {
	out := p.DeepCopy()
	if len(weights) == 0 {
		return out
	}
	for _, set := range []*config.PluginSet{&out.Plugins.Score, &out.Plugins.MultiPoint} {
		for i := range set.Enabled {
			if w, ok := weights[set.Enabled[i].Name]; ok {
				set.Enabled[i].Weight = w
			}
		}
	}
	return out
}
