// Package containerd runs sandboxes as containers of the node's containerd.
//
// Images: sandboxes use the images kubelet already pulled. They live in
// containerd namespace "k8s.io", and sandbox containers are created in that
// same namespace, so the image and its unpacked snapshots are used as they
// are: no copy, no pull, no unpack on the start path. This is safe beside
// kubelet's CRI plugin: the CRI only loads containers that carry its own
// "io.cri-containerd.kind" label, so it neither lists nor garbage-collects
// ours, and ours carry fast-sandbox labels and a "fsbx-" ID prefix that the
// CRI never uses. Each creation holds a containerd lease, so containerd's
// garbage collector cannot remove the image's content or snapshots while a
// sandbox is being made; afterwards the container's snapshot keeps its
// parents.
//
// Identity: a sandbox's container ID is derived from its UID ("fsbx-" + UID),
// and its labels name the sandbox, its namespace, pool and agent. The labels
// are the source of truth: a restarted agent lists containers by label and
// finds every sandbox again.
//
// Network: every sandbox has a network namespace of its own, made by the OCI
// runtime with its container: loopback only for networkMode None, and for
// Egress wired by package network (a veth into the agent Pod's namespace,
// NAT, the pool's egress policy) between the task's creation and its start,
// or when a warm container is made (see egress.go). Config.HostProc is where
// the node's /proc is visible, to reach a task's namespace by its PID. A
// sandbox keeps its image's /etc/resolv.conf: there is no DNS proxy, so the
// resolvers it names must be reachable through the egress policy (a cluster
// DNS Service or a node-local resolver is default-denied and must be listed
// in the pool's allowCIDRs).
package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/go-logr/logr"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/imageref"
)

// Labels on every sandbox container.
const (
	LabelManagedBy = "fast-sandbox.io/managed-by"
	LabelUID       = v1alpha1.LabelSandboxUID
	LabelName      = v1alpha1.LabelSandboxName
	LabelNamespace = v1alpha1.LabelSandboxNamespace
	LabelPool      = v1alpha1.LabelPoolName
	LabelAgent     = v1alpha1.LabelAgentName
	// LabelAgentPodUID is the UID of the agent Pod whose cgroup the container
	// is in: once that Pod is gone from the node, the container is an orphan.
	LabelAgentPodUID = "fast-sandbox.io/agent-pod-uid"
	LabelCPU         = "fast-sandbox.io/cpu-millis"
	LabelMemory      = "fast-sandbox.io/memory-bytes"
	// LabelPids is the sandbox's pids limit (its own, or the agent's default).
	LabelPids    = "fast-sandbox.io/pids-limit"
	LabelCreated = "fast-sandbox.io/created-at"

	managedBy = "fast-sandbox-agent"
	idPrefix  = "fsbx-"
	// cpuPeriod is the CFS period of sandbox CPU limits, in microseconds.
	cpuPeriod = 100000
)

// Config configures the containerd runtime.
type Config struct {
	// Address is containerd's socket.
	Address string
	// Namespace is the containerd namespace of images and sandboxes ("k8s.io").
	Namespace string
	// CgroupParent is the cgroup every sandbox is placed under. Empty means:
	// find the agent Pod's cgroup from PodUID, or from /proc/self/cgroup.
	CgroupParent string
	// PodUID is the agent Pod's UID (downward API), used to find its cgroup
	// and network namespace through the Pod's sandbox container.
	PodUID string
	// Agent is the agent's name, put on every container's labels.
	Agent string
	// StateDir holds the sandboxes' logs. Inside an agent Pod it must be a
	// hostPath mounted at the same path, since containerd's shim writes there.
	StateDir string
	// DefaultRuntimeHandler is used when a sandbox names none ("runc").
	DefaultRuntimeHandler string
	// RuntimeHandlers maps handler names to the OCI runtime binary that the
	// runc shim runs ("runc" -> "runc", "crun" -> "crun").
	RuntimeHandlers map[string]string
	// Snapshotter is containerd's snapshotter ("overlayfs").
	Snapshotter string
	// InitBinary is the sandbox init (cmd/sandbox-init) that warm containers
	// run until they are given a sandbox, and that writes every sandbox's
	// bounded log (package sandboxlog). It is installed in StateDir/bin,
	// where containerd's shim can run it. Empty disables warm containers,
	// and sandboxes' logs are then written by the shim, unbounded.
	InitBinary string
	// WarmPerImage is how many warm containers to keep for each image (with
	// its runtime handler and network mode) in recent use; 0 disables them.
	WarmPerImage int
	// WarmImagesMax bounds the images kept warm at once (default 4).
	WarmImagesMax int
	// WarmImages are kept warm from the start.
	WarmImages []string
	// DefaultPidsLimit bounds the processes and threads of a sandbox that
	// sets no PidsLimit of its own (default 1024).
	DefaultPidsLimit int64
	// LogMaxBytes is the size at which a sandbox's log is rotated (default
	// 10 MiB), LogMaxFiles the files it keeps, the current one included
	// (default 2): a log never holds more than their product.
	LogMaxBytes int64
	LogMaxFiles int
	// StorageCheckPeriod is how often the ephemeral storage of sandboxes
	// with a limit is measured (default 2 s; see storage.go).
	StorageCheckPeriod time.Duration
	// ReadOnlyRootFilesystem mounts every sandbox's root filesystem
	// read-only, with a writable tmpfs of TmpSizeBytes at /tmp.
	ReadOnlyRootFilesystem bool
	// RunAsNonRoot fails (ReasonRunAsNonRootViolation) every sandbox whose
	// user, its image's USER, is root, before its command runs.
	RunAsNonRoot bool
	// UserNamespaces is UserNamespacesAuto (the default), Required or
	// Disabled: whether each container gets a user namespace of its own
	// (see userns.go).
	UserNamespaces string
	// Egress configures the networking of networkMode Egress sandboxes
	// (package network: subnet, egress policy, and HostNetNS, the agent Pod's
	// network namespace, "" for the agent's own). Initialize makes the
	// Manager and initializes it; Close closes it. If either fails, Egress
	// sandboxes fail with the reason and None sandboxes run (see egress.go).
	// Nil leaves every network namespace alone (Egress sandboxes fail): the
	// Manager changes the one it works in (forwarding, an nftables table),
	// which must be the agent Pod's, never a node's.
	Egress *network.Config
	// EgressError, when set, makes egress networking unavailable for that
	// reason (e.g. the agent's egress settings did not parse): Egress
	// sandboxes fail with it.
	EgressError error
	// ExecServerIdleTimeout is how long a sandbox's exec server stays after
	// its last exec (default DefaultExecServerIdleTimeout); negative runs
	// every exec through the OCI runtime (see execserver.go).
	ExecServerIdleTimeout time.Duration
	// HostProc is where the node's /proc is visible to the agent ("/proc"
	// when empty, right when the agent runs in the node's PID namespace): a
	// task's network namespace is <HostProc>/<PID>/ns/net, its PID being
	// the node's.
	HostProc string
}

