package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxinit"
)

// User namespaces.
//
// With user namespaces on, every container (cold or warm) gets a user
// namespace of its own, in which its ids 0-65535 are a range of unprivileged
// host ids that no other container of the node's fast-sandbox agents has:
// root in a sandbox is nobody on the host, and two sandboxes never share an
// id. The ranges are the blocks of 65536 ids from 2^31 (32767 of them).
//
// A range is taken atomically, across the agents of a node, by creating a
// containerd lease named after it (a lease with a fixed ID is created once;
// it holds no resources and never expires); its host id is recorded on the
// container (LabelUserNS), and the lease goes with the container
// (removeContainer). A lease left by an agent that died before making its
// container is removed by the next agent of that name (Initialize) or by
// the cleanup of its agent Pod.
//
// The container's root filesystem must belong to the range: it is a copy of
// the image's snapshot with every file's owner shifted into it
// (client.WithUserNSRemappedSnapshot: containerd 1.6's overlayfs cannot
// map ids at mount time, nor can runc 1.1). The copy is made by the agent,
// which mounts the snapshot, so it costs a walk and a copy-up of the image
// per container: warm containers take it off the start path. It is removed
// with the container.
//
// Config.UserNamespaces: Auto (the default) uses them when the node allows,
// and otherwise runs without and says so once; Required fails Initialize
// instead; Disabled never uses them. Initialize probes once: user
// namespaces enabled in the kernel, then a tiny container run as sandboxes
// are, with a user namespace and a root filesystem the agent chowned into
// its range (the sandbox init's probe mode on an empty snapshot): that takes
// the agent mounting the snapshotter's directories, and the OCI runtime
// reaching the container's files from within its user namespace. Without
// the init binary, only the mount is tried.

// Modes of Config.UserNamespaces.
const (
	UserNamespacesAuto     = "Auto"
	UserNamespacesRequired = "Required"
	UserNamespacesDisabled = "Disabled"
)

// LabelUserNS is the host id of the container's root (uid and gid) when it
// has a user namespace; its ids are that and the 65535 following.
const LabelUserNS = "fast-sandbox.io/userns-host-id"

const (
	usernsBase  = 1 << 31
	usernsSize  = 65536
	usernsSlots = (1<<32-usernsBase)/usernsSize - 1 // the last would reach uid 2^32-1, which is invalid
	// usernsTries bounds the random picks of a free range.
	usernsTries = 64
	// usernsLeasePrefix names the lease that holds a range.
	usernsLeasePrefix = "fast-sandbox-userns-"
	// labelLeaseContainer, on such a lease, is the container it is for.
	labelLeaseContainer = "fast-sandbox.io/container-id"
)

// usernsProbe, when set (by tests), replaces the probe of the node's support.
var usernsProbe func() error

// initUserNS decides whether containers get user namespaces, and removes
// the range leases a previous agent of this name left without a container.
func (r *Runtime) initUserNS(ctx context.Context) error {
	mode := r.cfg.UserNamespaces
	switch mode {
	case UserNamespacesDisabled:
		return nil
	case UserNamespacesAuto, UserNamespacesRequired:
	default:
		return fmt.Errorf("user namespaces %q: must be %s, %s or %s", mode, UserNamespacesAuto, UserNamespacesRequired, UserNamespacesDisabled)
	}
	probe := usernsProbe
	if probe == nil {
		probe = func() error { return r.probeUserNS(ctx) }
	}
	if err := probe(); err != nil {
		if mode == UserNamespacesRequired {
			return fmt.Errorf("user namespaces are required (--user-namespaces=%s) but this node cannot give sandboxes their own: %w", mode, err)
		}
		r.log.Info("sandboxes run without user namespaces: this node cannot give them their own", "reason", err.Error())
		return nil
	}
	r.userns = true
	r.sweepRangeLeases(ctx, fmt.Sprintf("labels.%q==%q", LabelAgent, r.cfg.Agent))
	return nil
}

