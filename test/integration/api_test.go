package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/informers/externalversions"
	"github.com/fast-sandbox/fast-sandbox/test/integration/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// validSandbox is a Sandbox with every field the API checks set.
func validSandbox(name string) *v1alpha1.Sandbox {
	s := kubetest.Sandbox(name, "pool", "docker.io/library/python:3.12", "python", "-c", "print(1)")
	s.Spec.Env = []v1alpha1.EnvVar{{Name: "A", Value: "b"}}
	s.Spec.Resources = kubetest.Resources("500m", "128Mi")
	s.Spec.ActiveDeadlineSeconds = ptr.To[int64](60)
	return s
}

// validPool is a pool of one to four agents of the test agent image.
func validPool(name string) *v1alpha1.SandboxPool {
	return kubetest.Pool(name, 1, 4, 0, "fast-sandbox/agent:dev", kubetest.Resources("2", "4Gi"))
}

func TestAPI(t *testing.T) {
	cp := framework.Start(t)
	ctx := context.Background()

	t.Run("valid objects are accepted and defaulted", func(t *testing.T) {
		ns := kubetest.CreateNamespace(t, cp.Kube, "valid")
		sbx, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(ctx, validSandbox("ok"), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a valid Sandbox: %v", err)
		}
		if sbx.Spec.NetworkMode != v1alpha1.NetworkModeNone {
			t.Errorf("networkMode defaulted to %q, want %q", sbx.Spec.NetworkMode, v1alpha1.NetworkModeNone)
		}
		// The new limits and network mode are accepted as given.
		full := validSandbox("full")
		full.Spec.NetworkMode = v1alpha1.NetworkModeEgress
		full.Spec.Resources.Pids = ptr.To[int64](16)
		full.Spec.Resources.EphemeralStorage = ptr.To(resource.MustParse("1Mi"))
		full, err = cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(ctx, full, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a Sandbox with networkMode Egress, pids and ephemeralStorage: %v", err)
		}
		if full.Spec.NetworkMode != v1alpha1.NetworkModeEgress || ptr.Deref(full.Spec.Resources.Pids, 0) != 16 ||
			full.Spec.Resources.EphemeralStorage == nil || full.Spec.Resources.EphemeralStorage.Cmp(resource.MustParse("1Mi")) != 0 {
			t.Errorf("stored spec %+v", full.Spec)
		}

		// SandboxPools are cluster-scoped: created without a namespace.
		raw, err := cp.Sandbox.SandboxV1alpha1().RESTClient().Post().Resource("sandboxpools").
			Body([]byte(`{"apiVersion":"fast-sandbox.io/v1alpha1","kind":"SandboxPool","metadata":{"name":"defaults"},
			  "spec":{"agent":{"image":"a","resources":{"cpu":"1","memory":"1Gi"}}}}`)).Do(ctx).Get()
		if err != nil {
			t.Fatalf("creating a minimal SandboxPool: %v", err)
		}
		got := raw.(*v1alpha1.SandboxPool)
		if got.Namespace != "" {
			t.Errorf("a cluster-scoped pool got namespace %q", got.Namespace)
		}
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
		// The sandbox log bounds and the hardening default to what the
		// components assume when they are absent.
		logs := got.Spec.SandboxLogs
		if logs.MaxFiles != v1alpha1.DefaultLogMaxFiles || logs.MaxSize == nil || logs.MaxSize.Value() != v1alpha1.DefaultLogMaxBytes ||
			logs.MaxSize.String() != "10Mi" {
			t.Errorf("sandboxLogs defaulted to %+v (maxSize %v), want maxFiles %d, maxSize 10Mi", logs, logs.MaxSize, v1alpha1.DefaultLogMaxFiles)
		}
		if sec := got.Spec.Security; sec.UserNamespaces != v1alpha1.UserNamespaceAuto || sec.ReadOnlyRootFilesystem || sec.RunAsNonRoot {
			t.Errorf("security defaulted to %+v, want userNamespaces Auto and nothing else", sec)
		}
		if got.Spec.NamespaceSelector != nil || len(got.Spec.AllowedImages) != 0 || len(got.Spec.AllowedRuntimeHandlers) != 0 {
			t.Errorf("tenancy restrictions defaulted: namespaceSelector %v allowedImages %v allowedRuntimeHandlers %v",
				got.Spec.NamespaceSelector, got.Spec.AllowedImages, got.Spec.AllowedRuntimeHandlers)
		}
		if r := got.Spec.SandboxDefaults.Resources; r.CPU != nil || r.Memory != nil || r.Pids != nil || r.EphemeralStorage != nil {
			t.Errorf("sandboxDefaults defaulted to %+v, want none set", r)
		}
		if e := got.Spec.Network.Egress; len(e.AllowCIDRs) != 0 || len(e.DenyCIDRs) != 0 {
			t.Errorf("egress policy defaulted to %+v, want empty", e)
		}

		// Set fields are kept as given.
		fp := validPool("full")
		fp.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"tenant": "a"}}
		fp.Spec.AllowedImages = []string{"docker.io/library/*", "docker.io/library/python:3.12"}
		fp.Spec.AllowedRuntimeHandlers = []string{"runc", "crun"}
		fp.Spec.SandboxDefaults.Resources = v1alpha1.SandboxResources{CPU: ptr.To(resource.MustParse("250m")),
			Memory: ptr.To(resource.MustParse("64Mi")), Pids: ptr.To[int64](256), EphemeralStorage: ptr.To(resource.MustParse("1Gi"))}
		fp.Spec.SandboxLogs = v1alpha1.SandboxLogs{MaxSize: ptr.To(resource.MustParse("4Ki")), MaxFiles: 10}
		fp.Spec.Security = v1alpha1.SandboxSecurity{UserNamespaces: v1alpha1.UserNamespaceRequired, ReadOnlyRootFilesystem: true, RunAsNonRoot: true}
		fp.Spec.Network.Egress = v1alpha1.EgressPolicy{AllowCIDRs: []string{"10.96.0.10/32", "fd00::/8", "2001:0db8:85a3:0000:0000:8a2e:0370:7334/128"}, DenyCIDRs: []string{"203.0.113.0/24"}}
		fp.Spec.Agent.ContainerdSocket = "/run/k3s/containerd/containerd.sock"
		stored, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Create(ctx, fp, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating a pool with every new field set: %v", err)
		}
		if !equality.Semantic.DeepEqual(stored.Spec.NamespaceSelector, fp.Spec.NamespaceSelector) ||
			!equality.Semantic.DeepEqual(stored.Spec.AllowedImages, fp.Spec.AllowedImages) ||
			!equality.Semantic.DeepEqual(stored.Spec.AllowedRuntimeHandlers, fp.Spec.AllowedRuntimeHandlers) ||
			!equality.Semantic.DeepEqual(stored.Spec.SandboxDefaults, fp.Spec.SandboxDefaults) ||
			!equality.Semantic.DeepEqual(stored.Spec.SandboxLogs, fp.Spec.SandboxLogs) ||
			stored.Spec.Security != fp.Spec.Security ||
			!equality.Semantic.DeepEqual(stored.Spec.Network, fp.Spec.Network) ||
			stored.Spec.Agent.ContainerdSocket != fp.Spec.Agent.ContainerdSocket {
			t.Errorf("stored spec %+v, want the new fields as sent: %+v", stored.Spec, fp.Spec)
		}
	})

	t.Run("invalid sandboxes are refused with a clear message", func(t *testing.T) {
		ns := kubetest.CreateNamespace(t, cp.Kube, "invalid-sbx")
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
			{"network mode Pod is gone", func(s *v1alpha1.Sandbox) { s.Spec.NetworkMode = "Pod" }, `spec.networkMode: Unsupported value: "Pod"`},
			{"pids below 16", func(s *v1alpha1.Sandbox) { s.Spec.Resources.Pids = ptr.To[int64](15) }, "spec.resources.pids"},
			{"pids above the maximum", func(s *v1alpha1.Sandbox) { s.Spec.Resources.Pids = ptr.To[int64](1<<20 + 1) }, "spec.resources.pids"},
			{"tiny ephemeral storage", func(s *v1alpha1.Sandbox) {
				s.Spec.Resources.EphemeralStorage = ptr.To(resource.MustParse("512Ki"))
			}, "ephemeralStorage must be at least 1Mi"},
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
			{"socket path not a socket", func(p *v1alpha1.SandboxPool) { p.Spec.Agent.ContainerdSocket = "/etc/shadow" }, "spec.agent.containerdSocket"},
			{"socket path is a directory", func(p *v1alpha1.SandboxPool) { p.Spec.Agent.ContainerdSocket = "/run/containerd/" }, "spec.agent.containerdSocket"},
			{"socket path with ..", func(p *v1alpha1.SandboxPool) {
				p.Spec.Agent.ContainerdSocket = "/run/containerd/../../etc/evil.sock"
			}, "containerdSocket must be a clean path"},
			{"socket path with .", func(p *v1alpha1.SandboxPool) {
				p.Spec.Agent.ContainerdSocket = "/run/./containerd.sock"
			}, "containerdSocket must be a clean path"},
			{"allowed CIDR not a CIDR", func(p *v1alpha1.SandboxPool) {
				p.Spec.Network.Egress.AllowCIDRs = []string{"10.96.0.10/32", "nope"}
			}, "must be a CIDR"},
			{"denied CIDR is an address", func(p *v1alpha1.SandboxPool) {
				p.Spec.Network.Egress.DenyCIDRs = []string{"203.0.113.7"}
			}, "must be a CIDR"},
			{"log size below 4Ki", func(p *v1alpha1.SandboxPool) {
				p.Spec.SandboxLogs.MaxSize = ptr.To(resource.MustParse("1Ki"))
			}, "maxSize must be between 4Ki and 1Gi"},
			{"log size above 1Gi", func(p *v1alpha1.SandboxPool) {
				p.Spec.SandboxLogs.MaxSize = ptr.To(resource.MustParse("2Gi"))
			}, "maxSize must be between 4Ki and 1Gi"},
			{"too many log files", func(p *v1alpha1.SandboxPool) { p.Spec.SandboxLogs.MaxFiles = 11 }, "spec.sandboxLogs.maxFiles"},
			{"unknown user namespace mode", func(p *v1alpha1.SandboxPool) {
				p.Spec.Security.UserNamespaces = "Sometimes"
			}, `spec.security.userNamespaces: Unsupported value: "Sometimes"`},
			{"default pids below 16", func(p *v1alpha1.SandboxPool) {
				p.Spec.SandboxDefaults.Resources.Pids = ptr.To[int64](8)
			}, "spec.sandboxDefaults.resources.pids"},
			{"default memory too small", func(p *v1alpha1.SandboxPool) {
				p.Spec.SandboxDefaults.Resources.Memory = ptr.To(resource.MustParse("1Ki"))
			}, "memory must be at least 4Mi"},
			{"bad allowed runtime handler", func(p *v1alpha1.SandboxPool) {
				p.Spec.AllowedRuntimeHandlers = []string{"runc", "Run C"}
			}, "spec.allowedRuntimeHandlers[1]"},
			{"empty allowed image", func(p *v1alpha1.SandboxPool) { p.Spec.AllowedImages = []string{""} }, "spec.allowedImages[0]"},
			{"score weight out of range", func(p *v1alpha1.SandboxPool) {
				p.Spec.Scheduling.ScoreWeights = map[string]int32{"ImageAffinity": 200}
			}, "score weights must be between 0 and 100"},
			{"unknown pull policy", func(p *v1alpha1.SandboxPool) { p.Spec.ImagePullPolicy = "Always" }, "spec.imagePullPolicy"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				p := validPool("bad")
				tc.mutate(p)
				_, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Create(ctx, p, metav1.CreateOptions{})
				if err == nil {
					t.Fatalf("accepted an invalid SandboxPool, want an error containing %q", tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q does not contain %q", err, tc.want)
				}
			})
		}
		if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Get(ctx, "bad", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("refused pools must leave nothing behind: get %v", err)
		}
	})

	t.Run("the container-shaping spec is immutable", func(t *testing.T) {
		ns := kubetest.CreateNamespace(t, cp.Kube, "immutable")
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
			{"pids", func(s *v1alpha1.Sandbox) { s.Spec.Resources.Pids = ptr.To[int64](64) }, "resources are immutable"},
			{"network mode", func(s *v1alpha1.Sandbox) { s.Spec.NetworkMode = v1alpha1.NetworkModeEgress }, "networkMode is immutable"},
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
		ns := kubetest.CreateNamespace(t, cp.Kube, "status")
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
		ns := kubetest.CreateNamespace(t, cp.Kube, "informers")
		// The namespace narrows the Sandbox informer; pools are cluster-scoped.
		factory := externalversions.NewSharedInformerFactoryWithOptions(cp.Sandbox, 0, externalversions.WithNamespace(ns))
		sandboxes := factory.Sandbox().V1alpha1().Sandboxes()
		pools := factory.Sandbox().V1alpha1().SandboxPools()
		sandboxes.Informer()
		pools.Informer()
		stop := make(chan struct{})
		defer close(stop)
		factory.Start(stop)
		factory.WaitForCacheSync(stop)

		if _, err := cp.Sandbox.SandboxV1alpha1().SandboxPools().Create(ctx, validPool("informed"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Sandbox.SandboxV1alpha1().Sandboxes(ns).Create(ctx, validSandbox("s"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.Eventually(t, kubetest.Poll{Interval: 10 * time.Millisecond, Timeout: 10 * time.Second}, "the listers see the created objects",
			func(context.Context) error {
				_, errS := sandboxes.Lister().Sandboxes(ns).Get("s")
				_, errP := pools.Lister().Get("informed")
				return errors.Join(errS, errP)
			})
	})
}
