package scheduler

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// TestCheckWeights: a pool's scoreWeights may only name the profile's
// score plugins; the refusal names the unknown plugins and the ones the
// profile has.
func TestCheckWeights(t *testing.T) {
	score := []config.Plugin{{Name: "ImageAffinity", Weight: 2}, {Name: "NodeAffinity", Weight: 1}}
	cases := []struct {
		name    string
		weights map[string]int32
		plugins []config.Plugin
		want    string // "" = accepted
	}{
		{name: "no weights", plugins: score},
		{name: "no weights and no score plugins"},
		{name: "a score plugin", weights: map[string]int32{"ImageAffinity": 5}, plugins: score},
		{name: "every score plugin", weights: map[string]int32{"ImageAffinity": 5, "NodeAffinity": 0}, plugins: score},
		{name: "unknown plugin", weights: map[string]int32{"NoSuchPlugin": 3}, plugins: score,
			want: `SandboxPool p: spec.scheduling.scoreWeights names NoSuchPlugin, which scheduler profile "prof" does not score with (its score plugins: ImageAffinity, NodeAffinity)`},
		{name: "unknown plugins are all named, sorted", weights: map[string]int32{"Zed": 1, "ImageAffinity": 1, "Abc": 1}, plugins: score,
			want: "names Abc, Zed, which"},
		{name: "case matters", weights: map[string]int32{"imageaffinity": 1}, plugins: score, want: "names imageaffinity"},
		{name: "a profile without score plugins", weights: map[string]int32{"ImageAffinity": 1},
			want: "(its score plugins: none)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkWeights("p", "prof", tc.weights, tc.plugins)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if _, ok := err.(*invalidSchedulingError); !ok || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v (%T), want an invalidSchedulingError containing %q", err, err, tc.want)
			}
		})
	}
}

// TestPoolScoreWeightsNamingUnknownPluginAreRefused: a pool whose
// scoreWeights name a plugin the profile does not score with (a misspelling,
// or a filter-only plugin such as AgentFit) keeps its sandboxes Pending with
// reason InvalidPoolScheduling and a message naming the plugin and the
// profile's score plugins, instead of silently ignoring the weight; fixing
// the pool lets them run.
func TestPoolScoreWeightsNamingUnknownPluginAreRefused(t *testing.T) {
	cases := []struct {
		name    string
		weights map[string]int32
		refused string // "" = the sandbox runs; else the plugin the message names
	}{
		{name: "known score plugin", weights: map[string]int32{"ImageAffinity": 5}},
		{name: "unknown plugin", weights: map[string]int32{"NoSuchPlugin": 3}, refused: "NoSuchPlugin"},
		{name: "a filter-only plugin", weights: map[string]int32{"AgentFit": 3}, refused: "AgentFit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.updatePool(func(p *v1alpha1.SandboxPool) { p.Spec.Scheduling.ScoreWeights = tc.weights })
			a := e.addAgent("agent-a")
			e.start(testOptions())
			e.createSandbox("s1")
			if tc.refused == "" {
				e.wait("s1", "Running", 5*time.Second, running)
				return
			}
			s := e.wait("s1", "refused", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
				return s.Status.Reason == v1alpha1.ReasonInvalidPoolScheduling
			})
			if s.Status.Phase != v1alpha1.SandboxPending ||
				!strings.Contains(s.Status.Message, tc.refused) ||
				!strings.Contains(s.Status.Message, "its score plugins: ImageAffinity") {
				t.Errorf("status %+v", s.Status)
			}
			cond := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.SandboxConditionScheduled)
			if cond == nil || cond.Reason != v1alpha1.ReasonInvalidPoolScheduling || cond.Message != s.Status.Message {
				t.Errorf("Scheduled condition %+v", cond)
			}
			if n := a.createsOf("sbx-s1"); n != 0 {
				t.Errorf("created %d times", n)
			}

			e.updatePool(func(p *v1alpha1.SandboxPool) { p.Spec.Scheduling.ScoreWeights = map[string]int32{"ImageAffinity": 3} })
			e.wait("s1", "Running once the pool is fixed", 5*time.Second, running)
		})
	}
}