// Defaults of Config.
const (
	DefaultPidsLimit   = 1024
	DefaultLogMaxBytes = 10 << 20
	DefaultLogMaxFiles = 2
	// TmpSizeBytes bounds the tmpfs at /tmp of a read-only root filesystem
	// (its pages count against the sandbox's memory limit too).
	TmpSizeBytes = 64 << 20
)

// Runtime is the containerd runtime.
type Runtime struct {
	cfg    Config
	log    logr.Logger
	client *client.Client

	cgroupParent string
	systemd      bool   // cgroupParent is a systemd slice
	podNetNS     string // the agent Pod's network namespace, for NetworkMode Pod
	// initPath is the host path of the installed sandbox init, which is also
	// the sandboxes' logging binary; empty without Config.InitBinary.
	initPath string
	// userns: containers get user namespaces (decided by Initialize).
	userns bool
	// appArmorProfile is the AppArmor profile of containers, "" for none
	// (see apparmor.go).
	appArmorProfile string
	// egress wires Egress sandboxes' networks; nil when unavailable, and
	// egressErr then says why (see egress.go). hostProc is Config.HostProc
	// or its default.
	egress    *network.Manager
	egressErr error
	hostProc  string

	mu     sync.Mutex
	exits  chan api.SandboxStatus
	known  map[string]api.SandboxStatus // by UID: what was created or adopted
	waited map[string]bool              // UIDs whose exit is being waited for
	ids    map[string]string            // by UID: container IDs that are not ContainerID(UID)
	warm   warmPool
	images imageCache
	ctx    context.Context
	cancel context.CancelFunc
	// creating holds the UIDs whose create runs; the channel closes when it ends.
	creating map[string]chan struct{}

	cgroupWriteFailed sync.Once // logs the fallback once

	execServers execServers
}

var (
	_ runtime.Runtime           = &Runtime{}
	_ runtime.ExecServerCounter = &Runtime{}
)

