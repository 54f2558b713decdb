package poolcontroller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

func testPool() *v1alpha1.SandboxPool {
	return &v1alpha1.SandboxPool{
		ObjectMeta: metav1.ObjectMeta{Name: "py", UID: "pool-uid"},
		Spec: v1alpha1.SandboxPoolSpec{
			MinAgents: 1, MaxAgents: 3, SlotsPerAgent: 4, RuntimeHandler: "crun",
			WarmImages: []string{"python:3.12", "node:22"}, WarmContainersPerImage: ptr.To[int32](3),
			Agent: v1alpha1.AgentTemplate{
				Image: "fast-sandbox/agent:v1", ImagePullPolicy: corev1.PullAlways,
				Resources: v1alpha1.SandboxResources{
					CPU: ptr.To(resource.MustParse("4")), Memory: ptr.To(resource.MustParse("8Gi")),
				},
				NodeSelector:        map[string]string{"pool": "sandbox"},
				Tolerations:         []corev1.Toleration{{Key: "sandbox", Operator: corev1.TolerationOpExists}},
				ContainerdSocket:    "/run/k3s/containerd/containerd.sock",
				ContainerdNamespace: "k8s.io",
				PriorityClassName:   "high",
			},
		},
	}
}

func envOf(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func mountOf(c *corev1.Container, name string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == name {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volumeOf(pod *corev1.Pod, name string) *corev1.Volume {
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == name {
			return &pod.Spec.Volumes[i]
		}
	}
	return nil
}

func TestAgentPod(t *testing.T) {
	pool := testPool()
	pod := AgentPod(pool, "fast-sandbox-system", "py-agent-x1", "node-a")

	if pod.Name != "py-agent-x1" || pod.Namespace != "fast-sandbox-system" {
		t.Errorf("name %q namespace %q", pod.Name, pod.Namespace)
	}
	if pod.Labels[v1alpha1.LabelPoolName] != "py" {
		t.Errorf("labels %v", pod.Labels)
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.UID != "pool-uid" || ref.Kind != "SandboxPool" || ref.APIVersion != "fast-sandbox.io/v1alpha1" ||
		!ptr.Deref(ref.BlockOwnerDeletion, false) {
		t.Errorf("controller reference %+v", ref)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Spec.Containers))
	}
	c := &pod.Spec.Containers[0]
	if c.Name != "agent" || c.Image != "fast-sandbox/agent:v1" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("container %q image %q pull %q", c.Name, c.Image, c.ImagePullPolicy)
	}
	if c.SecurityContext == nil || !ptr.Deref(c.SecurityContext.Privileged, false) {
		t.Errorf("not privileged: %+v", c.SecurityContext)
	}

	// containerd socket: its directory as a hostPath, mounted read-only at
	// the same path, so that the socket containerd makes again when it
	// restarts shows inside; the agent is given the socket's path.
	if v := volumeOf(pod, volumeContainerdSocket); v == nil || v.HostPath == nil ||
		v.HostPath.Path != "/run/k3s/containerd" || *v.HostPath.Type != corev1.HostPathDirectory {
		t.Errorf("socket volume %+v", v)
	}
	if m := mountOf(c, volumeContainerdSocket); m == nil || m.MountPath != "/run/k3s/containerd" || !m.ReadOnly {
		t.Errorf("socket mount %+v", m)
	}
	if e := envOf(c, "CONTAINERD_SOCKET"); e == nil || e.Value != "/run/k3s/containerd/containerd.sock" {
		t.Errorf("CONTAINERD_SOCKET %+v", e)
	}
	// State dir: same path on host and inside.
	if v := volumeOf(pod, volumeState); v == nil || v.HostPath == nil ||
		v.HostPath.Path != "/var/lib/fast-sandbox/agent" || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
		t.Errorf("state volume %+v", v)
	}
	if m := mountOf(c, volumeState); m == nil || m.MountPath != "/var/lib/fast-sandbox/agent" {
		t.Errorf("state mount %+v", m)
	}
	// Its own certificate Secret, read-only where the agent reads it.
	if v := volumeOf(pod, volumeTLS); v == nil || v.Secret == nil || v.Secret.SecretName != "py-agent-x1-tls" {
		t.Errorf("TLS volume %+v", v)
	}
	if m := mountOf(c, volumeTLS); m == nil || m.MountPath != "/var/run/fast-sandbox/agent-tls" || !m.ReadOnly {
		t.Errorf("TLS mount %+v", m)
	}
	if e := envOf(c, "AGENT_TLS_DIR"); e == nil || e.Value != "/var/run/fast-sandbox/agent-tls" {
		t.Errorf("AGENT_TLS_DIR %+v", e)
	}
	// Probes go to the plain-HTTP probe port: kubelet has no client certificate.
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Port.IntValue() != v1alpha1.AgentProbePort || p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
		t.Errorf("readiness probe %+v", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Port.IntValue() != v1alpha1.AgentProbePort {
		t.Errorf("liveness probe %+v", p)
	}

	fieldRefs := map[string]string{
		"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
		"POD_UID": "metadata.uid", "NODE_NAME": "spec.nodeName",
	}
	for name, path := range fieldRefs {
		e := envOf(c, name)
		if e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s: %+v, want fieldRef %s", name, e, path)
		}
	}
	resourceRefs := map[string][2]string{"CPU_LIMIT_MILLIS": {"limits.cpu", "1m"}, "MEMORY_LIMIT_BYTES": {"limits.memory", "1"}}
	for name, want := range resourceRefs {
		e := envOf(c, name)
		if e == nil || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil {
			t.Errorf("env %s: %+v, want a resourceFieldRef", name, e)
			continue
		}
		r := e.ValueFrom.ResourceFieldRef
		if r.Resource != want[0] || r.Divisor.Cmp(resource.MustParse(want[1])) != 0 || r.ContainerName != "agent" {
			t.Errorf("env %s: resourceFieldRef %+v, want %s divisor %s", name, r, want[0], want[1])
		}
	}
	values := map[string]string{
		"POOL_NAME": "py", "AGENT_SLOTS": "4", "DEFAULT_RUNTIME_HANDLER": "crun",
		"CONTAINERD_SOCKET": "/run/k3s/containerd/containerd.sock", "CONTAINERD_NAMESPACE": "k8s.io",
		"AGENT_STATE_DIR": "/var/lib/fast-sandbox/agent", "AGENT_PROBE_LISTEN": ":8082",
		"WARM_IMAGES": "python:3.12,node:22", "WARM_PER_IMAGE": "3",
	}
	for name, want := range values {
		if e := envOf(c, name); e == nil || e.Value != want {
			t.Errorf("env %s: %+v, want %q", name, e, want)
		}
	}

	wantRes := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi")}
	if !equality.Semantic.DeepEqual(c.Resources.Requests, wantRes) || !equality.Semantic.DeepEqual(c.Resources.Limits, wantRes) {
		t.Errorf("resources %+v, want requests = limits = %v", c.Resources, wantRes)
	}
	if len(c.Ports) != 2 || c.Ports[0].ContainerPort != 8081 || c.Ports[0].Name != "agent-api" ||
		c.Ports[1].ContainerPort != 8082 || c.Ports[1].Name != "agent-probe" {
		t.Errorf("ports %+v", c.Ports)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.IntValue() != 8082 ||
		p.PeriodSeconds != 1 || p.FailureThreshold != 3 || p.TimeoutSeconds != 1 {
		t.Errorf("readiness probe %+v", p)
	}
	// The agent's /healthz fails after 30 s without containerd; kubelet
	// restarts it after 20-30 s more of failures, not minutes.
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.IntValue() != 8082 ||
		p.PeriodSeconds != 10 || p.FailureThreshold != 3 || p.TimeoutSeconds != 2 || p.InitialDelaySeconds != 0 {
		t.Errorf("liveness probe %+v", p)
	} else if restartAfter := p.PeriodSeconds * p.FailureThreshold; restartAfter > 60 {
		t.Errorf("liveness: a restart only %d s after /healthz fails", restartAfter)
	}

	spec := &pod.Spec
	if ptr.Deref(spec.TerminationGracePeriodSeconds, 0) != 5 || ptr.Deref(spec.EnableServiceLinks, true) ||
		ptr.Deref(spec.AutomountServiceAccountToken, true) {
		t.Errorf("grace %v serviceLinks %v automount %v", spec.TerminationGracePeriodSeconds, spec.EnableServiceLinks, spec.AutomountServiceAccountToken)
	}
	if spec.NodeSelector["pool"] != "sandbox" || len(spec.Tolerations) != 1 || spec.PriorityClassName != "high" {
		t.Errorf("nodeSelector %v tolerations %v priority %q", spec.NodeSelector, spec.Tolerations, spec.PriorityClassName)
	}
	if spec.NodeName != "" {
		t.Errorf("nodeName %q set: kube-scheduler must still place the Pod", spec.NodeName)
	}
	want := &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
			Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{"node-a"},
		}}}},
	}}
	if spec.Affinity == nil || !equality.Semantic.DeepEqual(spec.Affinity.NodeAffinity, want) {
		t.Errorf("affinity %+v, want required hostname In [node-a]", spec.Affinity)
	}
	if podPinnedHostname(pod) != "node-a" {
		t.Errorf("podPinnedHostname = %q", podPinnedHostname(pod))
	}
}

