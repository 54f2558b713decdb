// Package api is the wire format of the agent's HTTP API, version v1: what
// the control plane sends to an agent (the desired set of sandboxes) and what
// the agent answers (its status and each sandbox's outcome).
//
// The API is level-triggered. A sync carries the complete desired set; the
// agent creates what is missing, removes what is not desired and leaves the
// rest, so sending the same set twice changes nothing the second time. A
// sandbox is identified by the UID of its Sandbox object, and its container ID
// is derived from that UID, so a retried sync never creates a second
// container for one sandbox.
package api

import "time"

// Paths of the API.
const (
	PathStatus = "/v1/status"
	PathSync   = "/v1/sync"
	PathLogs   = "/v1/sandboxes/{uid}/logs"
	// The interactive routes (see docs/interactive.md).
	PathExec    = "/v1/sandboxes/{uid}/exec"
	PathAttach  = "/v1/sandboxes/{uid}/attach"
	PathFiles   = "/v1/sandboxes/{uid}/files"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathMetrics = "/metrics"

	// MaxSandboxes bounds the sandboxes of one sync, whatever the capacity.
	MaxSandboxes = 1024
	// MaxSandboxSpecBytes bounds the JSON encoding of one SandboxSpec. The
	// agent fails a larger sandbox (ReasonInvalidSpec) and runs the others;
	// the control plane never sends one.
	MaxSandboxSpecBytes = 64 << 10
	// MaxFinished bounds the Finished UIDs of one sync.
	MaxFinished = 16384
	// MaxRequestBytes bounds a request body: room for MaxSandboxes specs of
	// the largest size and MaxFinished UIDs, so a sync that honours the
	// per-sandbox bounds is never refused as a whole.
	MaxRequestBytes = MaxSandboxes*MaxSandboxSpecBytes + MaxFinished*128
	// MaxFileWriteBytes bounds the content of one files PUT.
	MaxFileWriteBytes = 64 << 20
)

// Operations of GET files (query parameter op).
const (
	// FileOpRead (the default) answers the file's content.
	FileOpRead = "read"
	// FileOpList answers the entries of a directory, as JSON []FileInfo.
	FileOpList = "list"
	// FileOpStat answers the file itself, as JSON FileInfo.
	FileOpStat = "stat"
)

// FileType is what kind of file a FileInfo describes.
type FileType string

// The kinds of file.
const (
	FileTypeFile    FileType = "file"
	FileTypeDir     FileType = "dir"
	FileTypeSymlink FileType = "symlink"
	// FileTypeOther: a FIFO, socket or device; never read or written.
	FileTypeOther FileType = "other"
)

// FileInfo describes one file of a sandbox's filesystem. A symlink is
// described itself, not what it points to.
type FileInfo struct {
	// Name is the file's last path element.
	Name string `json:"name"`
	// Size in bytes (for a symlink, the length of its target).
	Size int64 `json:"size"`
	// Mode is the Unix permission bits with setuid, setgid and sticky
	// (mode & 07777), not Go's os.FileMode; e.g. 0644 is 420 in JSON.
	Mode    uint32    `json:"mode"`
	ModTime time.Time `json:"modTime"`
	Type    FileType  `json:"type"`
	// LinkTarget is a symlink's target, as stored.
	LinkTarget string `json:"linkTarget,omitempty"`
}

// Network modes of a sandbox.
const (
	// NetworkNone: a network namespace of its own with only loopback.
	NetworkNone = "None"
	// NetworkEgress: a network namespace of its own with a veth into the
	// agent Pod's and NAT out of it, filtered by the agent's egress policy.
	NetworkEgress = "Egress"
)