// New returns a runtime; Initialize connects it.
func New(cfg Config, log logr.Logger) *Runtime {
	if cfg.Namespace == "" {
		cfg.Namespace = "k8s.io"
	}
	if cfg.DefaultRuntimeHandler == "" {
		cfg.DefaultRuntimeHandler = "runc"
	}
	if cfg.RuntimeHandlers == nil {
		cfg.RuntimeHandlers = map[string]string{"runc": "runc", "crun": "crun"}
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	if cfg.DefaultPidsLimit <= 0 {
		cfg.DefaultPidsLimit = DefaultPidsLimit
	}
	if cfg.LogMaxBytes <= 0 {
		cfg.LogMaxBytes = DefaultLogMaxBytes
	}
	if cfg.LogMaxFiles <= 0 {
		cfg.LogMaxFiles = DefaultLogMaxFiles
	}
	if cfg.StorageCheckPeriod <= 0 {
		cfg.StorageCheckPeriod = DefaultStorageCheckPeriod
	}
	if cfg.UserNamespaces == "" {
		cfg.UserNamespaces = UserNamespacesAuto
	}
	return &Runtime{
		cfg:      cfg,
		log:      log,
		exits:    make(chan api.SandboxStatus, 1024),
		known:    map[string]api.SandboxStatus{},
		waited:   map[string]bool{},
		ids:      map[string]string{},
		creating: map[string]chan struct{}{},
	}
}

// ContainerID is the container ID of a sandbox UID.
func ContainerID(uid string) string { return idPrefix + uid }

// Initialize connects to containerd, finds the cgroup parent and the Pod's
// network namespace, and creates the state directory.
func (r *Runtime) Initialize(ctx context.Context) (runtime.Info, error) {
	c, err := client.New(r.cfg.Address, client.WithDefaultNamespace(r.cfg.Namespace), client.WithTimeout(5*time.Second))
	if err != nil {
		return runtime.Info{}, fmt.Errorf("connecting to containerd at %s: %w", r.cfg.Address, err)
	}
	r.client = c
	r.ctx, r.cancel = context.WithCancel(namespaces.WithNamespace(context.Background(), r.cfg.Namespace))
	ctx = namespaces.WithNamespace(ctx, r.cfg.Namespace)
	v, err := c.Version(ctx)
	if err != nil {
		return runtime.Info{}, fmt.Errorf("asking containerd at %s for its version: %w", r.cfg.Address, err)
	}
	if err := os.MkdirAll(filepath.Join(podStateDir(r.cfg.StateDir, r.cfg.PodUID), "logs"), 0o700); err != nil {
		return runtime.Info{}, fmt.Errorf("creating state directory: %w", err)
	}
	placement, err := findPodPlacement(ctx, c, r.cfg.PodUID, r.cfg.CgroupParent)
	if err != nil {
		return runtime.Info{}, err
	}
	r.cgroupParent, r.systemd, r.podNetNS = placement.cgroupParent, placement.systemd, placement.netNS
	if err := r.installInit(); err != nil {
		return runtime.Info{}, err
	}
	r.initAppArmor()
	if err := r.initUserNS(ctx); err != nil {
		return runtime.Info{}, err
	}
	// Before any creation of this process: the leases its predecessor took
	// for creations it did not finish.
	if r.cfg.Agent != "" {
		r.sweepCreateLeases(ctx, fmt.Sprintf("labels.%q==%q", LabelAgent, r.cfg.Agent))
	}
	// Before the warm containers: they are removed or made with their networks.
	r.initEgress(ctx)
	if err := r.initWarm(ctx); err != nil {
		return runtime.Info{}, err
	}
	if r.cfg.PodUID != "" {
		r.sweepOrphans(ctx)
		go r.sweepLoop()
	}
	go r.storageLoop()
	r.log.Info("containerd runtime ready", "address", r.cfg.Address, "version", v.Version,
		"namespace", r.cfg.Namespace, "cgroupParent", r.cgroupParent, "systemdCgroup", r.systemd, "podNetNS", r.podNetNS,
		"warmPerImage", r.warm.perKey, "warmContainers", r.warm.enabled,
		"userNamespaces", r.userns, "appArmorProfile", r.appArmorProfile, "egress", r.egress != nil, "hostProc", r.hostProc, "defaultPidsLimit", r.cfg.DefaultPidsLimit, "logMaxBytes", r.cfg.LogMaxBytes, "logMaxFiles", r.cfg.LogMaxFiles)
	return runtime.Info{Runtime: "containerd " + v.Version, CgroupParent: r.cgroupParent}, nil
}

// Close removes the free warm containers, stops waiting for exits and
// closes the network Manager and the connection. Sandboxes keep running,
// with their networks.
func (r *Runtime) Close() error {
	if r.client != nil && r.warm.enabled {
		r.discardAllWarm()
	}
	r.closeExecServers()
	if r.cancel != nil {
		r.cancel()
	}
	err := r.closeEgress()
	if r.client != nil {
		err = errors.Join(err, r.client.Close())
	}
	return err
}

// Exits delivers the final status of sandboxes whose process ended.
func (r *Runtime) Exits() <-chan api.SandboxStatus { return r.exits }

func (r *Runtime) nsCtx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}

// podStateDir is where the files of an agent Pod's containers live (logs,
// warm containers' sockets): a directory per agent Pod, so that whatever a
// crash left there goes with the Pod (CleanupAgentPod, the orphan sweep),
// even when no container of it is left to name its files. Without a Pod UID
// (tests, a bare agent) it is the state directory itself.
func podStateDir(stateDir, podUID string) string {
	if podUID == "" {
		return stateDir
	}
	return filepath.Join(stateDir, "pods", podUID)
}

// logPath is a container's log file: stdout and stderr, written by a
// logging binary that the shim runs (or the shim itself), so output survives
// an agent restart. Rotated files are beside it (package sandboxlog).
func (r *Runtime) logPath(containerID string) string {
	return filepath.Join(podStateDir(r.cfg.StateDir, r.cfg.PodUID), "logs", containerID+".log")
}

// installInit installs the sandbox init in the state directory, where the
// shim runs it as the logging binary and warm containers mount it from. The
// state directory is a hostPath mounted at the same path in the agent Pod.
func (r *Runtime) installInit() error {
	if r.cfg.InitBinary == "" {
		r.log.Info("no sandbox-init binary: warm containers are off, and sandbox logs are written by the shim, unbounded")
		return nil
	}
	dst, err := installFile(r.cfg.InitBinary, filepath.Join(r.cfg.StateDir, "bin"), "sandbox-init")
	if err != nil {
		return fmt.Errorf("installing the sandbox init: %w", err)
	}
	r.initPath = dst
	return nil
}

// cgroupPath is the OCI cgroupsPath of a sandbox container.
func (r *Runtime) cgroupPath(id string) string {
	if r.systemd {
		// slice:prefix:name; runc makes <prefix>-<name>.scope in the slice.
		return r.cgroupParent + ":fsbx:" + strings.TrimPrefix(id, idPrefix)
	}
	return filepath.Join(r.cgroupParent, id)
}