// probeUserNS says why containers cannot have user namespaces here, if they
// cannot: the kernel allows none, or the agent cannot mount the
// snapshotter's snapshots (an agent Pod without containerd's root
// directory), which the remapped copy of an image needs.
func (r *Runtime) probeUserNS(ctx context.Context) error {
	data, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
	if err != nil {
		return fmt.Errorf("reading /proc/sys/user/max_user_namespaces: %w", err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err != nil || n <= 0 {
		return fmt.Errorf("user namespaces are disabled on this node (max_user_namespaces is %s)", strings.TrimSpace(string(data)))
	}
	r.removeProbes(ctx)
	ctx, done, err := r.withLease(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	id := idPrefix + "probe-" + hex.EncodeToString(suffix)
	host, lease, err := r.takeRange(ctx, id)
	if err != nil {
		return err
	}
	defer r.abandon(ctx, rootfs{lease: lease})
	sn := r.client.SnapshotService(r.cfg.Snapshotter)
	mounts, err := sn.Prepare(ctx, id, "")
	if err != nil {
		return fmt.Errorf("preparing a snapshot: %w", err)
	}
	defer func() { _ = sn.Remove(context.WithoutCancel(ctx), id) }()
	// The root directory belongs to the range, as a remapped image's does.
	if err := mount.WithTempMount(ctx, mounts, func(root string) error { return os.Lchown(root, int(host), int(host)) }); err != nil {
		return fmt.Errorf("the agent cannot mount the %s snapshotter's snapshots to give them to a user namespace (in a Pod, mount containerd's root directory at the same path): %w", r.cfg.Snapshotter, err)
	}
	if r.initPath == "" {
		return nil
	}
	return r.runProbe(ctx, id, host)
}

// labelProbe marks the containers of probeUserNS.
const labelProbe = "fast-sandbox.io/probe"

// runProbe runs the sandbox init's probe mode in a container with a user
// namespace of the range at host, on the prepared snapshot id.
func (r *Runtime) runProbe(ctx context.Context, id string, host uint32) error {
	runtimeOpt, err := r.runtimeOpt(r.cfg.DefaultRuntimeHandler)
	if err != nil {
		return err
	}
	ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: usernsSize}}
	c, err := r.client.NewContainer(ctx, id,
		client.WithContainerLabels(r.ownLabels(map[string]string{labelProbe: "true"})),
		client.WithSnapshotter(r.cfg.Snapshotter),
		client.WithSnapshot(id),
		runtimeOpt,
		client.WithNewSpec(oci.WithDefaultSpec(), withSpecVersion(specVersion), oci.WithDefaultUnixDevices,
			oci.WithProcessArgs(sandboxinit.Binary, sandboxinit.ProbeArg), oci.WithCgroup(r.cgroupPath(id)),
			oci.WithMounts([]specs.Mount{{Destination: sandboxinit.Binary, Type: "bind", Source: r.initPath, Options: []string{"rbind", "ro", "nosuid", "nodev"}}}),
			oci.WithUserNamespace(ids, ids)),
	)
	if err != nil {
		return fmt.Errorf("creating a container with a user namespace: %w", err)
	}
	defer func() { _ = r.removeContainer(context.WithoutCancel(ctx), c) }()
	task, err := c.NewTask(ctx, cio.NullIO)
	if err != nil {
		return fmt.Errorf("creating a task with a user namespace: %w", err)
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		return fmt.Errorf("waiting on a task with a user namespace: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("starting a task with a user namespace: %w", err)
	}
	select {
	case es := <-exitCh:
		if code, _, err := es.Result(); err != nil || code != 0 {
			return fmt.Errorf("a container with a user namespace exited with %d (%v)", code, err)
		}
	case <-time.After(initConnectTimeout):
		return errors.New("a container with a user namespace did not exit in time")
	}
	return nil
}

// removeProbes removes the probe containers an agent of this name left.
func (r *Runtime) removeProbes(ctx context.Context) {
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q==%q", labelProbe, "true", LabelAgent, r.cfg.Agent))
	if err != nil {
		return
	}
	for _, c := range cs {
		if err := r.removeContainer(ctx, c); err != nil {
			r.log.Error(err, "removing a probe container", "container", c.ID())
		}
	}
}

// rootfs is what a new container gets of its own: a snapshot of its image
// and, with user namespaces, a range of host ids.
type rootfs struct {
	snapshot client.NewContainerOpts
	spec     []oci.SpecOpts    // its user namespace
	labels   map[string]string // LabelUserNS
	lease    string            // the range's lease; "" without one
}

// newRootfs takes what a new container id needs for its root filesystem. If
// the container is not made, abandon gives it back.
func (r *Runtime) newRootfs(ctx context.Context, id string, image client.Image) (rootfs, error) {
	if !r.userns {
		return rootfs{snapshot: client.WithNewSnapshot(id, image)}, nil
	}
	host, lease, err := r.takeRange(ctx, id)
	if err != nil {
		return rootfs{}, err
	}
	ids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: usernsSize}}
	return rootfs{
		snapshot: client.WithUserNSRemappedSnapshot(id, image, ids, ids),
		spec:     []oci.SpecOpts{oci.WithUserNamespace(ids, ids)},
		labels:   map[string]string{LabelUserNS: strconv.FormatUint(uint64(host), 10)},
		lease:    lease,
	}, nil
}