// SandboxSpec is one sandbox the control plane wants to run.
type SandboxSpec struct {
	// UID is the UID of the Sandbox object; it identifies the sandbox.
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Pool      string `json:"pool,omitempty"`

	Image      string   `json:"image"`
	Command    []string `json:"command,omitempty"`
	Args       []string `json:"args,omitempty"`
	Env        []EnvVar `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir,omitempty"`

	// CPUMillis is the CPU limit in thousandths of a core; 0 means none of its own.
	CPUMillis int64 `json:"cpuMillis,omitempty"`
	// MemoryBytes is the memory limit; 0 means none of its own.
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// PidsLimit bounds the sandbox's processes and threads; 0 means the
	// agent's default.
	PidsLimit int64 `json:"pidsLimit,omitempty"`
	// EphemeralStorageBytes bounds what the sandbox writes to its root
	// filesystem plus its log; 0 means no bound of its own. Beyond it the
	// sandbox is stopped and fails with ReasonEphemeralStorageExceeded.
	EphemeralStorageBytes int64 `json:"ephemeralStorageBytes,omitempty"`

	// RuntimeHandler is the containerd runtime ("runc", "crun", ...); the agent's default when empty.
	RuntimeHandler string `json:"runtimeHandler,omitempty"`
	// NetworkMode is NetworkNone (the default) or NetworkEgress.
	NetworkMode string `json:"networkMode,omitempty"`
	// AllowPull lets the agent pull an image the node lacks.
	AllowPull bool `json:"allowPull,omitempty"`

	// Paused freezes the sandbox's processes; false thaws a sandbox the
	// agent paused because of it (PauseReasonSpec).
	Paused bool `json:"paused,omitempty"`
	// IdleTimeoutSeconds, if positive, is how long the sandbox may go
	// without an exec, attach, log follow or files call before IdlePolicy
	// applies (a call in progress is activity until it ends).
	IdleTimeoutSeconds int32 `json:"idleTimeoutSeconds,omitempty"`
	// IdlePolicy is IdlePolicyPause (the default) or IdlePolicyDelete.
	IdlePolicy string `json:"idlePolicy,omitempty"`
}

// What an agent does with an idle sandbox (SandboxSpec.IdlePolicy).
const (
	// IdlePolicyPause: the agent pauses it (PauseReasonIdle); the next
	// exec, attach or files call resumes it.
	IdlePolicyPause = "Pause"
	// IdlePolicyDelete: the agent reports it Idle and the control plane
	// deletes the Sandbox.
	IdlePolicyDelete = "Delete"
)

// Why a sandbox is paused (SandboxStatus.PauseReason).
const (
	// PauseReasonSpec: SandboxSpec.Paused asks it.
	PauseReasonSpec = "Spec"
	// PauseReasonIdle: the agent paused it after IdleTimeoutSeconds without activity.
	PauseReasonIdle = "Idle"
)

// EnvVar is one environment variable.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

// SyncRequest is the complete desired set of sandboxes of one agent.
type SyncRequest struct {
	// Epoch and Revision order syncs: an agent refuses a sync older than the
	// newest it applied (409 Conflict), so a delayed request can never undo a
	// newer one. Epoch identifies the sender's incarnation (e.g. its start
	// time); Revision grows within an epoch.
	Epoch    int64 `json:"epoch"`
	Revision int64 `json:"revision"`
	// Sandboxes is the desired set; any other sandbox of the agent is removed,
	// except those in Finished.
	Sandboxes []SandboxSpec `json:"sandboxes"`
	// Finished are the UIDs of sandboxes whose final status the control plane
	// has recorded. The agent never starts them; if it still has one, it
	// stops its process (if it runs) and keeps the container and its logs
	// until the UID leaves both lists. They take no slot and are not sent
	// as specs, so finished sandboxes never fill a sync.
	Finished []string `json:"finished,omitempty"`
}

// SyncResponse is the state of every desired sandbox after the agent converged.
type SyncResponse struct {
	Sandboxes []SandboxStatus `json:"sandboxes"`
	// Deleting are the UIDs of sandboxes no longer desired whose containers
	// are being removed. They stay in the agent's status until they are gone.
	Deleting []string `json:"deleting,omitempty"`
}

// SandboxState is where a sandbox container is.
type SandboxState string

// The states of a sandbox container.
const (
	// StateCreating: the agent accepted the sandbox and is still creating its
	// container (e.g. pulling its image); its status later says how it went.
	StateCreating SandboxState = "Creating"
	// StateRunning: the container's process runs.
	StateRunning SandboxState = "Running"
	// StatePaused: the container's processes are frozen (cgroup freezer);
	// they are alive and run on once resumed.
	StatePaused SandboxState = "Paused"
	// StateExited: the process ended; ExitCode says how.
	StateExited SandboxState = "Exited"
	// StateFailed: the container could not be created or started; Reason says why.
	StateFailed SandboxState = "Failed"
)

// Reasons an agent gives.
const (
	ReasonImageNotPresent = "ImageNotPresent"
	ReasonOOMKilled       = "OOMKilled"
	ReasonError           = "Error"
	ReasonCompleted       = "Completed"
	ReasonCreateFailed    = "CreateFailed"
	ReasonNoCapacity      = "NoCapacity"
	ReasonContainerLost   = "ContainerLost"
	// ReasonInvalidSpec: the agent refused this one sandbox's spec (malformed,
	// or larger than MaxSandboxSpecBytes); the rest of the sync is applied.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonRuntimeUnavailable: a create could not reach the container runtime
	// before the command could run; not final (the next sync creates it again).
	ReasonRuntimeUnavailable = "RuntimeUnavailable"
	// ReasonEphemeralStorageExceeded: the sandbox wrote more than
	// EphemeralStorageBytes; it was stopped.
	ReasonEphemeralStorageExceeded = "EphemeralStorageExceeded"
	// ReasonRunAsNonRootViolation: the agent runs only non-root sandboxes
	// and this one's user is root.
	ReasonRunAsNonRootViolation = "RunAsNonRootViolation"
)