// CreateSandbox starts a sandbox: in a warm container when one is at hand,
// otherwise in a container created for it.
func (r *Runtime) CreateSandbox(ctx context.Context, spec api.SandboxSpec) api.SandboxStatus {
	ctx = r.nsCtx(ctx)
	defer r.beginCreate(spec.UID)()
	// Already there (a retried sync, or an adopted container): report it,
	// unless its command never ran (an agent died while creating it): then
	// it is removed and made again here, once.
	c, err := r.findContainer(ctx, spec.UID)
	switch {
	case err == nil:
		st, found, err := r.settle(ctx, c)
		if err != nil {
			return r.failedCreate(spec, c.ID(), api.ReasonCreateFailed, err)
		}
		if found {
			if alive(st.State) {
				r.watch(c, st)
			} else {
				r.remember(st, false)
			}
			return st
		}
	case !errdefs.IsNotFound(err):
		return r.failedCreate(spec, ContainerID(spec.UID), api.ReasonCreateFailed, fmt.Errorf("looking for the container of sandbox %s: %w", spec.UID, err))
	}
	if networkOf(spec) == api.NetworkEgress && r.egress == nil {
		return r.failed(spec, ContainerID(spec.UID), api.ReasonCreateFailed, r.egressUnavailable())
	}
	key, err := r.keyOf(spec)
	if err != nil {
		return r.failed(spec, ContainerID(spec.UID), api.ReasonCreateFailed, fmt.Errorf("invalid image %q: %w", spec.Image, err))
	}
	if c := r.takeWarm(key); c != nil {
		if st, ok := r.startWarm(ctx, c, spec); ok {
			r.noteKey(key)
			return st
		}
	}
	st := r.createCold(ctx, spec)
	if st.State == api.StateRunning && r.warm.enabled {
		r.noteKey(key)
	}
	return st
}

// failed is the status of a sandbox that could not be started.
func (r *Runtime) failed(spec api.SandboxSpec, id, reason string, err error) api.SandboxStatus {
	now := time.Now()
	r.log.Info("sandbox failed to start", "sandbox", klogRef(spec), "reason", reason, "err", err)
	return api.SandboxStatus{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, ContainerID: id,
		CPUMillis: spec.CPUMillis, MemoryBytes: spec.MemoryBytes,
		State: api.StateFailed, Reason: reason, Message: err.Error(), FinishedAt: &now}
}

// findContainer finds a sandbox's container: by its derived ID, or (a warm
// container it was given) by the ID recorded or its labels.
func (r *Runtime) findContainer(ctx context.Context, uid string) (client.Container, error) {
	r.mu.Lock()
	id, ok := r.ids[uid]
	r.mu.Unlock()
	if !ok {
		id = ContainerID(uid)
	}
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, err
	}
	if err == nil {
		if r.owns(ctx, c) {
			return c, nil
		}
		// Another agent's container for the same sandbox (one placed again
		// after its first agent was lost): not ours to report or remove.
	}
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q==%q,labels.%q==%q",
		LabelManagedBy, managedBy, LabelAgent, r.cfg.Agent, LabelUID, uid))
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("sandbox %s: %w", uid, errdefs.ErrNotFound)
	}
	r.mu.Lock()
	r.ids[uid] = cs[0].ID()
	r.mu.Unlock()
	return cs[0], nil
}

// owns says whether a container, as just loaded, was made by this agent.
func (r *Runtime) owns(ctx context.Context, c client.Container) bool {
	info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
	return err == nil && info.Labels[LabelManagedBy] == managedBy && info.Labels[LabelAgent] == r.cfg.Agent
}

// coldID is the ID of a container created for a sandbox: ContainerID(uid),
// unless another agent on this node already has a container of that ID for
// the same sandbox (it was placed again after that agent was lost, and the
// lost agent's container is not removed yet); then the ID also names this
// agent, so the two never collide.
func (r *Runtime) coldID(ctx context.Context, uid string) string {
	id := ContainerID(uid)
	if c, err := r.client.LoadContainer(ctx, id); err == nil && !r.owns(ctx, c) {
		sum := sha256.Sum256([]byte(r.cfg.Agent))
		return id + "-" + hex.EncodeToString(sum[:4])
	}
	return id
}

func (r *Runtime) forgetID(uid string) {
	r.mu.Lock()
	delete(r.ids, uid)
	r.mu.Unlock()
}

// sandboxLabels are the labels of a sandbox's container.
func (r *Runtime) sandboxLabels(spec api.SandboxSpec, created time.Time) map[string]string {
	l := r.ownLabels(map[string]string{
		LabelUID: spec.UID, LabelName: spec.Name, LabelNamespace: spec.Namespace,
		LabelPool: spec.Pool, LabelCreated: created.UTC().Format(time.RFC3339Nano),
		LabelCPU: fmt.Sprint(spec.CPUMillis), LabelMemory: fmt.Sprint(spec.MemoryBytes),
		LabelPids: fmt.Sprint(r.pidsLimit(spec)), LabelNetwork: networkOf(spec),
	})
	if spec.EphemeralStorageBytes > 0 {
		l[LabelEphemeralStorage] = fmt.Sprint(spec.EphemeralStorageBytes)
	}
	return l
}

