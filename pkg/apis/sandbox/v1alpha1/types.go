package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels and annotations that fast-sandbox puts on the objects it manages.
const (
	// LabelPoolName names the SandboxPool an agent Pod (or a sandbox container)
	// belongs to. The scheduler takes a Pod for an agent only if it also is
	// controlled by that pool (ownerReference) and lives in the system
	// namespace; the label alone proves nothing.
	LabelPoolName = "fast-sandbox.io/pool-name"
	// LabelAgentName names the agent Pod a sandbox container runs in.
	LabelAgentName = "fast-sandbox.io/agent-name"
	// LabelSandboxName, LabelSandboxNamespace and LabelSandboxUID identify the
	// Sandbox a container was created for.
	LabelSandboxName      = "fast-sandbox.io/sandbox-name"
	LabelSandboxNamespace = "fast-sandbox.io/sandbox-namespace"
	LabelSandboxUID       = "fast-sandbox.io/sandbox-uid"

	// FinalizerAgentCleanup keeps a Sandbox until its container is gone from the agent.
	FinalizerAgentCleanup = "fast-sandbox.io/agent-cleanup"

	// FinalizerAgentPodCleanup is on every agent Pod the pool controller
	// creates. It keeps the Pod object until the node is known to hold none
	// of its containers: once the agent container no longer runs, the pool
	// controller runs a cleanup Pod on the node that removes every container
	// labelled with the agent Pod's UID (sandboxes and warm containers, with
	// their tasks, snapshots, logs and warm directories), and removes the
	// finalizer when that Pod has Succeeded. It removes it without a cleanup
	// Pod when there is nothing to clean or no way to: the agent Pod never got
	// a node, its Node object is gone, or its namespace is terminating. So
	// while an agent Pod object exists, its sandbox containers may still be
	// on the node; once it is gone, they are (except in those cases).
	FinalizerAgentPodCleanup = "fast-sandbox.io/sandbox-cleanup"
	// LabelCleanupAgentPodUID marks a cleanup Pod (see
	// FinalizerAgentPodCleanup); its value is the UID of the agent Pod whose
	// containers it removes. Cleanup Pods never carry LabelPoolName: they are
	// not agents.
	LabelCleanupAgentPodUID = "fast-sandbox.io/cleanup-agent-pod-uid"
	// LabelCleanupPoolName names the SandboxPool of the agent Pod a cleanup
	// Pod cleans up after.
	LabelCleanupPoolName = "fast-sandbox.io/cleanup-pool-name"
	// AnnotationCleanupAgentPodName is the name of the agent Pod a cleanup
	// Pod cleans up after (for people; the controller goes by the UID label).
	AnnotationCleanupAgentPodName = "fast-sandbox.io/cleanup-agent-pod-name"
)

// Defaults of the API, shared by the CRD markers and the components.
const (
	DefaultContainerdSocket    = "/run/containerd/containerd.sock"
	DefaultContainerdNamespace = "k8s.io"
	DefaultContainerdRoot      = "/var/lib/containerd"
	DefaultSchedulerName       = "fast-sandbox"
	DefaultSlotsPerAgent       = 8
	DefaultScaleDownDelay      = 300
	// DefaultSystemNamespace is where the components and the agent Pods run.
	DefaultSystemNamespace = "fast-sandbox-system"
	// DefaultSandboxPidsLimit bounds the processes of a sandbox whose pool
	// sets no default.
	DefaultSandboxPidsLimit = 1024
	// DefaultLogMaxBytes and DefaultLogMaxFiles bound a sandbox's log: the
	// current file is rotated at DefaultLogMaxBytes and DefaultLogMaxFiles
	// files are kept (the current one included).
	DefaultLogMaxBytes = 10 << 20
	DefaultLogMaxFiles = 2
)

// +genclient
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=sbx,categories=fast-sandbox
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.poolName`
// +kubebuilder:printcolumn:name="Agent",type=string,JSONPath=`.status.agent`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.node`
// +kubebuilder:printcolumn:name="Exit",type=integer,JSONPath=`.status.exitCode`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// Sandbox is one container that runs in a slot of an agent of a SandboxPool.
// It is created, runs its command once, and finishes; it is never restarted.
type Sandbox struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec SandboxSpec `json:"spec"`
	// +optional
	Status SandboxStatus `json:"status,omitempty"`
}