// abandon gives back what newRootfs took, for a container not made.
func (r *Runtime) abandon(ctx context.Context, fs rootfs) {
	if fs.lease == "" {
		return
	}
	if err := r.client.LeasesService().Delete(context.WithoutCancel(ctx), leases.Lease{ID: fs.lease}); err != nil && !errdefs.IsNotFound(err) {
		r.log.Error(err, "giving back a range of user ids", "lease", fs.lease)
	}
}

// withLabels adds l to labels.
func withLabels(labels, l map[string]string) map[string]string {
	for k, v := range l {
		labels[k] = v
	}
	return labels
}

// takeRange takes a free range of host ids for container id.
func (r *Runtime) takeRange(ctx context.Context, id string) (uint32, string, error) {
	ls := r.client.LeasesService()
	labels := r.ownLabels(map[string]string{labelLeaseContainer: id})
	for range usernsTries {
		n, err := rand.Int(rand.Reader, big.NewInt(usernsSlots))
		if err != nil {
			return 0, "", err
		}
		host := uint32(usernsBase + n.Int64()*usernsSize)
		name := usernsLeasePrefix + strconv.FormatUint(uint64(host), 10)
		_, err = ls.Create(ctx, leases.WithID(name), leases.WithLabels(labels))
		if err == nil {
			return host, name, nil
		}
		if !errdefs.IsAlreadyExists(err) {
			return 0, "", fmt.Errorf("taking a range of user ids: %w", err)
		}
	}
	return 0, "", fmt.Errorf("no free range of user ids found in %d tries", usernsTries)
}

// releaseRange removes what a removed container's user namespace held: the
// remapped copy of its image (the parent of its snapshot, made for it
// alone) and its range's lease. parent is "" when it had no snapshot.
func (r *Runtime) releaseRange(ctx context.Context, labels map[string]string, snapshotter, parent string) error {
	host := labels[LabelUserNS]
	if host == "" {
		return nil
	}
	var errs []error
	if parent != "" {
		if err := r.client.SnapshotService(snapshotter).Remove(ctx, parent); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the remapped image snapshot %s: %w", parent, err))
		}
	}
	if err := r.client.LeasesService().Delete(ctx, leases.Lease{ID: usernsLeasePrefix + host}); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("giving back the range of user ids at %s: %w", host, err))
	}
	return errors.Join(errs...)
}

// remappedParent is the parent of a container's snapshot when the container
// has a user namespace (the copy of its image made for it), else "".
func (r *Runtime) remappedParent(ctx context.Context, info containers.Container) string {
	if info.Labels[LabelUserNS] == "" || info.SnapshotKey == "" {
		return ""
	}
	st, err := r.client.SnapshotService(info.Snapshotter).Stat(ctx, info.SnapshotKey)
	if err != nil {
		return ""
	}
	return st.Parent
}

// sweepRangeLeases removes the range leases matching filter whose container
// is gone (an agent died between taking a range and making its container).
func (r *Runtime) sweepRangeLeases(ctx context.Context, filter string) {
	ls := r.client.LeasesService()
	all, err := ls.List(ctx, filter)
	if err != nil {
		r.log.Error(err, "listing the leases of user id ranges")
		return
	}
	for _, l := range all {
		if !strings.HasPrefix(l.ID, usernsLeasePrefix) {
			continue
		}
		if _, err := r.client.LoadContainer(ctx, l.Labels[labelLeaseContainer]); !errdefs.IsNotFound(err) {
			continue
		}
		if err := ls.Delete(ctx, l); err != nil && !errdefs.IsNotFound(err) {
			r.log.Error(err, "removing the lease of a range of user ids whose container is gone", "lease", l.ID)
		}
	}
}