// pidsLimit is a sandbox's pids limit: its own, or the agent's default.
func (r *Runtime) pidsLimit(spec api.SandboxSpec) int64 {
	if spec.PidsLimit > 0 {
		return spec.PidsLimit
	}
	return r.cfg.DefaultPidsLimit
}

// ownLabels adds the labels that say whose a container is.
func (r *Runtime) ownLabels(l map[string]string) map[string]string {
	l[LabelManagedBy], l[LabelAgent] = managedBy, r.cfg.Agent
	if r.cfg.PodUID != "" {
		l[LabelAgentPodUID] = r.cfg.PodUID
	}
	return l
}

// createCold creates and starts a container for a sandbox (see create.go
// for the steps it shares with makeWarm).
func (r *Runtime) createCold(ctx context.Context, spec api.SandboxSpec) api.SandboxStatus {
	id := r.coldID(ctx, spec.UID)
	status := api.SandboxStatus{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, ContainerID: id,
		CPUMillis: spec.CPUMillis, MemoryBytes: spec.MemoryBytes, Start: api.StartCold}
	// Until the task starts, the command has not run: a failure to reach
	// containerd is not final (reconnect.go). From the start on it is.
	fail := func(err error) api.SandboxStatus { return r.coldFailed(spec, id, err) }

	// Cold: the image may be pulled, when the pool allows.
	ref, image, err := r.coldImage(ctx, spec)
	if err != nil {
		return fail(err)
	}
	ctx, done, err := r.withLease(ctx)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()
	if crashAt(stepColdImage) {
		return crashed(status, stepColdImage)
	}
	p, err := r.planContainer(ctx, ref, image, r.handlerOf(spec), unpackMissing)
	if err != nil {
		return fail(err)
	}
	// Cold: the container is the sandbox's from the start: its labels, and
	// its spec with its command, user, hostname, memory and pids limits.
	now := time.Now()
	opts := r.specOpts(spec, p.config, p.user, id)
	dir := ""
	if r.warm.enabled {
		// Cold: the init and a directory of its own, for an exec server
		// (execserver.go), as a warm container has.
		dir = r.warmDir(id)
		if err := errors.Join(os.MkdirAll(dir, 0o711), os.Chmod(dir, 0o711)); err != nil {
			_ = os.RemoveAll(dir)
			return fail(fmt.Errorf("creating the container's directory: %w", err))
		}
		opts = append(opts, r.withInitMounts(dir))
	}
	container, err := r.newContainer(ctx, id, p, r.sandboxLabels(spec, now), opts)
	if errdefs.IsAlreadyExists(err) {
		// Made meanwhile by another runtime over the same containerd (this
		// one's creates of a UID take turns): report what it made, whose
		// directory this is too.
		return r.madeMeanwhile(ctx, spec, id)
	}
	if err != nil {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		return fail(err)
	}
	if crashAt(stepColdContainer) {
		return crashed(status, stepColdContainer)
	}
	return r.runCold(ctx, spec, status, container, now)
}

// coldImage finds a sandbox's image by its normalized reference, pulling
// (and unpacking) it when it is not on the node and the pool allows pulls.
func (r *Runtime) coldImage(ctx context.Context, spec api.SandboxSpec) (string, client.Image, error) {
	ref, err := imageref.Normalize(spec.Image)
	if err != nil {
		return "", nil, fmt.Errorf("invalid image: %w", err)
	}
	image, err := r.client.GetImage(ctx, ref)
	switch {
	case errdefs.IsNotFound(err) && !spec.AllowPull:
		return ref, nil, withReason(api.ReasonImageNotPresent, fmt.Errorf("image %s is not present on the node and the pool does not allow pulls", ref))
	case errdefs.IsNotFound(err):
		image, err = r.client.Pull(ctx, ref, client.WithPullUnpack, client.WithPullSnapshotter(r.cfg.Snapshotter))
		if err != nil {
			err = fmt.Errorf("pulling %s: %w", ref, err)
			if r.unavailable(err) && !r.serving() {
				// containerd went away, not the registry.
				return ref, nil, finalError(api.ReasonRuntimeUnavailable, err)
			}
			return ref, nil, finalError(api.ReasonImageNotPresent, err)
		}
	case err != nil:
		return ref, nil, fmt.Errorf("looking up image %s: %w", ref, err)
	}
	return ref, image, nil
}

// madeMeanwhile is the status of the sandbox whose container id another
// runtime made while this one was creating it.
func (r *Runtime) madeMeanwhile(ctx context.Context, spec api.SandboxSpec, id string) api.SandboxStatus {
	c, err := r.client.LoadContainer(ctx, id)
	if err != nil {
		return r.failedCreate(spec, id, api.ReasonCreateFailed, fmt.Errorf("loading container %s, which exists: %w", id, err))
	}
	if !r.owns(ctx, c) {
		return r.failedCreate(spec, id, api.ReasonCreateFailed, fmt.Errorf("container %s was made by another agent meanwhile", id))
	}
	st, err := r.statusOf(ctx, c)
	if err != nil {
		return r.failedCreate(spec, id, api.ReasonCreateFailed, err)
	}
	return st
}

