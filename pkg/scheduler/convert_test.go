package scheduler

import (
	"testing"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

func TestAgentNodeWarmImages(t *testing.T) {
	cases := []struct {
		name string
		warm []api.WarmImage
		want string
	}{
		{"none", nil, ""},
		{"only images with a free warm container", []api.WarmImage{
			{Image: "docker.io/library/python:3.12", Count: 2},
			{Image: "docker.io/library/node:22", Count: 0},
			{Image: "docker.io/library/busybox:latest", Count: 1},
		}, "docker.io/library/python:3.12,docker.io/library/busybox:latest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &agentState{name: "agent-a", pool: "p", status: &api.Status{Capacity: api.Resources{Slots: 4}, Warm: tc.warm}}
			n := agentNode(a, nil)
			if got := n.Annotations[v1alpha1.AnnotationWarmImages]; got != tc.want {
				t.Errorf("warm images annotation %q, want %q", got, tc.want)
			}
		})
	}
}