// SandboxNetworkMode says which network a sandbox container gets. No mode
// shares the agent Pod's network namespace.
// +kubebuilder:validation:Enum=None;Egress
type SandboxNetworkMode string

const (
	// NetworkModeNone gives the sandbox its own network namespace with only loopback.
	NetworkModeNone SandboxNetworkMode = "None"
	// NetworkModeEgress gives the sandbox its own network namespace with a
	// veth into the agent Pod's and NAT out of it, filtered by the pool's
	// egress policy: outbound connections only, to where the policy allows;
	// never to the agent, the node or another sandbox.
	NetworkModeEgress SandboxNetworkMode = "Egress"
)

// SandboxSpec is what the user asks to run. Everything that shapes the
// container is immutable; only the deadlines (activeDeadlineSeconds may
// only be shortened), ttlSecondsAfterFinished, failurePolicy, paused,
// idleTimeoutSeconds and idlePolicy may change.
// +kubebuilder:validation:XValidation:rule="!has(self.activeDeadlineSeconds) || !has(oldSelf.activeDeadlineSeconds) || self.activeDeadlineSeconds <= oldSelf.activeDeadlineSeconds",message="activeDeadlineSeconds may only be shortened"
// +kubebuilder:validation:XValidation:rule="!has(self.idlePolicy) || self.idlePolicy != 'Delete' || has(self.idleTimeoutSeconds)",message="idlePolicy Delete requires idleTimeoutSeconds"
//
// Adding or removing an immutable field changes it too (an absent field is
// the same as an empty one).
// +kubebuilder:validation:XValidation:rule="(has(self.command) ? self.command : []) == (has(oldSelf.command) ? oldSelf.command : [])",message="command is immutable"
// +kubebuilder:validation:XValidation:rule="(has(self.args) ? self.args : []) == (has(oldSelf.args) ? oldSelf.args : [])",message="args is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.env) == has(oldSelf.env) || size(has(self.env) ? self.env : oldSelf.env) == 0",message="env is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.workingDir) == has(oldSelf.workingDir) || size(has(self.workingDir) ? self.workingDir : oldSelf.workingDir) == 0",message="workingDir is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.runtimeHandler) == has(oldSelf.runtimeHandler) || size(has(self.runtimeHandler) ? self.runtimeHandler : oldSelf.runtimeHandler) == 0",message="runtimeHandler is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.resources) == has(oldSelf.resources) || [has(self.resources) ? self.resources : oldSelf.resources].all(r, !has(r.cpu) && !has(r.memory) && !has(r.pids) && !has(r.ephemeralStorage))",message="resources are immutable"
type SandboxSpec struct {
	// PoolName is the SandboxPool (cluster-scoped) whose agents run this
	// sandbox; the pool's namespaceSelector must select the Sandbox's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="poolName is immutable"
	PoolName string `json:"poolName"`

	// Image is the container image, e.g. "python:3.12" or a reference by digest.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^[^\s]+$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="image is immutable"
	Image string `json:"image"`

	// Command replaces the image's entrypoint.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="command is immutable"
	Command []string `json:"command,omitempty"`

	// Args replaces the image's cmd.
	// +optional
	// +kubebuilder:validation:MaxItems=1024
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="args is immutable"
	Args []string `json:"args,omitempty"`

	// Env is added to the image's environment.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="env is immutable"
	Env []EnvVar `json:"env,omitempty"`

	// WorkingDir is the working directory of the command; the image's by default.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="workingDir is immutable"
	WorkingDir string `json:"workingDir,omitempty"`

	// Resources are the limits of the sandbox container; they are also what
	// the sandbox takes from its agent's capacity. Those it leaves out are
	// the pool's sandboxDefaults.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="resources are immutable"
	Resources SandboxResources `json:"resources,omitempty"`

	// RuntimeHandler is the containerd runtime handler (e.g. "runc", "crun");
	// the pool's by default.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="runtimeHandler is immutable"
	RuntimeHandler string `json:"runtimeHandler,omitempty"`

	// NetworkMode is None (own network namespace, loopback only; the
	// default) or Egress (own network namespace with outbound connections
	// that the pool's egress policy allows).
	// +optional
	// +kubebuilder:default=None
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="networkMode is immutable"
	NetworkMode SandboxNetworkMode `json:"networkMode,omitempty"`

	// ActiveDeadlineSeconds bounds how long the sandbox may run once started;
	// it is Failed with reason DeadlineExceeded after that. Time spent
	// paused counts: a paused sandbox is stopped at its deadline too.
	// +optional
	// +kubebuilder:validation:Minimum=1
	ActiveDeadlineSeconds *int64 `json:"activeDeadlineSeconds,omitempty"`

	// TTLSecondsAfterFinished deletes the Sandbox that long after it finished.
	// +optional
	// +kubebuilder:validation:Minimum=0
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`

	// FailurePolicy says what happens when the sandbox's agent is lost
	// before the sandbox finished: Fail (the default) fails it with reason
	// AgentLost, so its command runs at most once; AutoRecreate places it
	// again on another agent, in a new container, counting status.restarts,
	// for those who prefer at-least-once to a failure.
	// +optional
	// +kubebuilder:default=Fail
	FailurePolicy SandboxFailurePolicy `json:"failurePolicy,omitempty"`

	// Paused, when true, freezes every process of the sandbox (cgroup
	// freezer): they use no CPU and keep their memory. Setting it back to
	// false thaws them. It may be changed at any time; a paused sandbox is
	// in phase Paused with condition Paused (reason PausedBySpec), keeps its
	// slot on the agent, and its activeDeadlineSeconds keeps counting.
	// +optional
	Paused bool `json:"paused,omitempty"`

	// IdleTimeoutSeconds, if set, makes the sandbox idle once no exec,
	// attach, log follow or files call has been made for that long (a call
	// in progress counts as activity until it ends); idlePolicy says what
	// happens then. It may be changed at any time.
	// +optional
	// +kubebuilder:validation:Minimum=1
	IdleTimeoutSeconds *int32 `json:"idleTimeoutSeconds,omitempty"`

	// IdlePolicy is what happens to an idle sandbox (see
	// idleTimeoutSeconds): Pause (the default) freezes it, as paused does,
	// with condition Paused reason Idle, and the next exec, attach or files
	// call thaws it; Delete deletes the Sandbox object. Without
	// idleTimeoutSeconds a sandbox is never idle, so Pause does nothing
	// and Delete is refused. It may be changed at any time.
	// +optional
	// +kubebuilder:default=Pause
	IdlePolicy SandboxIdlePolicy `json:"idlePolicy,omitempty"`
}

// SandboxIdlePolicy says what happens to an idle sandbox.
// +kubebuilder:validation:Enum=Pause;Delete
type SandboxIdlePolicy string

// The idle policies of a Sandbox.
const (
	// IdlePolicyPause pauses an idle sandbox (condition Paused, reason
	// Idle); the next exec, attach or files call resumes it.
	IdlePolicyPause SandboxIdlePolicy = "Pause"
	// IdlePolicyDelete deletes the Sandbox object of an idle sandbox.
	IdlePolicyDelete SandboxIdlePolicy = "Delete"
)

// SandboxFailurePolicy says what happens to a sandbox whose agent is lost.
// +kubebuilder:validation:Enum=Fail;AutoRecreate
type SandboxFailurePolicy string

// The failure policies of a Sandbox.
const (
	// FailurePolicyFail fails the sandbox with reason AgentLost.
	FailurePolicyFail SandboxFailurePolicy = "Fail"
	// FailurePolicyAutoRecreate places the sandbox again elsewhere.
	FailurePolicyAutoRecreate SandboxFailurePolicy = "AutoRecreate"
)

// EnvVar is one environment variable of a sandbox.
type EnvVar struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[^=\x00]+$`
	Name string `json:"name"`
	// +optional
	// +kubebuilder:validation:MaxLength=32768
	Value string `json:"value,omitempty"`
}