// runCold starts the task of a sandbox's new container, created at
// created, and the sandbox's command with it. A failure removes the
// container, with everything it holds.
func (r *Runtime) runCold(ctx context.Context, spec api.SandboxSpec, status api.SandboxStatus, container client.Container, created time.Time) api.SandboxStatus {
	id := container.ID()
	fail := func(err error) api.SandboxStatus {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := r.removeContainer(dctx, container); err != nil && !errdefs.IsNotFound(err) {
			r.log.Error(err, "removing a container that failed to start", "container", id)
		}
		return r.coldFailed(spec, id, err)
	}
	task, err := r.newTask(ctx, container)
	if err != nil {
		return fail(err)
	}
	if crashAt(stepColdTask) {
		return crashed(status, stepColdTask)
	}
	// Cold: an Egress sandbox's network is wired on its start path.
	exitCh, err := r.startTask(ctx, task, networkOf(spec), "attaching the sandbox's network")
	if err != nil {
		return fail(err)
	}
	started := time.Now()
	if crashAt(stepColdStarted) {
		return crashed(status, stepColdStarted)
	}
	// The CPU limit is set once the process runs: the OCI runtime's own
	// setup and exec inside the container's cgroup would otherwise run under
	// a small sandbox's quota (10m CPU makes runc's setup take seconds). The
	// memory limit holds from the start; the command runs without its own
	// CPU limit for the microseconds between, within the agent Pod's quota.
	if err := r.setLimits(ctx, id, task, limitsOf(spec.CPUMillis, 0, 0)); err != nil {
		return fail(finalError(api.ReasonCreateFailed, fmt.Errorf("setting the CPU limit: %w", err)))
	}
	if crashAt(stepColdLimited) {
		return crashed(status, stepColdLimited)
	}
	// From here a restarted agent knows the command ran, even if its task
	// is lost (see adopt.go). Without the label it would still adopt a
	// running or exited task; only a lost task would be taken as never run.
	r.markStartedSoon(container, started, spec)
	if crashAt(stepColdLabelled) {
		return crashed(status, stepColdLabelled)
	}
	status.State, status.CreatedAt, status.StartedAt = api.StateRunning, &created, &started
	r.remember(status, true)
	go r.awaitExit(container, status, exitCh)
	return status
}

// specOpts builds the hardened OCI spec of a sandbox. The image's config is
// applied here rather than with oci.WithImageConfig, which mounts the image's
// root filesystem in the caller to read /etc/group: the agent runs in a Pod
// that cannot see containerd's snapshots, and the mount would cost time on
// every start.
func (r *Runtime) specOpts(spec api.SandboxSpec, img ocispec.ImageConfig, user specs.User, id string) []oci.SpecOpts {
	args, env, cwd := processOf(spec, img)
	opts := []oci.SpecOpts{
		oci.WithDefaultSpec(),
		withSpecVersion(specVersion),
		oci.WithDefaultUnixDevices,
		oci.WithEnv(env),
		oci.WithProcessArgs(args...),
		oci.WithProcessCwd(cwd),
		withUser(user),
		oci.WithHostname(hostname(spec)),
		oci.WithNoNewPrivileges,
		seccomp.WithDefaultProfile(),
		// containerd's default set, less what a sandbox has no use for.
		oci.WithDroppedCapabilities([]string{"CAP_NET_RAW", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP", "CAP_SYS_CHROOT"}),
		oci.WithCgroup(r.cgroupPath(id)),
		oci.WithPidsLimit(r.pidsLimit(spec)),
		oci.WithAnnotations(map[string]string{"io.kubernetes.cri.container-type": "fast-sandbox"}),
	}
	if spec.MemoryBytes > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(spec.MemoryBytes)))
	}
	if r.appArmorProfile != "" {
		opts = append(opts, oci.WithApparmorProfile(r.appArmorProfile))
	}
	if r.cfg.ReadOnlyRootFilesystem {
		opts = append(opts, oci.WithRootFSReadonly(), oci.WithMounts([]specs.Mount{{
			Destination: "/tmp", Type: "tmpfs", Source: "tmpfs",
			Options: []string{"nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", TmpSizeBytes)},
		}}))
	}
	// A network namespace of its own (runc and crun bring up loopback in
	// it); an Egress sandbox's is wired once its task exists (egress.go).
	opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace}))
	return append(opts, extraSpecOpts...)
}

// extraSpecOpts are added to every container's spec, cold and warm; tests
// set them (e.g. to give sandboxes a host directory) before making a runtime.
var extraSpecOpts []oci.SpecOpts

// processOf is a sandbox's command, environment and working directory: its
// own where it says, the image's otherwise.
func processOf(spec api.SandboxSpec, img ocispec.ImageConfig) (args, env []string, cwd string) {
	args = append(append([]string{}, img.Entrypoint...), img.Cmd...)
	switch {
	case len(spec.Command) > 0:
		args = append(append([]string{}, spec.Command...), spec.Args...)
	case len(spec.Args) > 0:
		args = append(append([]string{}, img.Entrypoint...), spec.Args...)
	}
	cwd = img.WorkingDir
	if spec.WorkingDir != "" {
		cwd = spec.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, img.Env...)
	for _, e := range spec.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	return args, env, cwd
}

