package poolcontroller

import (
	"maps"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// What an agent Pod looks like from the outside; the agent's flags and
// environment (cmd/agent) are the other half of this contract.
const (
	// ContainerName is the name of the agent container.
	ContainerName = "agent"
	// StateDir is the agent's --state-dir. It is a hostPath mounted at the
	// same path inside the Pod: containerd's shim, which runs on the host,
	// writes sandbox logs there, so the path must mean the same on both sides.
	StateDir = "/var/lib/fast-sandbox/agent"
	// TLSDir is where the agent's certificate Secret is mounted
	// (tls.crt, tls.key, ca.crt; see pkg/agentpki).
	TLSDir = "/var/run/fast-sandbox/agent-tls"
	// HostnameLabel is the node label the agent Pods' node affinity selects on.
	HostnameLabel = corev1.LabelHostname

	volumeContainerdSocket = "containerd-socket"
	volumeState            = "state"
	volumeTLS              = "agent-tls"
	// volumeCgroup is the node's cgroup filesystem: the agent reads its
	// sandboxes' cgroups (OOM kills, usage) by their host paths, which a
	// container's own cgroup view hides, and writes a warm container's
	// limits when it gives it a sandbox (microseconds, where the OCI
	// runtime's update spawns a process). The agent is privileged anyway.
	volumeCgroup = "cgroup"
	cgroupRoot   = "/sys/fs/cgroup"
	// volumeHostProc is the node's /proc, read-only at HostProcDir: the
	// agent reaches a sandbox container's network namespace (made by the
	// OCI runtime) at HostProcDir/<host PID>/ns/net to wire its veth
	// (networkMode Egress); its own /proc shows only its Pod's processes.
	volumeHostProc = "host-proc"
	// volumeContainerdRoot is containerd's root directory at the same path:
	// the agent mounts snapshots from it to give a user namespace's root
	// filesystem to the remapped ids.
	volumeContainerdRoot = "containerd-root"
	// HostProcDir is where agent Pods see the node's /proc.
	HostProcDir = "/host/proc"
)

// Annotations the controller keeps on agent Pods.
const (
	// AnnotationIdleSince is present on an agent Pod while no Sandbox is bound
	// to it; its value is the RFC 3339 time the controller first saw the agent
	// idle (its creation time for a new agent). The controller removes it when
	// it sees a Sandbox bound to the agent.
	AnnotationIdleSince = "fast-sandbox.io/idle-since"
)

// poolGVK is the kind of the owner of agent Pods and their Secrets.
var poolGVK = v1alpha1.SchemeGroupVersion.WithKind("SandboxPool")

// nodeVolumes are the node's paths that agent and cleanup Pods mount, each
// at the same path inside: containerd's socket (see socketVolume), the agent
// state directory and the cgroup filesystem.
func nodeVolumes(socket string) ([]corev1.Volume, []corev1.VolumeMount) {
	volumes := []corev1.Volume{
		hostPathVolume(volumeState, StateDir, corev1.HostPathDirectoryOrCreate),
		hostPathVolume(volumeCgroup, cgroupRoot, corev1.HostPathDirectory),
	}
	mounts := []corev1.VolumeMount{
		{Name: volumeState, MountPath: StateDir},
		{Name: volumeCgroup, MountPath: cgroupRoot},
	}
	if v, m, ok := socketVolume(socket); ok {
		volumes = append([]corev1.Volume{v}, volumes...)
		mounts = append([]corev1.VolumeMount{m}, mounts...)
	}
	return volumes, mounts
}

func hostPathVolume(name, path string, typ corev1.HostPathType) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
		Path: path, Type: ptr.To(typ),
	}}}
}

// socketDirDenied are directories that a Pod cannot take from the host at
// the same path without losing its own (its image's binaries and libraries,
// its /etc, the kernel filesystems the runtime mounts).
var socketDirDenied = map[string]bool{
	"/": true, "/bin": true, "/dev": true, "/etc": true, "/lib": true, "/lib64": true,
	"/proc": true, "/sbin": true, "/sys": true, "/usr": true,
}

// socketVolume is how a Pod reaches containerd's socket at the same path as
// on the host. It mounts the socket's directory, read-only (connecting to a
// unix socket needs write permission on the socket, which a read-only mount
// does not take away): containerd removes and creates its socket again when
// it restarts, and a bind mount of the socket file itself would keep the old
// one, refusing every connection until the Pod restarts; through the
// directory, the client's next dial finds the new socket. A directory that
// the Pod already mounts (the state directory, the cgroup filesystem, or one
// under them) needs no volume of its own (ok false). A socket at the root or
// in a system directory (socketDirDenied) gets the old file mount: it works
// until containerd restarts, then the agent's liveness probe restarts it.
// Mount propagation stays None: HostToContainer would need the host's mount
// to be shared, which it is not on every node (nor on hack/cluster's).
func socketVolume(socket string) (corev1.Volume, corev1.VolumeMount, bool) {
	socket = path.Clean(socket)
	dir := path.Dir(socket)
	for _, p := range []string{StateDir, cgroupRoot} {
		if dir == p || strings.HasPrefix(dir, p+"/") {
			return corev1.Volume{}, corev1.VolumeMount{}, false
		}
	}
	if !path.IsAbs(socket) || socketDirDenied[dir] {
		return hostPathVolume(volumeContainerdSocket, socket, corev1.HostPathSocket),
			corev1.VolumeMount{Name: volumeContainerdSocket, MountPath: socket}, true
	}
	return hostPathVolume(volumeContainerdSocket, dir, corev1.HostPathDirectory),
		corev1.VolumeMount{Name: volumeContainerdSocket, MountPath: dir, ReadOnly: true}, true
}