// SandboxResources are the limits of one sandbox.
// +kubebuilder:validation:XValidation:rule="!has(self.cpu) || quantity(string(self.cpu)).isGreaterThan(quantity('0'))",message="cpu must be positive"
// +kubebuilder:validation:XValidation:rule="!has(self.cpu) || quantity(string(self.cpu)).compareTo(quantity('1024')) <= 0",message="cpu must be at most 1024"
// +kubebuilder:validation:XValidation:rule="!has(self.memory) || quantity(string(self.memory)).compareTo(quantity('4Mi')) >= 0",message="memory must be at least 4Mi"
// +kubebuilder:validation:XValidation:rule="!has(self.memory) || quantity(string(self.memory)).compareTo(quantity('64Ti')) <= 0",message="memory must be at most 64Ti"
// +kubebuilder:validation:XValidation:rule="!has(self.ephemeralStorage) || quantity(string(self.ephemeralStorage)).compareTo(quantity('1Mi')) >= 0",message="ephemeralStorage must be at least 1Mi"
type SandboxResources struct {
	// CPU is the CPU limit, e.g. "500m".
	// +optional
	CPU *resource.Quantity `json:"cpu,omitempty"`
	// Memory is the memory limit, e.g. "256Mi".
	// +optional
	Memory *resource.Quantity `json:"memory,omitempty"`
	// Pids bounds the number of processes (and threads) of the sandbox; a
	// fork beyond it fails inside the sandbox.
	// +optional
	// +kubebuilder:validation:Minimum=16
	// +kubebuilder:validation:Maximum=1048576
	Pids *int64 `json:"pids,omitempty"`
	// EphemeralStorage bounds what the sandbox writes to its root
	// filesystem (its writable layer) plus its log; a sandbox that goes
	// beyond it is stopped and Failed with reason EphemeralStorageExceeded.
	// +optional
	EphemeralStorage *resource.Quantity `json:"ephemeralStorage,omitempty"`
}