// numericUser parses an image's USER ("", "uid" or "uid:gid"). Names would
// need the image's /etc/passwd, which the agent does not mount; such images
// are refused with a clear message.
func numericUser(u string) (specs.User, error) {
	if u == "" {
		return specs.User{}, nil
	}
	uidStr, gidStr, _ := strings.Cut(u, ":")
	uid, err := strconv.ParseUint(uidStr, 10, 32)
	if err != nil {
		return specs.User{}, fmt.Errorf("USER %q is not numeric; sandboxes support only numeric users (uid or uid:gid)", u)
	}
	gid := uid
	if gidStr != "" {
		if gid, err = strconv.ParseUint(gidStr, 10, 32); err != nil {
			return specs.User{}, fmt.Errorf("USER %q has a non-numeric group", u)
		}
	}
	return specs.User{UID: uint32(uid), GID: uint32(gid)}, nil
}

// checkUser refuses a root user when the agent runs only non-root
// sandboxes. A sandbox's user is its image's USER (the spec has none of its
// own); an empty USER is root.
func (r *Runtime) checkUser(image, imageUser string, u specs.User) error {
	if !r.cfg.RunAsNonRoot || u.UID != 0 {
		return nil
	}
	return fmt.Errorf("image %s runs as root (USER %q, uid 0) and this agent runs only non-root sandboxes (runAsNonRoot): use an image whose USER is a non-zero uid", image, imageUser)
}

// specVersion is the OCI runtime spec version sandboxes declare: every
// feature they use is in 1.1, and older runtimes (Debian 12's crun 1.8)
// refuse the newer versions the containerd client writes by default.
const specVersion = "1.1.0"

func withSpecVersion(v string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Version = v
		return nil
	}
}

func withUser(u specs.User) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Process == nil {
			s.Process = &specs.Process{}
		}
		s.Process.User = u
		return nil
	}
}

func hostname(spec api.SandboxSpec) string {
	h := spec.Name
	if len(h) > 63 {
		h = h[:63]
	}
	if h == "" {
		h = "sandbox"
	}
	return h
}

// watch starts waiting for the exit of a running sandbox found in containerd
// (after a restart, or a retried create), once per sandbox.
func (r *Runtime) watch(c client.Container, st api.SandboxStatus) {
	r.mu.Lock()
	if r.waited[st.UID] {
		r.mu.Unlock()
		return
	}
	r.known[st.UID], r.waited[st.UID] = st, true
	r.mu.Unlock()
	go r.awaitExit(c, st, nil)
}

func (r *Runtime) remember(st api.SandboxStatus, waiting bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.known[st.UID] = st
	if waiting {
		r.waited[st.UID] = true
	}
}

// awaitExit turns a task's exit into the sandbox's final status; with no
// channel it attaches to the task first. A broken wait (containerd
// restarted) is not an exit: see waitExit. The task is kept (stopped) so
// that its status survives an agent restart; it goes with DeleteSandbox.
func (r *Runtime) awaitExit(c client.Container, st api.SandboxStatus, exitCh <-chan client.ExitStatus) {
	es, end := r.waitExit(c, exitCh)
	r.endWait(c, st, es, end)
}

// deliverExit reports the final status of a sandbox whose process exited.
func (r *Runtime) deliverExit(c client.Container, st api.SandboxStatus, es client.ExitStatus) {
	if es.Error() != nil {
		return // not an exit (waitExit never returns one)
	}
	r.report(r.finalStatus(r.ctx, c, st, es.ExitCode(), es.ExitTime()))
}

// report records a sandbox's final status and delivers it on Exits, unless
// the sandbox was deleted meanwhile.
func (r *Runtime) report(final api.SandboxStatus) {
	r.mu.Lock()
	_, stillKnown := r.known[final.UID]
	if stillKnown {
		r.known[final.UID] = final
	}
	delete(r.waited, final.UID)
	r.mu.Unlock()
	if stillKnown {
		r.exits <- final
	}
}

// finalStatus is the status of a sandbox whose process exited with code.
func (r *Runtime) finalStatus(ctx context.Context, c client.Container, st api.SandboxStatus, code uint32, at time.Time) api.SandboxStatus {
	exit := int32(code)
	st.State, st.ExitCode = api.StateExited, &exit
	if at.IsZero() || at.Year() < 2000 {
		at = time.Now()
	}
	st.FinishedAt = &at
	var stopped, stopMessage string
	if code != 0 {
		stopped, stopMessage = stopReason(ctx, c)
	}
	switch {
	case code == 0:
		st.Reason = api.ReasonCompleted
	case stopped != "":
		// The runtime stopped it (storage.go), and recorded why.
		st.Reason, st.Message = stopped, stopMessage
	case r.oomKilled(c.ID()):
		st.Reason, st.Message = api.ReasonOOMKilled, "the sandbox exceeded its memory limit and was killed"
	default:
		st.Reason = api.ReasonError
		if code > 128 {
			st.Message = fmt.Sprintf("killed by signal %d", code-128)
		}
	}
	return st
}

// StopSandbox kills a sandbox's process and keeps its container and logs;
// the exit is reported through Exits like any other.
func (r *Runtime) StopSandbox(ctx context.Context, uid string) error {
	ctx = r.nsCtx(ctx)
	c, err := r.findContainer(ctx, uid)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding the container of sandbox %s: %w", uid, err)
	}
	task, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("loading task of %s: %w", c.ID(), err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("killing the process of sandbox %s: %w", uid, err)
	}
	thawKilled(ctx, task)
	return nil
}