func TestAgentPodDefaults(t *testing.T) {
	pool := testPool()
	pool.Spec.Agent.ContainerdSocket, pool.Spec.Agent.ContainerdNamespace = "", ""
	pool.Spec.Agent.ImagePullPolicy, pool.Spec.RuntimeHandler = "", ""
	pool.Spec.WarmImages, pool.Spec.WarmContainersPerImage = nil, nil
	pod := AgentPod(pool, "fast-sandbox-system", "s", "")
	c := &pod.Spec.Containers[0]
	if pod.Spec.Affinity != nil {
		t.Errorf("affinity %+v without a chosen node", pod.Spec.Affinity)
	}
	if c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("pull policy %q", c.ImagePullPolicy)
	}
	if e := envOf(c, "DEFAULT_RUNTIME_HANDLER"); e != nil {
		t.Errorf("DEFAULT_RUNTIME_HANDLER set without a pool runtime handler: %+v", e)
	}
	for _, name := range []string{"WARM_IMAGES", "WARM_PER_IMAGE"} {
		if e := envOf(c, name); e != nil {
			t.Errorf("%s set without the pool saying so (the agent has its default): %+v", name, e)
		}
	}
	if e := envOf(c, "CONTAINERD_SOCKET"); e == nil || e.Value != v1alpha1.DefaultContainerdSocket {
		t.Errorf("CONTAINERD_SOCKET %+v", e)
	}
	if m := mountOf(c, volumeContainerdSocket); m == nil || m.MountPath != "/run/containerd" {
		t.Errorf("socket mount %+v", m)
	}
	// The pool's maps are not shared with the Pod.
	pod.Spec.NodeSelector["x"] = "y"
	if _, ok := pool.Spec.Agent.NodeSelector["x"]; ok {
		t.Error("the Pod's node selector aliases the pool's")
	}
}