// AgentPod builds the agent Pod name of pool in namespace, the system
// namespace (tenants' namespaces never hold privileged Pods). It mounts the
// certificate Secret of that name (v1alpha1.AgentTLSSecretName), which must
// be created first. When hostname is not empty the Pod gets a required node affinity to
// the node whose kubernetes.io/hostname label has that value; kube-scheduler
// still places it, so it is still checked for fit. The Pod is owned by the
// pool (controller reference), so deleting the pool garbage-collects it. It
// carries FinalizerAgentPodCleanup (see cleanup.go).
func AgentPod(pool *v1alpha1.SandboxPool, namespace, name, hostname string) *corev1.Pod {
	spec := pool.Spec.Agent
	socket := spec.ContainerdSocket
	if socket == "" {
		socket = v1alpha1.DefaultContainerdSocket
	}
	ctrdNamespace := spec.ContainerdNamespace
	if ctrdNamespace == "" {
		ctrdNamespace = v1alpha1.DefaultContainerdNamespace
	}
	pullPolicy := spec.ImagePullPolicy
	if pullPolicy == "" {
		pullPolicy = corev1.PullIfNotPresent
	}
	resources := corev1.ResourceList{}
	if spec.Resources.CPU != nil {
		resources[corev1.ResourceCPU] = spec.Resources.CPU.DeepCopy()
	}
	if spec.Resources.Memory != nil {
		resources[corev1.ResourceMemory] = spec.Resources.Memory.DeepCopy()
	}

	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("POD_UID", "metadata.uid"),
		fieldEnv("NODE_NAME", "spec.nodeName"),
		resourceEnv("CPU_LIMIT_MILLIS", "limits.cpu", resource.MustParse("1m")),
		resourceEnv("MEMORY_LIMIT_BYTES", "limits.memory", resource.MustParse("1")),
		{Name: "POOL_NAME", Value: pool.Name},
		{Name: "AGENT_SLOTS", Value: strconv.FormatInt(int64(pool.Spec.SlotsPerAgent), 10)},
		{Name: "CONTAINERD_SOCKET", Value: socket},
		{Name: "CONTAINERD_NAMESPACE", Value: ctrdNamespace},
		{Name: "AGENT_STATE_DIR", Value: StateDir},
		{Name: "AGENT_TLS_DIR", Value: TLSDir},
		{Name: "HOST_PROC", Value: HostProcDir},
		{Name: "AGENT_PROBE_LISTEN", Value: ":" + strconv.Itoa(v1alpha1.AgentProbePort)},
	}
	if pool.Spec.RuntimeHandler != "" {
		env = append(env, corev1.EnvVar{Name: "DEFAULT_RUNTIME_HANDLER", Value: pool.Spec.RuntimeHandler})
	}
	env = append(env, sandboxPolicyEnv(pool)...)
	if n := pool.Spec.WarmContainersPerImage; n != nil {
		env = append(env, corev1.EnvVar{Name: "WARM_PER_IMAGE", Value: strconv.FormatInt(int64(*n), 10)})
	}
	if len(pool.Spec.WarmImages) > 0 {
		env = append(env, corev1.EnvVar{Name: "WARM_IMAGES", Value: strings.Join(pool.Spec.WarmImages, ",")})
	}

	volumes, mounts := nodeVolumes(socket)
	root := spec.ContainerdRoot
	if root == "" {
		root = v1alpha1.DefaultContainerdRoot
	}
	volumes = append(volumes, hostPathVolume(volumeContainerdRoot, root, corev1.HostPathDirectoryOrCreate))
	mounts = append(mounts, corev1.VolumeMount{Name: volumeContainerdRoot, MountPath: root})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            name,
			Namespace:       namespace,
			Labels:          map[string]string{v1alpha1.LabelPoolName: pool.Name},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(pool, poolGVK)},
			Finalizers:      []string{v1alpha1.FinalizerAgentPodCleanup},
		},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:            ContainerName,
				Image:           spec.Image,
				ImagePullPolicy: pullPolicy,
				Env:             env,
				Ports: []corev1.ContainerPort{
					{Name: v1alpha1.AgentAPIPortName, ContainerPort: v1alpha1.AgentAPIPort, Protocol: corev1.ProtocolTCP},
					{Name: v1alpha1.AgentProbePortName, ContainerPort: v1alpha1.AgentProbePort, Protocol: corev1.ProtocolTCP},
				},
				Resources: corev1.ResourceRequirements{Requests: resources, Limits: resources.DeepCopy()},
				// Ready once the agent adopted what containerd runs, and
				// while containerd answers (a new agent is ready within a
				// second; one that lost containerd stops getting sandboxes
				// within a few).
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/readyz", Port: intstr.FromInt32(v1alpha1.AgentProbePort),
					}},
					PeriodSeconds: 1, FailureThreshold: 3, TimeoutSeconds: 1,
				},
				// /healthz fails once containerd has not answered the agent
				// for agent.DefaultLivenessThreshold (30 s); three failures
				// in a row, 20-30 s more, restart it as a last resort (a
				// containerd restart is normally survived without one).
				// A slow start is not held against it: /healthz answers ok
				// until the agent has started (adopted its sandboxes).
				LivenessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/healthz", Port: intstr.FromInt32(v1alpha1.AgentProbePort),
					}},
					PeriodSeconds: 10, FailureThreshold: 3, TimeoutSeconds: 2,
				},
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)},
				VolumeMounts: append(mounts,
					corev1.VolumeMount{Name: volumeTLS, MountPath: TLSDir, ReadOnly: true},
					corev1.VolumeMount{Name: volumeHostProc, MountPath: HostProcDir, ReadOnly: true}),
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
			Volumes: append(volumes,
				corev1.Volume{Name: volumeTLS, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: v1alpha1.AgentTLSSecretName(name), DefaultMode: ptr.To[int32](0o400),
				}}},
				hostPathVolume(volumeHostProc, "/proc", corev1.HostPathDirectory)),
			RestartPolicy:                 corev1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: ptr.To[int64](5),
			EnableServiceLinks:            ptr.To(false),
			AutomountServiceAccountToken:  ptr.To(false),
			NodeSelector:                  maps.Clone(spec.NodeSelector),
			Tolerations:                   append([]corev1.Toleration(nil), spec.Tolerations...),
			PriorityClassName:             spec.PriorityClassName,
		},
	}
	if hostname != "" {
		pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{
						Key: HostnameLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{hostname},
					}},
				}},
			},
		}}
	}
	return pod
}