// DeleteSandbox kills and removes a sandbox's container, snapshot and logs.
func (r *Runtime) DeleteSandbox(ctx context.Context, uid string) error {
	ctx = r.nsCtx(ctx)
	r.mu.Lock()
	delete(r.known, uid)
	r.mu.Unlock()
	c, err := r.findContainer(ctx, uid)
	if errdefs.IsNotFound(err) {
		r.removeFiles(ContainerID(uid))
		r.forgetID(uid)
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding the container of sandbox %s: %w", uid, err)
	}
	if err := r.removeContainer(ctx, c); err != nil {
		return err
	}
	r.forgetID(uid)
	return nil
}

// removeContainer kills a container's task and removes the container, its
// snapshot, logs and warm directory, and what its user namespace held.
func (r *Runtime) removeContainer(ctx context.Context, c client.Container) error {
	id := c.ID()
	r.dropExecServer(id)
	info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("reading container %s: %w", id, err)
	}
	parent := r.remappedParent(ctx, info)
	if task, err := c.Task(ctx, nil); err == nil {
		if st, err := task.Status(ctx); err == nil && (st.Status == client.Paused || st.Status == client.Pausing) {
			// A paused task's processes die once thawed, after the kill.
			_ = task.Kill(ctx, syscall.SIGKILL, client.WithKillAll)
			thawKilled(ctx, task)
		}
		if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("killing task of %s: %w", id, err)
		}
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("loading task of %s: %w", id, err)
	}
	if info.Labels[LabelNetwork] == api.NetworkEgress && info.Labels[LabelAgent] == r.cfg.Agent {
		r.detachEgress(id)
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("deleting container %s: %w", id, err)
	}
	if err := r.releaseRange(ctx, info.Labels, info.Snapshotter, parent); err != nil {
		return fmt.Errorf("container %s: %w", id, err)
	}
	r.removeFiles(id)
	return nil
}

// ListSandboxes lists this agent's sandbox containers by label and reports
// each one's state (see adopt.go for how it is decided). Running ones are
// watched for their exit; those whose command never ran are removed, so that
// the next sync creates them once; those being created report Creating.
func (r *Runtime) ListSandboxes(ctx context.Context) ([]api.SandboxStatus, error) {
	ctx = r.nsCtx(ctx)
	// Only this agent's: agents of other pools (or of the same pool) on the
	// node share the containerd namespace.
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q==%q", LabelManagedBy, managedBy, LabelAgent, r.cfg.Agent))
	if err != nil {
		return nil, fmt.Errorf("listing sandbox containers: %w", err)
	}
	out := make([]api.SandboxStatus, 0, len(cs))
	for _, c := range cs {
		info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
		if err != nil {
			return nil, fmt.Errorf("reading container %s: %w", c.ID(), err)
		}
		labels := info.Labels
		uid := labels[LabelUID]
		if uid == "" {
			continue // a warm container not given to a sandbox
		}
		if r.isCreating(uid) {
			out = append(out, api.SandboxStatus{UID: uid, Namespace: labels[LabelNamespace], Name: labels[LabelName],
				ContainerID: c.ID(), State: api.StateCreating})
			continue
		}
		st, found, err := r.settle(ctx, c)
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		if alive(st.State) {
			r.watch(c, st)
		} else {
			r.remember(st, false)
		}
		out = append(out, st)
	}
	return out, nil
}

// statusOf reads a sandbox's status from its container and task, changing
// nothing (see adopt.go for the rules).
func (r *Runtime) statusOf(ctx context.Context, c client.Container) (api.SandboxStatus, error) {
	st, v, _, err := r.inspect(ctx, c)
	if err == nil && v == neverRan {
		st.State, st.Reason = api.StateFailed, api.ReasonCreateFailed
		st.Message = "the sandbox's command never ran: an agent stopped while creating its container"
	}
	return st, err
}

// Logs reads the sandbox's log: its rotated files, oldest first, then the
// current one (see package sandboxlog; a rotation while the files are
// opened may leave out the file rotated meanwhile).
func (r *Runtime) Logs(ctx context.Context, uid string) (io.ReadCloser, error) {
	c, err := r.findContainer(r.nsCtx(ctx), uid)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("logs of sandbox %s: %w", uid, runtime.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("finding the container of sandbox %s: %w", uid, err)
	}
	rc, err := sandboxlog.Open(r.logPath(c.ID()))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("logs of sandbox %s: %w", uid, runtime.ErrNotFound)
	}
	return rc, err
}

// removeFiles removes a container's logs and directory.
func (r *Runtime) removeFiles(id string) {
	if err := sandboxlog.Remove(r.logPath(id)); err != nil {
		r.log.Error(err, "removing sandbox logs", "container", id)
	}
	if err := os.RemoveAll(r.warmDir(id)); err != nil {
		r.log.Error(err, "removing a container's directory", "container", id)
	}
}

// ListImages lists the images of the namespace, one entry per content digest.
func (r *Runtime) ListImages(ctx context.Context) ([]api.Image, error) {
	ctx = r.nsCtx(ctx)
	return r.images.list(ctx, r.client)
}

func klogRef(s api.SandboxSpec) string { return s.Namespace + "/" + s.Name }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