// SandboxPhase is where a sandbox is in its life.
// +kubebuilder:validation:Enum=Pending;Scheduled;Running;Paused;Succeeded;Failed
type SandboxPhase string

// The phases of a Sandbox.
const (
	SandboxPending   SandboxPhase = "Pending"
	SandboxScheduled SandboxPhase = "Scheduled"
	SandboxRunning   SandboxPhase = "Running"
	// SandboxPaused: the sandbox's processes are frozen (spec.paused, or
	// idle under idlePolicy Pause); it goes back to Running when thawed and
	// may still finish (e.g. at its activeDeadlineSeconds). It is not final.
	SandboxPaused    SandboxPhase = "Paused"
	SandboxSucceeded SandboxPhase = "Succeeded"
	SandboxFailed    SandboxPhase = "Failed"
)

// Condition types of a Sandbox.
const (
	// SandboxConditionScheduled is True once the sandbox is bound to an agent.
	SandboxConditionScheduled = "Scheduled"
	// SandboxConditionReady is True while the container runs (paused or not).
	SandboxConditionReady = "Ready"
	// SandboxConditionPaused is True while the sandbox's processes are
	// frozen, with reason ReasonPausedBySpec or ReasonIdle; False (reason
	// ReasonResumed) once thawed. A sandbox never paused has none.
	SandboxConditionPaused = "Paused"
)

// Reasons that a Sandbox status carries.
const (
	ReasonUnschedulable   = "Unschedulable"
	ReasonPoolNotFound    = "PoolNotFound"
	ReasonImageNotPresent = "ImageNotPresent"
	ReasonOOMKilled       = "OOMKilled"
	ReasonAgentLost       = "AgentLost"
	// ReasonInvalidSpec: the sandbox cannot be sent to an agent as it is
	// (e.g. its spec is larger than an agent accepts).
	ReasonInvalidSpec      = "InvalidSpec"
	ReasonDeadlineExceeded = "DeadlineExceeded"
	ReasonError            = "Error"
	ReasonCompleted        = "Completed"
	// ReasonNamespaceNotAllowed: the pool's namespaceSelector does not
	// select the Sandbox's namespace (the sandbox stays Pending and is
	// placed once it does).
	ReasonNamespaceNotAllowed = "NamespaceNotAllowed"
	// ReasonImageNotAllowed: the image matches none of the pool's allowedImages.
	ReasonImageNotAllowed = "ImageNotAllowed"
	// ReasonRuntimeHandlerNotAllowed: the runtime handler is not one of the
	// pool's allowedRuntimeHandlers.
	ReasonRuntimeHandlerNotAllowed = "RuntimeHandlerNotAllowed"
	// ReasonEphemeralStorageExceeded: the sandbox wrote more than its
	// ephemeralStorage limit.
	ReasonEphemeralStorageExceeded = "EphemeralStorageExceeded"
	// ReasonRunAsNonRootViolation: the pool requires a non-root user and the
	// sandbox's image runs as root.
	ReasonRunAsNonRootViolation = "RunAsNonRootViolation"
	// ReasonInvalidPoolScheduling: the pool's spec.scheduling cannot be honoured
	// (a scoreWeights entry names a plugin the profile does not score with);
	// its sandboxes stay Pending until the pool is fixed.
	ReasonInvalidPoolScheduling = "InvalidPoolScheduling"
	// ReasonUnknownSchedulerProfile: the pool's spec.scheduling.schedulerName
	// names no profile of the scheduler's configuration; Pending until fixed.
	ReasonUnknownSchedulerProfile = "UnknownSchedulerProfile"
	// ReasonPausedBySpec: the sandbox is paused because spec.paused is true.
	ReasonPausedBySpec = "PausedBySpec"
	// ReasonIdle: the sandbox was paused after idleTimeoutSeconds without
	// activity (idlePolicy Pause).
	ReasonIdle = "Idle"
	// ReasonResumed: a paused sandbox was thawed (condition Paused False).
	ReasonResumed = "Resumed"
)