func TestAgentTLSSecret(t *testing.T) {
	s := agentTLSSecret(testPool(), "fast-sandbox-system", "py-agent-x1", []byte("c"), []byte("k"), []byte("ca"))
	if s.Name != "py-agent-x1-tls" || s.Namespace != "fast-sandbox-system" || s.Type != corev1.SecretTypeTLS {
		t.Errorf("secret %s/%s type %s", s.Namespace, s.Name, s.Type)
	}
	if string(s.Data["tls.crt"]) != "c" || string(s.Data["tls.key"]) != "k" || string(s.Data["ca.crt"]) != "ca" {
		t.Errorf("data %v", s.Data)
	}
	if s.Labels[v1alpha1.LabelPoolName] != "py" || s.Labels[v1alpha1.LabelAgentTLS] != "py-agent-x1" {
		t.Errorf("labels %v", s.Labels)
	}
	if ref := metav1.GetControllerOf(s); ref == nil || ref.UID != "pool-uid" {
		t.Errorf("controller reference %+v", ref)
	}
}

func TestSocketVolume(t *testing.T) {
	dir, sock := corev1.HostPathDirectory, corev1.HostPathSocket
	for _, tc := range []struct {
		socket   string
		want     string // host path and mount path; "" for no volume of its own
		typ      corev1.HostPathType
		readOnly bool
	}{
		{socket: "/run/containerd/containerd.sock", want: "/run/containerd", typ: dir, readOnly: true},
		{socket: "/run/k3s/containerd/containerd.sock", want: "/run/k3s/containerd", typ: dir, readOnly: true},
		{socket: "/var/run/containerd//containerd.sock", want: "/var/run/containerd", typ: dir, readOnly: true},
		{socket: "/run/x/../containerd/containerd.sock", want: "/run/containerd", typ: dir, readOnly: true},
		{socket: "/run/containerd.sock", want: "/run", typ: dir, readOnly: true},
		// At the root or in a system directory: the socket file, as it cannot be the directory.
		{socket: "/containerd.sock", want: "/containerd.sock", typ: sock},
		{socket: "/etc/containerd.sock", want: "/etc/containerd.sock", typ: sock},
		{socket: "/dev/containerd.sock", want: "/dev/containerd.sock", typ: sock},
		// In a directory the Pod mounts anyway: nothing more.
		{socket: StateDir + "/containerd.sock"},
		{socket: StateDir + "/run/containerd.sock"},
		{socket: cgroupRoot + "/containerd.sock"},
	} {
		t.Run(tc.socket, func(t *testing.T) {
			pool := testPool()
			pool.Spec.Agent.ContainerdSocket = tc.socket
			pod := AgentPod(pool, "fast-sandbox-system", "s", "")
			c := &pod.Spec.Containers[0]
			v, m := volumeOf(pod, volumeContainerdSocket), mountOf(c, volumeContainerdSocket)
			if tc.want == "" {
				if v != nil || m != nil {
					t.Errorf("volume %+v mount %+v, want none", v, m)
				}
			} else {
				if v == nil || v.HostPath == nil || v.HostPath.Path != tc.want || *v.HostPath.Type != tc.typ {
					t.Errorf("volume %+v, want hostPath %s of type %s", v, tc.want, tc.typ)
				}
				if m == nil || m.MountPath != tc.want || m.ReadOnly != tc.readOnly {
					t.Errorf("mount %+v, want %s readOnly %v", m, tc.want, tc.readOnly)
				}
			}
			// Mount paths stay unique (the API server refuses a Pod otherwise).
			seen := map[string]bool{}
			for _, m := range c.VolumeMounts {
				if seen[m.MountPath] {
					t.Errorf("mount path %s twice: %+v", m.MountPath, c.VolumeMounts)
				}
				seen[m.MountPath] = true
			}
			if e := envOf(c, "CONTAINERD_SOCKET"); e == nil || e.Value != tc.socket {
				t.Errorf("CONTAINERD_SOCKET %+v", e)
			}
			cp := CleanupPod(pod, pool.Name, pool)
			if cv := volumeOf(cp, volumeContainerdSocket); !equality.Semantic.DeepEqual(cv, v) {
				t.Errorf("cleanup Pod's socket volume %+v, the agent's %+v", cv, v)
			}
		})
	}
}