// sandboxPolicyEnv hands the pool's bounds and hardening of sandboxes to
// the agent (cmd/agent reads these variables).
func sandboxPolicyEnv(pool *v1alpha1.SandboxPool) []corev1.EnvVar {
	logBytes := int64(v1alpha1.DefaultLogMaxBytes)
	if q := pool.Spec.SandboxLogs.MaxSize; q != nil {
		logBytes = q.Value()
	}
	logFiles := int64(v1alpha1.DefaultLogMaxFiles)
	if n := pool.Spec.SandboxLogs.MaxFiles; n > 0 {
		logFiles = int64(n)
	}
	pids := int64(v1alpha1.DefaultSandboxPidsLimit)
	if p := pool.Spec.SandboxDefaults.Resources.Pids; p != nil {
		pids = *p
	}
	userns := pool.Spec.Security.UserNamespaces
	if userns == "" {
		userns = v1alpha1.UserNamespaceAuto
	}
	env := []corev1.EnvVar{
		fieldEnv("HOST_IP", "status.hostIP"),
		{Name: "SANDBOX_DEFAULT_PIDS_LIMIT", Value: strconv.FormatInt(pids, 10)},
		{Name: "SANDBOX_LOG_MAX_BYTES", Value: strconv.FormatInt(logBytes, 10)},
		{Name: "SANDBOX_LOG_MAX_FILES", Value: strconv.FormatInt(logFiles, 10)},
		{Name: "SANDBOX_USER_NAMESPACES", Value: string(userns)},
		{Name: "SANDBOX_READ_ONLY_ROOTFS", Value: strconv.FormatBool(pool.Spec.Security.ReadOnlyRootFilesystem)},
		{Name: "SANDBOX_RUN_AS_NON_ROOT", Value: strconv.FormatBool(pool.Spec.Security.RunAsNonRoot)},
	}
	if e := pool.Spec.Network.Egress; len(e.AllowCIDRs) > 0 || len(e.DenyCIDRs) > 0 {
		env = append(env,
			corev1.EnvVar{Name: "EGRESS_ALLOW_CIDRS", Value: strings.Join(e.AllowCIDRs, ",")},
			corev1.EnvVar{Name: "EGRESS_DENY_CIDRS", Value: strings.Join(e.DenyCIDRs, ",")})
	}
	return env
}

func fieldEnv(name, fieldPath string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: fieldPath},
	}}
}

func resourceEnv(name, res string, divisor resource.Quantity) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: ContainerName, Resource: res, Divisor: divisor},
	}}
}