// SandboxStatus is what the system observed of a sandbox. Times have
// microsecond precision so that a start can be broken down by stage.
type SandboxStatus struct {
	// ObservedGeneration is the generation of the spec this status is about.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase is Pending, Scheduled, Running, Paused, Succeeded or Failed.
	// +optional
	Phase SandboxPhase `json:"phase,omitempty"`
	// Reason is a CamelCase word for the phase (e.g. Unschedulable, OOMKilled, AgentLost).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says the same for humans.
	// +optional
	Message string `json:"message,omitempty"`
	// Agent is the name of the agent Pod the sandbox is bound to.
	// +optional
	Agent string `json:"agent,omitempty"`
	// AgentUID is the UID of that agent Pod.
	// +optional
	AgentUID string `json:"agentUID,omitempty"`
	// Node is the node of that agent Pod.
	// +optional
	Node string `json:"node,omitempty"`
	// ContainerID is the containerd container ID of the sandbox.
	// +optional
	ContainerID string `json:"containerID,omitempty"`
	// ExitCode is the exit status of the command, once it finished.
	// +optional
	ExitCode *int32 `json:"exitCode,omitempty"`
	// ScheduleTime is when the placement was recorded.
	// +optional
	ScheduleTime *metav1.MicroTime `json:"scheduleTime,omitempty"`
	// AgentToldTime is when the agent was sent the sandbox.
	// +optional
	AgentToldTime *metav1.MicroTime `json:"agentToldTime,omitempty"`
	// StartTime is when the container started, by the agent's clock.
	// +optional
	StartTime *metav1.MicroTime `json:"startTime,omitempty"`
	// FinishTime is when the container exited, by the agent's clock.
	// +optional
	FinishTime *metav1.MicroTime `json:"finishTime,omitempty"`
	// Restarts counts the times the sandbox was placed again after its agent
	// was lost (failurePolicy AutoRecreate).
	// +optional
	Restarts int32 `json:"restarts,omitempty"`
	// LastActivityTime is when an exec, attach, log follow or files call
	// last began or ended (or the sandbox started, if none since), as its
	// agent reports it; set for a sandbox with idleTimeoutSeconds or one that
	// had activity. It is refreshed at most every few seconds.
	// +optional
	LastActivityTime *metav1.MicroTime `json:"lastActivityTime,omitempty"`
	// Conditions are Scheduled, Ready and Paused.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true

// SandboxList is a list of Sandboxes.
type SandboxList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Sandbox `json:"items"`
}

