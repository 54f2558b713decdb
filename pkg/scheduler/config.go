package scheduler

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"

	argsconfig "github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/scheme"
	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config/validation"
	"github.com/fast-sandbox/fast-sandbox/plugins/agentfit"
	"github.com/fast-sandbox/fast-sandbox/plugins/imageaffinity"
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
// profile must bind with SandboxBinder. It decodes through
// pkg/apis/config/scheme, so the args of our plugins arrive typed
// (*argsconfig.ImageAffinityArgs...), decoded strictly (an unknown field
// is an error) and defaulted; they are validated here, so a bad file fails
// naming the field (profiles[0].pluginConfig[1].args.spreadFactor); the
// plugins check them again when the profiles are built.
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
	for i, p := range cfg.Profiles {
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
		for j, pc := range p.PluginConfig {
			if err := checkPluginArgs(field.NewPath("profiles").Index(i).Child("pluginConfig").Index(j).Child("args"), pc); err != nil {
				return nil, fmt.Errorf("%s: profile %q: %w", path, p.SchedulerName, err)
			}
		}
	}
	return cfg, nil
}

// checkPluginArgs validates the args of our plugins, which the scheme
// decoded into their internal types and defaulted, even where the file
// gives none. Nil args (a profile built in code) stand for the defaults,
// which the plugins fill in. In-tree plugins' args are kube-scheduler's
// business.
func checkPluginArgs(path *field.Path, pc config.PluginConfig) error {
	if pc.Args == nil {
		return nil
	}
	switch pc.Name {
	case agentfit.Name:
		args, ok := pc.Args.(*argsconfig.AgentFitArgs)
		if !ok {
			return fmt.Errorf("%s: want AgentFitArgs, got %T", path, pc.Args)
		}
		return validation.ValidateAgentFitArgs(path, args)
	case imageaffinity.Name:
		args, ok := pc.Args.(*argsconfig.ImageAffinityArgs)
		if !ok {
			return fmt.Errorf("%s: want ImageAffinityArgs, got %T", path, pc.Args)
		}
		return validation.ValidateImageAffinityArgs(path, args)
	}
	return nil
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

// invalidSchedulingError is a pool's spec.scheduling the scheduler refuses;
// scheduleOne records it on the sandbox instead of retrying.
type invalidSchedulingError struct{ msg string }

func (e *invalidSchedulingError) Error() string { return e.msg }

// checkWeights refuses weights for plugins that are not among a framework's
// score plugins (scorePlugins, as the built framework lists them after
// multiPoint expansion): a misspelt name must not be silently ignored.
func checkWeights(pool, profile string, weights map[string]int32, scorePlugins []config.Plugin) error {
	have := map[string]bool{}
	names := make([]string, 0, len(scorePlugins))
	for _, p := range scorePlugins {
		have[p.Name] = true
		names = append(names, p.Name)
	}
	var unknown []string
	for name := range weights {
		if !have[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	sort.Strings(names)
	scoring := "none"
	if len(names) > 0 {
		scoring = strings.Join(names, ", ")
	}
	return &invalidSchedulingError{msg: fmt.Sprintf("SandboxPool %s: spec.scheduling.scoreWeights names %s, which scheduler profile %q does not score with (its score plugins: %s)",
		pool, strings.Join(unknown, ", "), profile, scoring)}
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
