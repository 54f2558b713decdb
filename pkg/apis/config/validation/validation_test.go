package validation

import (
	"math"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/config"
)

var path = field.NewPath("profiles").Index(0).Child("pluginConfig").Index(1).Child("args")

func TestValidateImageAffinityArgs(t *testing.T) {
	cases := []struct {
		name    string
		args    *config.ImageAffinityArgs
		wantErr string // "" = valid
	}{
		{name: "0 packs", args: &config.ImageAffinityArgs{SpreadFactor: 0}},
		{name: "the default", args: &config.ImageAffinityArgs{SpreadFactor: 0.5}},
		{name: "1 spreads", args: &config.ImageAffinityArgs{SpreadFactor: 1, RequireImage: true}},
		{name: "above 1", args: &config.ImageAffinityArgs{SpreadFactor: 1.5}, wantErr: "profiles[0].pluginConfig[1].args.spreadFactor: Invalid value: 1.5: must be between 0 and 1"},
		{name: "negative", args: &config.ImageAffinityArgs{SpreadFactor: -0.1}, wantErr: "profiles[0].pluginConfig[1].args.spreadFactor: Invalid value: -0.1"},
		{name: "NaN", args: &config.ImageAffinityArgs{SpreadFactor: math.NaN()}, wantErr: "profiles[0].pluginConfig[1].args.spreadFactor: Invalid value: NaN"},
		{name: "infinite", args: &config.ImageAffinityArgs{SpreadFactor: math.Inf(1)}, wantErr: "args.spreadFactor: Invalid value: +Inf"},
		{name: "nil", args: nil, wantErr: "profiles[0].pluginConfig[1].args: Required value"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			check(t, ValidateImageAffinityArgs(path, tc.args), tc.wantErr)
		})
	}
}

func TestValidateAgentFitArgs(t *testing.T) {
	check(t, ValidateAgentFitArgs(path, &config.AgentFitArgs{}), "")
	check(t, ValidateAgentFitArgs(path, &config.AgentFitArgs{IgnoreResources: true}), "")
	check(t, ValidateAgentFitArgs(path, nil), "profiles[0].pluginConfig[1].args: Required value")
}

func check(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("refused: %v", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("error %v, want one containing %q", err, want)
	}
}