// +genclient
// +genclient:nonNamespaced
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=sbxpool;sbp,categories=fast-sandbox
// +kubebuilder:printcolumn:name="Min",type=integer,JSONPath=`.spec.minAgents`
// +kubebuilder:printcolumn:name="Max",type=integer,JSONPath=`.spec.maxAgents`
// +kubebuilder:printcolumn:name="Agents",type=integer,JSONPath=`.status.agents`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyAgents`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.freeSlots`
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.usedSlots`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// SandboxPool keeps warm agent Pods whose slots run Sandboxes. It is
// cluster-scoped and belongs to the cluster's operators, like a StorageClass
// or a RuntimeClass: it decides what runs on the nodes (the privileged agent
// Pods, in the system namespace) and what tenants may ask of it. Tenants only
// create Sandboxes that name it, from the namespaces it selects.
type SandboxPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec SandboxPoolSpec `json:"spec"`
	// +optional
	Status SandboxPoolStatus `json:"status,omitempty"`
}

// ImagePullPolicy says whether an agent may pull an image that its node lacks.
// +kubebuilder:validation:Enum=Never;IfNotPresent
type ImagePullPolicy string

// The image pull policies of a pool.
const (
	// PullNever fails a sandbox whose image is not on the node (ImageNotPresent).
	PullNever ImagePullPolicy = "Never"
	// PullIfNotPresent pulls a missing image on the sandbox's start path.
	PullIfNotPresent ImagePullPolicy = "IfNotPresent"
)

// SandboxPoolSpec is the desired shape of a pool.
// +kubebuilder:validation:XValidation:rule="self.minAgents <= self.maxAgents",message="minAgents must not exceed maxAgents"
type SandboxPoolSpec struct {
	// MinAgents is the fewest agent Pods the pool keeps, idle or not.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	MinAgents int32 `json:"minAgents"`
	// MaxAgents is the most agent Pods the pool may have.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	MaxAgents int32 `json:"maxAgents,omitempty"`
	// SlotsPerAgent is how many sandboxes one agent runs at once.
	// +optional
	// +kubebuilder:default=8
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	SlotsPerAgent int32 `json:"slotsPerAgent,omitempty"`
	// BufferSlots is how many free slots the pool keeps ready for bursts; it
	// grows when fewer are free.
	// +optional
	// +kubebuilder:validation:Minimum=0
	BufferSlots int32 `json:"bufferSlots,omitempty"`
	// ScaleDownDelaySeconds is how long an agent stays idle before the pool
	// may remove it.
	// +optional
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	ScaleDownDelaySeconds int32 `json:"scaleDownDelaySeconds"`
	// Agent shapes the agent Pods.
	Agent AgentTemplate `json:"agent"`
	// ImagePullPolicy says whether agents may pull images their node lacks.
	// +optional
	// +kubebuilder:default=Never
	ImagePullPolicy ImagePullPolicy `json:"imagePullPolicy,omitempty"`
	// WarmImages are images for which every agent keeps warm containers from
	// its start, besides the images of its recent sandboxes, so that even the
	// pool's first sandboxes start in milliseconds. They must be on the node.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	WarmImages []string `json:"warmImages,omitempty"`
	// WarmContainersPerImage is how many warm containers each agent keeps
	// for each image in recent use: containers created and started ahead of
	// time, in which a sandbox starts without creating a container. 0 turns
	// them off; every sandbox then gets a container created for it.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=32
	WarmContainersPerImage *int32 `json:"warmContainersPerImage,omitempty"`
	// RuntimeHandler is the default containerd runtime handler of the pool's
	// sandboxes ("runc" when empty; "crun" starts faster).
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	RuntimeHandler string `json:"runtimeHandler,omitempty"`
	// Scheduling selects the scheduler profile of the pool's sandboxes.
	// +optional
	// +kubebuilder:default={}
	Scheduling PoolScheduling `json:"scheduling,omitempty"`
	// NamespaceSelector selects the namespaces whose Sandboxes may use the
	// pool; a Sandbox in another namespace stays Pending with reason
	// NamespaceNotAllowed. Empty or absent selects every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// AllowedImages are the images the pool's sandboxes may run: each entry
	// is a normalized image reference (e.g. docker.io/library/python:3.12)
	// or a pattern ending in "*" that matches every reference with that
	// prefix (e.g. "docker.io/library/*" or "registry.example.com/sandbox/*").
	// A Sandbox with another image fails with reason ImageNotAllowed. Empty
	// allows every image.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=1024
	AllowedImages []string `json:"allowedImages,omitempty"`
	// AllowedRuntimeHandlers are the runtime handlers the pool's sandboxes
	// may ask for; a Sandbox naming another fails with reason
	// RuntimeHandlerNotAllowed. With one entry equal to runtimeHandler the
	// pool forces that handler (e.g. gVisor's runsc). Empty allows any.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	AllowedRuntimeHandlers []string `json:"allowedRuntimeHandlers,omitempty"`
	// SandboxDefaults are the limits of sandboxes that name none.
	// +optional
	// +kubebuilder:default={}
	SandboxDefaults SandboxDefaults `json:"sandboxDefaults,omitempty"`
	// SandboxLogs bounds each sandbox's log.
	// +optional
	// +kubebuilder:default={}
	SandboxLogs SandboxLogs `json:"sandboxLogs,omitempty"`
	// Security hardens every sandbox of the pool.
	// +optional
	// +kubebuilder:default={}
	Security SandboxSecurity `json:"security,omitempty"`
	// Network is the pool's network policy for Egress sandboxes.
	// +optional
	// +kubebuilder:default={}
	Network PoolNetwork `json:"network,omitempty"`
}

// SandboxDefaults are the limits a sandbox gets for those it does not set.
type SandboxDefaults struct {
	// Resources are the default limits (cpu, memory, pids, ephemeralStorage).
	// Pids defaults to 1024 even when this leaves it out: no sandbox runs
	// without a process limit.
	// +optional
	Resources SandboxResources `json:"resources,omitempty"`
}

// SandboxLogs bounds the log file of each sandbox: stdout and stderr go to a
// file that is rotated at MaxSize, of which MaxFiles are kept.
type SandboxLogs struct {
	// MaxSize is the size at which a sandbox's log file is rotated.
	// +optional
	// +kubebuilder:default="10Mi"
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).compareTo(quantity('4Ki')) >= 0 && quantity(string(self)).compareTo(quantity('1Gi')) <= 0",message="maxSize must be between 4Ki and 1Gi"
	MaxSize *resource.Quantity `json:"maxSize,omitempty"`
	// MaxFiles is how many log files are kept, the current one included.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	MaxFiles int32 `json:"maxFiles,omitempty"`
}

// UserNamespaceMode says whether sandboxes get a user namespace of their own.
// +kubebuilder:validation:Enum=Auto;Required;Disabled
type UserNamespaceMode string

// The user namespace modes of a pool.
const (
	// UserNamespaceAuto gives every sandbox a user namespace where the node
	// supports it, and none elsewhere.
	UserNamespaceAuto UserNamespaceMode = "Auto"
	// UserNamespaceRequired gives every sandbox a user namespace; an agent
	// on a node without support does not become Ready.
	UserNamespaceRequired UserNamespaceMode = "Required"
	// UserNamespaceDisabled runs sandboxes in the node's user namespace.
	UserNamespaceDisabled UserNamespaceMode = "Disabled"
)

// SandboxSecurity hardens the sandboxes of a pool.
type SandboxSecurity struct {
	// UserNamespaces gives each sandbox a user namespace of its own, so that
	// root inside is an unprivileged uid outside: Auto (the default),
	// Required or Disabled.
	// +optional
	// +kubebuilder:default=Auto
	UserNamespaces UserNamespaceMode `json:"userNamespaces,omitempty"`
	// ReadOnlyRootFilesystem mounts every sandbox's root filesystem
	// read-only (a tmpfs /tmp stays writable).
	// +optional
	ReadOnlyRootFilesystem bool `json:"readOnlyRootFilesystem,omitempty"`
	// RunAsNonRoot fails a sandbox whose image runs as uid 0 (reason
	// RunAsNonRootViolation).
	// +optional
	RunAsNonRoot bool `json:"runAsNonRoot,omitempty"`
}

// PoolNetwork is where Egress sandboxes may connect to.
type PoolNetwork struct {
	// Egress filters the outbound connections of Egress sandboxes.
	// +optional
	// +kubebuilder:default={}
	Egress EgressPolicy `json:"egress,omitempty"`
}

// EgressPolicy decides where an Egress sandbox may connect. A destination
// in DenyCIDRs is refused; else one in AllowCIDRs is allowed; else one in
// the default-denied ranges is refused: private, shared and link-local
// addresses (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10,
// 169.254.0.0/16 with the metadata address, fc00::/7, fe80::/10), loopback,
// multicast, and the node's and agent Pod's own addresses, which covers the
// cluster's Pod and Service ranges on nearly every cluster; everything else
// is allowed. A sandbox never reaches the agent's API or another sandbox,
// whatever the policy.
type EgressPolicy struct {
	// AllowCIDRs are destinations allowed although in a default-denied range
	// (e.g. the cluster DNS service's address).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR, e.g. 10.96.0.10/32"
	AllowCIDRs []string `json:"allowCIDRs,omitempty"`
	// DenyCIDRs are destinations refused on top of the default ones (e.g.
	// the cluster's Pod and Service ranges where they are public addresses).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=64
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR, e.g. 203.0.113.0/24"
	DenyCIDRs []string `json:"denyCIDRs,omitempty"`
}

// AgentTemplate is what the agent Pods of a pool look like.
type AgentTemplate struct {
	// Image is the agent's container image.
	// +kubebuilder:validation:MinLength=1
	Image string `json:"image"`
	// ImagePullPolicy of the agent container.
	// +optional
	// +kubebuilder:default=IfNotPresent
	// +kubebuilder:validation:Enum=Always;Never;IfNotPresent
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// Resources of one agent Pod; its sandboxes share them. Requests are set
	// equal to the limits, so the Pod gets a guaranteed slice of the node.
	// +kubebuilder:validation:XValidation:rule="has(self.cpu) && has(self.memory)",message="agent resources need both cpu and memory"
	Resources SandboxResources `json:"resources"`
	// NodeSelector constrains the nodes of agent Pods.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Tolerations of the agent Pods.
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// ContainerdSocket is the path of the node's containerd socket.
	// +optional
	// +kubebuilder:default="/run/containerd/containerd.sock"
	// +kubebuilder:validation:Pattern=`^/[^\x00]*[^/]\.sock$`
	// +kubebuilder:validation:XValidation:rule="!self.contains('/../') && !self.contains('/./')",message="containerdSocket must be a clean path"
	ContainerdSocket string `json:"containerdSocket,omitempty"`
	// ContainerdRoot is containerd's root directory on the node. Agents
	// mount it at the same path to prepare the user-namespace root
	// filesystems of sandboxes (security.userNamespaces); without it, Auto
	// runs sandboxes without user namespaces.
	// +optional
	// +kubebuilder:default="/var/lib/containerd"
	// +kubebuilder:validation:Pattern=`^/[^\x00]*[^/]$`
	// +kubebuilder:validation:XValidation:rule="!self.contains('/../') && !self.contains('/./') && !self.endsWith('/..') && !self.endsWith('/.')",message="containerdRoot must be a clean path"
	// +kubebuilder:validation:XValidation:rule="!(self in ['/', '/etc', '/usr', '/bin', '/sbin', '/lib', '/proc', '/sys', '/dev', '/root', '/home', '/var', '/var/lib'])",message="containerdRoot must be containerd's own directory"
	ContainerdRoot string `json:"containerdRoot,omitempty"`
	// ContainerdNamespace is the containerd namespace whose images the agent
	// uses; kubelet's is "k8s.io".
	// +optional
	// +kubebuilder:default="k8s.io"
	// +kubebuilder:validation:MinLength=1
	ContainerdNamespace string `json:"containerdNamespace,omitempty"`
	// PriorityClassName of the agent Pods.
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`
}