// SandboxStatus is what the agent knows of one sandbox.
type SandboxStatus struct {
	UID         string       `json:"uid"`
	Namespace   string       `json:"namespace,omitempty"`
	Name        string       `json:"name,omitempty"`
	ContainerID string       `json:"containerID,omitempty"`
	State       SandboxState `json:"state"`
	ExitCode    *int32       `json:"exitCode,omitempty"`
	Reason      string       `json:"reason,omitempty"`
	Message     string       `json:"message,omitempty"`
	CPUMillis   int64        `json:"cpuMillis,omitempty"`
	MemoryBytes int64        `json:"memoryBytes,omitempty"`
	CreatedAt   *time.Time   `json:"createdAt,omitempty"`
	StartedAt   *time.Time   `json:"startedAt,omitempty"`
	FinishedAt  *time.Time   `json:"finishedAt,omitempty"`
	// Start says how the container was started: StartWarm or StartCold.
	Start string `json:"start,omitempty"`
	// PauseReason says why a paused sandbox is paused: PauseReasonSpec or
	// PauseReasonIdle; empty when it is not paused.
	PauseReason string `json:"pauseReason,omitempty"`
	// LastActivity is when an exec, attach, log follow or files call last
	// began or ended, or when the agent learnt of the sandbox (created or
	// adopted it) or resumed it by spec, if later: the idle timeout counts
	// from it while no call is in progress. Set only for a running or
	// paused sandbox with an idle timeout, or one that had activity.
	LastActivity *time.Time `json:"lastActivity,omitempty"`
	// Idle: the sandbox's IdleTimeoutSeconds passed without activity and
	// its IdlePolicy is IdlePolicyDelete; the control plane deletes it.
	Idle bool `json:"idle,omitempty"`
}

// How a sandbox's container was started.
const (
	// StartWarm: in a container created ahead of time (see the runtime's warm containers).
	StartWarm = "Warm"
	// StartCold: in a container created for it.
	StartCold = "Cold"
)

// Resources are an amount of slots, CPU and memory.
type Resources struct {
	Slots       int   `json:"slots"`
	CPUMillis   int64 `json:"cpuMillis"`
	MemoryBytes int64 `json:"memoryBytes"`
}

// Image is one image on the agent's node.
type Image struct {
	// Names are the references of the image (normalized, e.g. docker.io/library/busybox:latest).
	Names  []string `json:"names"`
	Digest string   `json:"digest"`
	// Size is the size of the image's content (compressed layers, config and manifest).
	Size int64 `json:"size"`
}

// AgentInfo says who the agent is.
type AgentInfo struct {
	PodName   string `json:"podName,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	PodUID    string `json:"podUID,omitempty"`
	NodeName  string `json:"nodeName,omitempty"`
	Pool      string `json:"pool,omitempty"`
	Version   string `json:"version,omitempty"`
	// Runtime names the container runtime and its version.
	Runtime string `json:"runtime,omitempty"`
	// CgroupParent is where sandbox containers are placed.
	CgroupParent string `json:"cgroupParent,omitempty"`
}

// Status is the agent's answer to GET /v1/status.
type Status struct {
	Agent     AgentInfo       `json:"agent"`
	Capacity  Resources       `json:"capacity"`
	Allocated Resources       `json:"allocated"`
	Sandboxes []SandboxStatus `json:"sandboxes"`
	Images    []Image         `json:"images"`
	// Warm are the warm containers waiting for a sandbox, by image.
	Warm    []WarmImage `json:"warm,omitempty"`
	Healthy bool        `json:"healthy"`
	// Epoch and Revision of the newest sync applied.
	Epoch    int64     `json:"epoch"`
	Revision int64     `json:"revision"`
	Time     time.Time `json:"time"`
}

// WarmImage counts the warm containers of one image.
type WarmImage struct {
	Image          string `json:"image"`
	RuntimeHandler string `json:"runtimeHandler,omitempty"`
	NetworkMode    string `json:"networkMode,omitempty"`
	Count          int    `json:"count"`
}

// Error is the body of every 4xx/5xx answer.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// AppliedEpoch and AppliedRevision, on a 409 to a stale sync, are those
	// of the newest sync the agent applied, so the sender can move past them.
	AppliedEpoch    int64 `json:"appliedEpoch,omitempty"`
	AppliedRevision int64 `json:"appliedRevision,omitempty"`
}
