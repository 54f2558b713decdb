package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
)

func validSandbox(name string) *v1alpha1.Sandbox {
	return &v1alpha1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.SandboxSpec{
			PoolName: "pool",
			Image:    "docker.io/library/python:3.12",
			Command:  []string{"python", "-c", "print(1)"},
			Env:      []v1alpha1.EnvVar{{Name: "A", Value: "b"}},
			Resources: v1alpha1.SandboxResources{
				CPU:    ptr.To(resource.MustParse("500m")),
				Memory: ptr.To(resource.MustParse("128Mi")),
			},
			ActiveDeadlineSeconds: ptr.To[int64](60),
		},
	}
}

func validPool(name string) *v1alpha1.SandboxPool {
	return &v1alpha1.SandboxPool{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.SandboxPoolSpec{
			MinAgents: 1,
			MaxAgents: 4,
			Agent: v1alpha1.AgentTemplate{
				Image: "fast-sandbox/agent:dev",
				Resources: v1alpha1.SandboxResources{
					CPU:    ptr.To(resource.MustParse("2")),
					Memory: ptr.To(resource.MustParse("4Gi")),
				},
			},
		},
	}
}

func TestAPI(t *testing.T) {
	cp := framework.Start(t)
	ctx := context.Background()

	t.Run("valid objects are accepted and defaulted", func(t *testing.T) {
		ns := cp.CreateNamespace(t, "valid")
		sbx, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(ctx, validSandbox("ok"), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a valid Sandbox: %v", err)
		}
		if sbx.Spec.NetworkMode != v1alpha1.NetworkModeNone {
			t.Errorf("networkMode defaulted to %q, want %q", sbx.Spec.NetworkMode, v1alpha1.NetworkModeNone)
		}
		raw, err := cp.Sandbox.SandboxV1alpha1().RESTClient().Post().Namespace(ns).Resource("sandboxpools").
			Body([]byte(`{"apiVersion":"fast-sandbox.io/v1alpha1","kind":"SandboxPool","metadata":{"name":"defaults"},
			  "spec":{"agent":{"image":"a","resources":{"cpu":"1","memory":"1Gi"}}}}`)).Do(ctx).Get()
		if err != nil {
			t.Fatalf("creating a minimal SandboxPool: %v", err)
		}
		got := raw.(*v1alpha1.SandboxPool)
		want := v1alpha1.SandboxPoolSpec{
			MinAgents: 1, MaxAgents: 10, SlotsPerAgent: v1alpha1.DefaultSlotsPerAgent,
			ScaleDownDelaySeconds: v1alpha1.DefaultScaleDownDelay, ImagePullPolicy: v1alpha1.PullNever,
		}
		if got.Spec.MinAgents != want.MinAgents || got.Spec.MaxAgents != want.MaxAgents ||
			got.Spec.SlotsPerAgent != want.SlotsPerAgent || got.Spec.ScaleDownDelaySeconds != want.ScaleDownDelaySeconds ||
			got.Spec.ImagePullPolicy != want.ImagePullPolicy {
			t.Errorf("defaults: got %+v, want %+v", got.Spec, want)
		}
		if got.Spec.Agent.ContainerdSocket != v1alpha1.DefaultContainerdSocket || got.Spec.Agent.ContainerdNamespace != v1alpha1.DefaultContainerdNamespace {
			t.Errorf("containerd defaults: socket %q namespace %q", got.Spec.Agent.ContainerdSocket, got.Spec.Agent.ContainerdNamespace)
		}
		if got.Spec.Scheduling.SchedulerName != v1alpha1.DefaultSchedulerName {
			t.Errorf("schedulerName defaulted to %q, want %q", got.Spec.Scheduling.SchedulerName, v1alpha1.DefaultSchedulerName)
		}
	})

	t.Run("invalid sandboxes are refused with a clear message", func(t *testing.T) {
		ns := cp.CreateNamespace(t, "invalid-sbx")
		cases := []struct {
			name   string
			mutate func(*v1alpha1.Sandbox)
			want   string
		}{
			{"no image", func(s *v1alpha1.Sandbox) { s.Spec.Image = "" }, "spec.image"},
			{"image with spaces", func(s *v1alpha1.Sandbox) { s.Spec.Image = "python 3" }, "spec.image"},
			{"no pool", func(s *v1alpha1.Sandbox) { s.Spec.PoolName = "" }, "spec.poolName"},
			{"zero cpu", func(s *v1alpha1.Sandbox) { s.Spec.Resources.CPU = ptr.To(resource.MustParse("0")) }, "cpu must be positive"},
			{"tiny memory", func(s *v1alpha1.Sandbox) { s.Spec.Resources.Memory = ptr.To(resource.MustParse("1Ki")) }, "memory must be at least 4Mi"},
			{"unknown network mode", func(s *v1alpha1.Sandbox) { s.Spec.NetworkMode = "Host" }, `spec.networkMode: Unsupported value: "Host"`},
			{"zero deadline", func(s *v1alpha1.Sandbox) { s.Spec.ActiveDeadlineSeconds = ptr.To[int64](0) }, "spec.activeDeadlineSeconds"},
			{"negative ttl", func(s *v1alpha1.Sandbox) { s.Spec.TTLSecondsAfterFinished = ptr.To[int32](-1) }, "spec.ttlSecondsAfterFinished"},
			{"env name with =", func(s *v1alpha1.Sandbox) { s.Spec.Env = []v1alpha1.EnvVar{{Name: "A=B"}} }, "spec.env[0].name"},
			{"duplicate env", func(s *v1alpha1.Sandbox) {
				s.Spec.Env = []v1alpha1.EnvVar{{Name: "A"}, {Name: "A"}}
			}, "Duplicate value"},
			{"bad runtime handler", func(s *v1alpha1.Sandbox) { s.Spec.RuntimeHandler = "Run C" }, "spec.runtimeHandler"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := validSandbox("bad")
				tc.mutate(s)
				_, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(ctx, s, metav1.CreateOptions{})
				if err == nil {
					t.Fatalf("accepted an invalid Sandbox, want an error containing %q", tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not contain %q", err, tc.want)
				}
			})
		}
		if l, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
			t.Errorf("refused objects must leave nothing behind: %d stored, err %v", len(l.Items), err)
		}
	})

	t.Run("invalid pools are refused with a clear message", func(t *testing.T) {
		ns := cp.CreateNamespace(t, "invalid-pool")
		cases := []struct {
			name   string
			mutate func(*v1alpha1.SandboxPool)
			want   string
		}{
			{"min above max", func(p *v1alpha1.SandboxPool) { p.Spec.MinAgents, p.Spec.MaxAgents = 5, 2 }, "minAgents must not exceed maxAgents"},
			{"negative min", func(p *v1alpha1.SandboxPool) { p.Spec.MinAgents = -1 }, "spec.minAgents"},
			{"too many slots", func(p *v1alpha1.SandboxPool) { p.Spec.SlotsPerAgent = 5000 }, "spec.slotsPerAgent"},
			{"no agent image", func(p *v1alpha1.SandboxPool) { p.Spec.Agent.Image = "" }, "spec.agent.image"},
			{"agent without memory", func(p *v1alpha1.SandboxPool) { p.Spec.Agent.Resources.Memory = nil }, "agent resources need both cpu and memory"},
			{"relative socket path", func(p *v1alpha1.SandboxPool) { p.Spec.Agent.ContainerdSocket = "run/containerd.sock" }, "spec.agent.containerdSocket"},
			{"score weight out of range", func(p *v1alpha1.SandboxPool) {
				p.Spec.Scheduling.ScoreWeights = map[string]int32{"ImageAffinity": 200}
			}, "score weights must be between 0 and 100"},
			{"unknown pull policy", func(p *v1alpha1.SandboxPool) { p.Spec.ImagePullPolicy = "Always" }, "spec.imagePullPolicy"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				p := validPool("bad")
				tc.mutate(p)
				_, err := cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Create(ctx, p, metav1.CreateOptions{})
				if err == nil {
					t.Fatalf("accepted an invalid SandboxPool, want an error containing %q", tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not contain %q", err, tc.want)
				}
			})
		}
	})

	t.Run("the container-shaping spec is immutable", func(t *testing.T) {
		ns := cp.CreateNamespace(t, "immutable")
		client := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns)
		sbx, err := client.Create(ctx, validSandbox("imm"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name   string
			mutate func(*v1alpha1.Sandbox)
			want   string
		}{
			{"image", func(s *v1alpha1.Sandbox) { s.Spec.Image = "busybox" }, "image is immutable"},
			{"pool", func(s *v1alpha1.Sandbox) { s.Spec.PoolName = "other" }, "poolName is immutable"},
			{"command", func(s *v1alpha1.Sandbox) { s.Spec.Command = []string{"sh"} }, "command is immutable"},
			{"resources", func(s *v1alpha1.Sandbox) { s.Spec.Resources.CPU = ptr.To(resource.MustParse("1")) }, "resources are immutable"},
			{"longer deadline", func(s *v1alpha1.Sandbox) { s.Spec.ActiveDeadlineSeconds = ptr.To[int64](600) }, "activeDeadlineSeconds may only be shortened"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := sbx.DeepCopy()
				tc.mutate(s)
				_, err := client.Update(ctx, s, metav1.UpdateOptions{})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("update error %v, want one containing %q", err, tc.want)
				}
			})
		}
		s := sbx.DeepCopy()
		s.Spec.ActiveDeadlineSeconds = ptr.To[int64](30)
		if _, err := client.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Errorf("shortening the deadline must be allowed: %v", err)
		}
	})

	t.Run("status subresource", func(t *testing.T) {
		ns := cp.CreateNamespace(t, "status")
		client := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns)
		sbx, err := client.Create(ctx, validSandbox("st"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Status written through the main resource is ignored.
		s := sbx.DeepCopy()
		s.Status.Phase = v1alpha1.SandboxRunning
		s.Spec.ActiveDeadlineSeconds = ptr.To[int64](10)
		s, err = client.Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Status.Phase != "" {
			t.Errorf("status changed through the main resource: phase %q", s.Status.Phase)
		}
		// Status written through /status is kept, with microsecond times; spec changes there are ignored.
		now := metav1.NowMicro()
		s.Status = v1alpha1.SandboxStatus{
			ObservedGeneration: s.Generation, Phase: v1alpha1.SandboxRunning, Agent: "agent-a", Node: "node-1",
			StartTime: &now,
			Conditions: []metav1.Condition{{Type: v1alpha1.SandboxConditionScheduled, Status: metav1.ConditionTrue,
				Reason: "Bound", LastTransitionTime: metav1.Now()}},
		}
		s.Spec.ActiveDeadlineSeconds = ptr.To[int64](5)
		got, err := client.UpdateStatus(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("UpdateStatus: %v", err)
		}
		if got.Status.Phase != v1alpha1.SandboxRunning || got.Status.Agent != "agent-a" {
			t.Errorf("status not stored: %+v", got.Status)
		}
		if *got.Spec.ActiveDeadlineSeconds != 10 {
			t.Errorf("spec changed through /status: deadline %d", *got.Spec.ActiveDeadlineSeconds)
		}
		if got.Status.StartTime.Nanosecond()/1000 != now.Nanosecond()/1000 {
			t.Errorf("startTime lost its microseconds: stored %v, sent %v", got.Status.StartTime, now)
		}
		bad := got.DeepCopy()
		bad.Status.Phase = "Exploded"
		if _, err := client.UpdateStatus(ctx, bad, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "status.phase") {
			t.Errorf("an unknown phase must be refused, got %v", err)
		}
	})

	t.Run("informers and listers see the objects", func(t *testing.T) {
		ns := cp.CreateNamespace(t, "informers")
		factory := externalversions.NewSharedInformerFactoryWithOptions(cp.Sandbox, 0, externalversions.WithNamespace(ns))
		sandboxes := factory.Sandbox().V1alpha1().Sandboxes()
		pools := factory.Sandbox().V1alpha1().SandboxPools()
		sandboxes.Informer()
		pools.Informer()
		stop := make(chan struct{})
		defer close(stop)
		factory.Start(stop)
		factory.WaitForCacheSync(stop)

		if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools(ns).Create(ctx, validPool("p"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(ctx, validSandbox("s"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			_, errS := sandboxes.Lister().Sandboxes(ns).Get("s")
			_, errP := pools.Lister().SandboxPools(ns).Get("p")
			return errS == nil && errP == nil, nil
		})
		if err != nil {
			t.Fatalf("listers never saw the created objects: %v", err)
		}
	})
}