// PoolScheduling selects how the pool's sandboxes are placed.
type PoolScheduling struct {
	// SchedulerName is the profile of the fast-sandbox scheduler that places
	// the pool's sandboxes.
	// +optional
	// +kubebuilder:default=fast-sandbox
	// +kubebuilder:validation:MinLength=1
	SchedulerName string `json:"schedulerName,omitempty"`
	// ScoreWeights overrides the profile's score plugin weights for this pool,
	// by plugin name.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, self[k] >= 0 && self[k] <= 100)",message="score weights must be between 0 and 100"
	ScoreWeights map[string]int32 `json:"scoreWeights,omitempty"`
}

// Condition types of a SandboxPool.
const (
	// PoolConditionReady is True when at least minAgents agents are ready.
	PoolConditionReady = "Ready"
	// PoolConditionScalingLimited is True when the pool wants more agents than maxAgents allows.
	PoolConditionScalingLimited = "ScalingLimited"
)

// SandboxPoolStatus is what the pool controller observed of a pool.
type SandboxPoolStatus struct {
	// ObservedGeneration is the generation of the spec this status is about.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Agents is the number of agent Pods that exist.
	// +optional
	Agents int32 `json:"agents"`
	// ReadyAgents is the number of agent Pods that are Ready.
	// +optional
	ReadyAgents int32 `json:"readyAgents"`
	// FreeSlots is the number of free slots on ready agents.
	// +optional
	FreeSlots int32 `json:"freeSlots"`
	// UsedSlots is the number of slots held by sandboxes.
	// +optional
	UsedSlots int32 `json:"usedSlots"`
	// Conditions are Ready and ScalingLimited.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
// +kubebuilder:object:root=true

// SandboxPoolList is a list of SandboxPools.
type SandboxPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SandboxPool `json:"items"`
}
