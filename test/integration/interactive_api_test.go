package integration

import (
	"context"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// TestInteractiveAPI holds the real apiserver to the interactive fields of
// a Sandbox: spec.paused, spec.idleTimeoutSeconds and spec.idlePolicy are
// validated, defaulted and mutable (the rest of the spec is not), and the
// status takes phase Paused, condition Paused and lastActivityTime.
func TestInteractiveAPI(t *testing.T) {
	cp := framework.Start(t)
	ctx := context.Background()
	ns := kubetest.CreateNamespace(t, cp.Kube, "interactive")
	client := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns)

	t.Run("defaults", func(t *testing.T) {
		sbx, err := client.Create(ctx, validSandbox("defaults"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sbx.Spec.IdlePolicy != v1alpha1.IdlePolicyPause || sbx.Spec.Paused || sbx.Spec.IdleTimeoutSeconds != nil {
			t.Errorf("defaulted spec: paused=%v idleTimeoutSeconds=%v idlePolicy=%q, want false, nil, Pause",
				sbx.Spec.Paused, sbx.Spec.IdleTimeoutSeconds, sbx.Spec.IdlePolicy)
		}
		full := validSandbox("full")
		full.Spec.Paused = true
		full.Spec.IdleTimeoutSeconds = ptr.To[int32](300)
		full.Spec.IdlePolicy = v1alpha1.IdlePolicyDelete
		got, err := client.Create(ctx, full, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a paused Sandbox with an idle timeout: %v", err)
		}
		if !got.Spec.Paused || ptr.Deref(got.Spec.IdleTimeoutSeconds, 0) != 300 || got.Spec.IdlePolicy != v1alpha1.IdlePolicyDelete {
			t.Errorf("stored spec %+v", got.Spec)
		}
	})

	t.Run("invalid values are refused", func(t *testing.T) {
		cases := []struct {
			name   string
			mutate func(*v1alpha1.Sandbox)
			want   string
		}{
			{"idleTimeoutSeconds 0", func(s *v1alpha1.Sandbox) { s.Spec.IdleTimeoutSeconds = ptr.To[int32](0) }, "spec.idleTimeoutSeconds"},
			{"idleTimeoutSeconds negative", func(s *v1alpha1.Sandbox) { s.Spec.IdleTimeoutSeconds = ptr.To[int32](-5) }, "spec.idleTimeoutSeconds"},
			{"idlePolicy Foo", func(s *v1alpha1.Sandbox) {
				s.Spec.IdleTimeoutSeconds = ptr.To[int32](60)
				s.Spec.IdlePolicy = "Foo"
			}, "spec.idlePolicy"},
			{"idlePolicy Delete without a timeout", func(s *v1alpha1.Sandbox) { s.Spec.IdlePolicy = v1alpha1.IdlePolicyDelete },
				"idlePolicy Delete requires idleTimeoutSeconds"},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := validSandbox("bad-" + string(rune('a'+i)))
				tc.mutate(s)
				_, err := client.Create(ctx, s, metav1.CreateOptions{})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("create error %v, want one containing %q", err, tc.want)
				}
			})
		}
	})

	t.Run("paused, idleTimeoutSeconds and idlePolicy are mutable", func(t *testing.T) {
		sbx, err := client.Create(ctx, validSandbox("mutable"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		steps := []struct {
			name   string
			mutate func(*v1alpha1.SandboxSpec)
		}{
			{"pause", func(s *v1alpha1.SandboxSpec) { s.Paused = true }},
			{"set an idle timeout", func(s *v1alpha1.SandboxSpec) { s.IdleTimeoutSeconds = ptr.To[int32](60) }},
			{"delete when idle", func(s *v1alpha1.SandboxSpec) { s.IdlePolicy = v1alpha1.IdlePolicyDelete }},
			{"change the idle timeout", func(s *v1alpha1.SandboxSpec) { s.IdleTimeoutSeconds = ptr.To[int32](5) }},
			{"resume", func(s *v1alpha1.SandboxSpec) { s.Paused = false }},
			{"pause when idle", func(s *v1alpha1.SandboxSpec) { s.IdlePolicy = v1alpha1.IdlePolicyPause }},
			{"drop the idle timeout", func(s *v1alpha1.SandboxSpec) { s.IdleTimeoutSeconds = nil }},
			{"pause and shorten the deadline together", func(s *v1alpha1.SandboxSpec) {
				s.Paused = true
				s.ActiveDeadlineSeconds = ptr.To[int64](30)
			}},
		}
		for _, step := range steps {
			s := sbx.DeepCopy()
			step.mutate(&s.Spec)
			updated, err := client.Update(ctx, s, metav1.UpdateOptions{})
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			if updated.Spec.Paused != s.Spec.Paused || ptr.Deref(updated.Spec.IdleTimeoutSeconds, 0) != ptr.Deref(s.Spec.IdleTimeoutSeconds, 0) ||
				updated.Spec.IdlePolicy != s.Spec.IdlePolicy {
				t.Errorf("%s: stored spec %+v, sent %+v", step.name, updated.Spec, s.Spec)
			}
			if updated.Generation <= sbx.Generation {
				t.Errorf("%s: generation %d did not grow from %d", step.name, updated.Generation, sbx.Generation)
			}
			sbx = updated
		}

		refused := []struct {
			name   string
			mutate func(*v1alpha1.SandboxSpec)
			want   string
		}{
			{"idleTimeoutSeconds 0", func(s *v1alpha1.SandboxSpec) { s.IdleTimeoutSeconds = ptr.To[int32](0) }, "spec.idleTimeoutSeconds"},
			{"idlePolicy Foo", func(s *v1alpha1.SandboxSpec) { s.IdlePolicy = "Foo" }, "spec.idlePolicy"},
			{"idlePolicy Delete without a timeout", func(s *v1alpha1.SandboxSpec) { s.IdlePolicy = v1alpha1.IdlePolicyDelete },
				"idlePolicy Delete requires idleTimeoutSeconds"},
			// The container-shaping spec stays immutable, even beside a
			// change that is allowed.
			{"image with paused", func(s *v1alpha1.SandboxSpec) {
				s.Paused = false
				s.Image = "busybox"
			}, "image is immutable"},
			{"command with an idle timeout", func(s *v1alpha1.SandboxSpec) {
				s.IdleTimeoutSeconds = ptr.To[int32](60)
				s.Command = []string{"sh"}
			}, "command is immutable"},
			// Adding or removing a field changes it too.
			{"env removed", func(s *v1alpha1.SandboxSpec) { s.Env = nil }, "env is immutable"},
			{"args added", func(s *v1alpha1.SandboxSpec) { s.Args = []string{"x"} }, "args is immutable"},
			{"workingDir added", func(s *v1alpha1.SandboxSpec) { s.WorkingDir = "/tmp" }, "workingDir is immutable"},
			{"runtimeHandler added", func(s *v1alpha1.SandboxSpec) { s.RuntimeHandler = "crun" }, "runtimeHandler is immutable"},
			{"networkMode", func(s *v1alpha1.SandboxSpec) { s.NetworkMode = v1alpha1.NetworkModeEgress }, "networkMode is immutable"},
			{"longer deadline with resume", func(s *v1alpha1.SandboxSpec) {
				s.Paused = false
				s.ActiveDeadlineSeconds = ptr.To[int64](600)
			}, "activeDeadlineSeconds may only be shortened"},
		}
		for _, tc := range refused {
			t.Run(tc.name, func(t *testing.T) {
				s := sbx.DeepCopy()
				tc.mutate(&s.Spec)
				_, err := client.Update(ctx, s, metav1.UpdateOptions{})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("update error %v, want one containing %q", err, tc.want)
				}
			})
		}
		// Resources added to a Sandbox created without any, and removed from
		// one created with some.
		bare := validSandbox("bare")
		bare.Spec.Resources = v1alpha1.SandboxResources{}
		if bare, err = client.Create(ctx, bare, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		withCPU := bare.DeepCopy()
		withCPU.Spec.Resources.CPU = ptr.To(resource.MustParse("1"))
		if _, err := client.Update(ctx, withCPU, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "resources are immutable") {
			t.Errorf("adding resources: %v", err)
		}
		noResources, err := client.Patch(ctx, sbx.Name, "application/json-patch+json", []byte(`[{"op":"remove","path":"/spec/resources"}]`), metav1.PatchOptions{})
		if err == nil || !strings.Contains(err.Error(), "resources are immutable") {
			t.Errorf("removing resources: %v (spec %+v)", err, noResources)
		}
		// An update of a Sandbox stored without resources and with empty
		// env and command, by a client that sends empty resources and no env
		// or command (as Go clients do), is not refused.
		raw, err := cp.Sandbox.SandboxV1alpha1().RESTClient().Post().Namespace(ns).Resource("sandboxes").
			Body([]byte(`{"apiVersion":"fast-sandbox.io/v1alpha1","kind":"Sandbox","metadata":{"name":"raw"},
			  "spec":{"poolName":"pool","image":"busybox","env":[],"command":[]}}`)).Do(ctx).Get()
		if err != nil {
			t.Fatal(err)
		}
		rawSbx := raw.(*v1alpha1.Sandbox)
		rawSbx.Spec.Paused = true
		if _, err := client.Update(ctx, rawSbx, metav1.UpdateOptions{}); err != nil {
			t.Errorf("pausing a Sandbox stored without resources: %v", err)
		}

		// A merge patch, as kubectl sandbox pause does it.
		got, err := client.Patch(ctx, sbx.Name, "application/merge-patch+json", []byte(`{"spec":{"paused":false}}`), metav1.PatchOptions{})
		if err != nil || got.Spec.Paused {
			t.Errorf("resuming by merge patch: %v, paused=%v", err, got != nil && got.Spec.Paused)
		}
	})

	t.Run("status takes phase Paused, condition Paused and lastActivityTime", func(t *testing.T) {
		sbx, err := client.Create(ctx, validSandbox("status"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now := metav1.NowMicro()
		sbx.Status = v1alpha1.SandboxStatus{
			ObservedGeneration: sbx.Generation, Phase: v1alpha1.SandboxPaused, Agent: "agent-a", Node: "node-1",
			StartTime: &now, LastActivityTime: &now,
			Conditions: []metav1.Condition{{Type: v1alpha1.SandboxConditionPaused, Status: metav1.ConditionTrue,
				Reason: v1alpha1.ReasonIdle, Message: "idle", LastTransitionTime: metav1.Now()}},
		}
		got, err := client.UpdateStatus(ctx, sbx, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("UpdateStatus: %v", err)
		}
		if got.Status.Phase != v1alpha1.SandboxPaused || got.Status.LastActivityTime == nil ||
			got.Status.LastActivityTime.Nanosecond()/1000 != now.Nanosecond()/1000 {
			t.Errorf("stored status %+v", got.Status)
		}
		for _, reason := range []string{v1alpha1.ReasonPausedBySpec, v1alpha1.ReasonResumed} {
			s := got.DeepCopy()
			s.Status.Conditions[0].Reason = reason
			if got, err = client.UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("condition Paused with reason %s: %v", reason, err)
			}
		}
	})
}
