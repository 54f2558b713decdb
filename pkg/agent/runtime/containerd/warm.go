package containerd

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
	"github.com/fast-sandbox/fast-sandbox/pkg/imageref"
	"github.com/fast-sandbox/fast-sandbox/pkg/sandboxinit"
)

// Warm containers.
//
// Creating a container costs a shim, an OCI runtime's create and start and
// a snapshot: 70ms on an idle 2-core machine, a quarter of a second inside
// an agent Pod of 500m CPU. The runtime therefore
// keeps, per image, runtime handler and network mode in recent use, a few
// containers created and started ahead of time with sandboxinit as their
// process (see that package). Starting a sandbox in one is a label update,
// a cgroup write and one message; the sandbox's command becomes the
// container's process. A sandbox with no warm container at hand is created
// the ordinary way, and the warm set is refilled in the background.
//
// A warm container carries LabelWarm and no sandbox labels until it is
// claimed; then it gets the sandbox's labels, which stay the source of
// truth, and LabelStarted once the init confirmed the exec. A restarted
// agent removes the unclaimed warm containers of its predecessor when it
// starts; the claimed ones are judged like any sandbox container (adopt.go):
// one whose init still waits for its command (the agent stopped between
// claiming and sending it) never ran its sandbox and is removed, so that the
// next sync creates it again.

// LabelWarm marks a container made warm ("true").
const LabelWarm = "fast-sandbox.io/warm"

const (
	warmIDPrefix = idPrefix + "w-"
	// initConnectTimeout bounds the wait for a new warm container's init.
	initConnectTimeout = 10 * time.Second
	// startTimeout bounds a warm start: the message and the exec.
	startTimeout = 10 * time.Second
	// probeWindow is how long a restarted agent waits for the init of a
	// claimed container to call; the init retries every 20ms.
	probeWindow = 300 * time.Millisecond
	// warmReadyTimeout bounds the wait for the warm images' first warm
	// containers before the agent is ready.
	warmReadyTimeout = 30 * time.Second
	// refillParallelism is how many warm containers are made at once.
	refillParallelism = 2
)

// warmKey is what a warm container is made for.
type warmKey struct {
	image   string // normalized reference
	handler string
	network string
}

type warmState int

const (
	warmFree     warmState = iota // waiting for a sandbox
	warmClaiming                  // being given one
	warmStarted                   // its sandbox runs
	warmFailed                    // its sandbox could not start; removed
	warmGone                      // removed without a claim (init exited, evicted, closed)
)

type warmContainer struct {
	id          string
	key         warmKey
	container   client.Container
	task        client.Task
	conn        net.Conn
	exitCh      <-chan client.ExitStatus
	imageConfig ocispec.ImageConfig
	user        specs.User

	// state and status are guarded by Runtime.mu until claimDone closes.
	state     warmState
	status    api.SandboxStatus
	claimDone chan struct{}
}

// warmPool is the runtime's set of warm containers.
type warmPool struct {
	enabled bool
	perKey  int
	maxKeys int

	// Guarded by Runtime.mu.
	free     map[warmKey][]*warmContainer
	creating map[warmKey]int
	keys     []warmKey // in recent use, oldest first
	broken   map[warmKey]error
	refillCh chan struct{}
	// changed closes (and is replaced) when a warm container is made or a
	// key breaks: WaitWarm waits on it.
	changed chan struct{}

	// stop ends the refiller; done closes when it has.
	stop context.CancelFunc
	done chan struct{}
}

// notifyLocked wakes the waiters of WaitWarm; Runtime.mu is held.
func (w *warmPool) notifyLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// warmDir is the per-container directory holding the init's and the exec
// server's sockets (a cold container's too, with warm containers enabled,
// which prepare their parent).
func (r *Runtime) warmDir(id string) string {
	return filepath.Join(podStateDir(r.cfg.StateDir, r.cfg.PodUID), "warm", id)
}

// initWarm removes what a previous agent left and, with the init binary
// installed (installInit; containerd's runtime mounts it from there),
// starts the refiller.
func (r *Runtime) initWarm(ctx context.Context) error {
	w := &r.warm
	w.free, w.creating, w.broken = map[warmKey][]*warmContainer{}, map[warmKey]int{}, map[warmKey]error{}
	w.refillCh, w.changed = make(chan struct{}, 1), make(chan struct{})
	w.perKey, w.maxKeys = r.cfg.WarmPerImage, r.cfg.WarmImagesMax
	if w.maxKeys <= 0 {
		w.maxKeys = 4
	}
	if err := r.cleanupWarm(ctx); err != nil {
		return err
	}
	if r.initPath == "" || w.perKey <= 0 {
		return nil
	}
	warmDir := filepath.Join(podStateDir(r.cfg.StateDir, r.cfg.PodUID), "warm")
	if err := os.MkdirAll(warmDir, 0o700); err != nil {
		return fmt.Errorf("creating the warm containers' directory: %w", err)
	}
	if r.userns {
		// The OCI runtime mounts a warm container's directory and the init
		// from within the container's user namespace, as an unprivileged
		// host user: it must be able to traverse their parents (not to list
		// or read them).
		dirs := []string{r.cfg.StateDir}
		for d := warmDir; d != r.cfg.StateDir && d != filepath.Dir(d); d = filepath.Dir(d) {
			dirs = append(dirs, d)
		}
		if err := searchable(dirs...); err != nil {
			return err
		}
	}
	w.enabled = true
	var rctx context.Context
	rctx, w.stop = context.WithCancel(r.ctx)
	w.done = make(chan struct{})
	go r.refillLoop(rctx)
	// The pool's warm images have a warm container before the agent is
	// ready, so that its first sandboxes start in milliseconds too. An image
	// that cannot be made warm is logged and started the ordinary way.
	wctx, cancel := context.WithTimeout(ctx, warmReadyTimeout)
	defer cancel()
	for _, img := range r.cfg.WarmImages {
		spec := api.SandboxSpec{Image: img}
		if _, err := r.keyOf(spec); err != nil {
			return fmt.Errorf("warm image %q: %w", img, err)
		}
		if err := r.WaitWarm(wctx, spec); err != nil {
			r.log.Error(err, "no warm container for a warm image; its sandboxes start the ordinary way until one is made", "image", img)
		}
	}
	return nil
}

// searchable lets anyone traverse dirs (adds the execute bits of group and
// others).
func searchable(dirs ...string) error {
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if mode := fi.Mode().Perm(); mode&0o011 != 0o011 {
			if err := os.Chmod(d, mode|0o011); err != nil {
				return fmt.Errorf("letting user namespaces traverse %s: %w", d, err)
			}
		}
	}
	return nil
}

// installFile installs src in dir as name-<digest of its content>,
// executable, and returns its path. Agents on a node share the state
// directory, and containers bind-mount the file (and shims run it) while
// other agents start: an installed file is never replaced, since a bind
// mount of a file renamed over (unlinked) fails with ENOENT. A file of that
// name is that content already; a new one is written aside and linked into
// place, which fails, harmlessly, if another agent linked it first.
func installFile(src, dir, name string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	dst := filepath.Join(dir, name+"-"+hex.EncodeToString(sum[:8]))
	if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() && fi.Size() == int64(len(data)) {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".*")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o755)
	}
	if err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), dst); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	return dst, nil
}

// cleanupWarm removes the unclaimed warm containers of a previous agent.
// Claimed ones are sandbox containers: ListSandboxes and CreateSandbox
// decide what became of them.
func (r *Runtime) cleanupWarm(ctx context.Context) error {
	cs, err := r.client.Containers(ctx, fmt.Sprintf("labels.%q==%q,labels.%q==%q", LabelWarm, "true", LabelAgent, r.cfg.Agent))
	if err != nil {
		return fmt.Errorf("listing warm containers: %w", err)
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func(c client.Container) {
			defer wg.Done()
			info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
			if err != nil {
				r.log.Error(err, "reading a warm container's labels", "container", c.ID())
				return
			}
			if info.Labels[LabelUID] != "" {
				return // given to a sandbox
			}
			r.log.Info("removing a warm container of a previous agent", "container", c.ID())
			if err := r.removeContainer(ctx, c); err != nil {
				r.log.Error(err, "removing a warm container", "container", c.ID())
			}
		}(c)
	}
	wg.Wait()
	return nil
}

// initWaiting says whether a claimed warm container's init still waits for
// its command: it listens on the container's socket for a moment and sees
// whether the init calls.
func (r *Runtime) initWaiting(id string) bool {
	dir := r.warmDir(id)
	if _, err := os.Stat(dir); err != nil {
		return false
	}
	_ = os.Remove(filepath.Join(dir, sandboxinit.SocketName))
	ln, err := listenInit(dir)
	if err != nil {
		return false
	}
	defer func() { _ = ln.Close() }()
	_ = ln.SetDeadline(time.Now().Add(probeWindow))
	conn, err := ln.Accept()
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// listenInit listens on the socket of a warm container's directory. The
// init may run as an unprivileged host user (a user namespace's root), so
// the directory can be traversed and the socket written by anyone: only
// root reaches the directory's parent on the host, and only this
// container has it mounted.
func listenInit(dir string) (*dirListener, error) {
	return listenIn(dir, sandboxinit.SocketName, "unix")
}

// listenIn listens on a Unix socket name in a container's directory dir,
// which anyone may connect to (see listenInit), and removes it when the
// listener is closed. It binds the socket through the directory's
// descriptor (/proc/self/fd/N/name): a socket's path is at most 107 bytes,
// which a state directory under a Pod's UID and a container's ID pass.
func listenIn(dir, name, network string) (*dirListener, error) {
	d, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", dir, err)
	}
	ln, err := net.ListenUnix(network, &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", d, name), Net: network})
	_ = unix.Close(d)
	if err != nil {
		return nil, err
	}
	// Not through the descriptor's path, closed now: by the full one.
	ln.SetUnlinkOnClose(false)
	sock := filepath.Join(dir, name)
	if err := errors.Join(os.Chmod(dir, 0o711), os.Chmod(sock, 0o666)); err != nil {
		_ = ln.Close()
		_ = os.Remove(sock)
		return nil, err
	}
	return &dirListener{UnixListener: ln, path: sock}, nil
}

// dirListener listens on a socket in a container's directory; Close
// removes the socket too.
type dirListener struct {
	*net.UnixListener
	path string
}

// Close stops listening and removes the socket.
func (l *dirListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// keyOf is the warm key a sandbox needs.
func (r *Runtime) keyOf(spec api.SandboxSpec) (warmKey, error) {
	ref, err := imageref.Normalize(spec.Image)
	if err != nil {
		return warmKey{}, err
	}
	return warmKey{image: ref, handler: r.handlerOf(spec), network: networkOf(spec)}, nil
}

// noteKey records that key is in use: it becomes the most recent, the
// oldest beyond the limit lose their warm containers, and the refiller runs.
func (r *Runtime) noteKey(key warmKey) {
	w := &r.warm
	var evicted []*warmContainer
	r.mu.Lock()
	for i, k := range w.keys {
		if k == key {
			w.keys = append(w.keys[:i], w.keys[i+1:]...)
			break
		}
	}
	w.keys = append(w.keys, key)
	delete(w.broken, key)
	for len(w.keys) > w.maxKeys {
		old := w.keys[0]
		w.keys = w.keys[1:]
		for _, c := range w.free[old] {
			c.state = warmGone
			evicted = append(evicted, c)
		}
		delete(w.free, old)
	}
	r.mu.Unlock()
	for _, c := range evicted {
		go r.discardWarm(c)
	}
	select {
	case w.refillCh <- struct{}{}:
	default:
	}
}

// takeWarm hands out a free warm container for key, or nil.
func (r *Runtime) takeWarm(key warmKey) *warmContainer {
	if !r.warm.enabled {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	free := r.warm.free[key]
	if len(free) == 0 {
		return nil
	}
	c := free[len(free)-1]
	r.warm.free[key] = free[:len(free)-1]
	c.state = warmClaiming
	return c
}

// refillLoop keeps perKey warm containers for every key in use, making up
// to refillParallelism at once: one at a time falls behind sandboxes that
// arrive back to back.
func (r *Runtime) refillLoop(ctx context.Context) {
	defer close(r.warm.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, refillParallelism)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.warm.refillCh:
		}
		for ctx.Err() == nil {
			key, ok := r.nextWarmNeed()
			if !ok {
				break
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				r.refillOne(ctx, key)
			}()
		}
	}
}

// refillOne makes one warm container for key, which nextWarmNeed reserved.
func (r *Runtime) refillOne(ctx context.Context, key warmKey) {
	c, err := r.makeWarm(ctx, key)
	r.mu.Lock()
	r.warm.creating[key]--
	switch {
	case ctx.Err() != nil:
	case err != nil && r.unavailable(err):
		// containerd restarts: not the image's fault; try again shortly.
		r.mu.Unlock()
		r.log.V(1).Info("making a warm container: containerd is unavailable; retrying", "image", key.image, "err", err)
		time.AfterFunc(time.Second, func() {
			select {
			case r.warm.refillCh <- struct{}{}:
			default:
			}
		})
		return
	case err != nil:
		r.warm.broken[key] = err
		r.warm.notifyLocked()
		r.mu.Unlock()
		r.log.Error(err, "making a warm container; sandboxes of this image start the ordinary way", "image", key.image, "runtimeHandler", key.handler)
		return
	case r.keyInUse(key):
		r.warm.free[key] = append(r.warm.free[key], c)
		r.warm.notifyLocked()
		c = nil
	}
	if c != nil {
		// Not wanted (closing, or its key evicted): gone, so that its
		// monitor does not take the kill for an init that died.
		c.state = warmGone
	}
	r.mu.Unlock()
	if c != nil {
		r.discardWarm(c)
	}
}

// nextWarmNeed returns the most recent key short of warm containers (those
// being made count) and reserves one for the caller to make.
func (r *Runtime) nextWarmNeed() (warmKey, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.warm.keys) - 1; i >= 0; i-- {
		k := r.warm.keys[i]
		if r.warm.broken[k] == nil && len(r.warm.free[k])+r.warm.creating[k] < r.warm.perKey {
			r.warm.creating[k]++
			return k, true
		}
	}
	return warmKey{}, false
}

func (r *Runtime) keyInUse(key warmKey) bool {
	for _, k := range r.warm.keys {
		if k == key {
			return true
		}
	}
	return false
}

// makeWarm creates and starts a warm container for key and waits until its
// init calls (see create.go for the steps it shares with createCold). Once
// begun it runs to the end even if ctx ends, so that no half-made
// container is left; the caller removes what it no longer wants.
func (r *Runtime) makeWarm(ctx context.Context, key warmKey) (*warmContainer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx)
	// Warm: the image is on the node already (key.image is normalized).
	image, err := r.client.GetImage(ctx, key.image)
	if err != nil {
		return nil, fmt.Errorf("looking up image %s: %w", key.image, err)
	}
	ctx, done, err := r.withLease(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()
	// No warm container for an image none of whose sandboxes may run: they
	// fail in createCold, before anything is made (planContainer's checkUser).
	p, err := r.planContainer(ctx, key.image, image, key.handler, requireUnpacked)
	if err != nil {
		return nil, err
	}

	suffix := make([]byte, 8)
	_, _ = rand.Read(suffix)
	id := warmIDPrefix + hex.EncodeToString(suffix)
	dir := r.warmDir(id)
	ln, err := listenWarm(dir)
	if err != nil {
		return nil, err
	}
	defer func() { _ = ln.Close() }() // also removes the socket: nothing in the container can call it later
	// Warm: no sandbox's labels yet (the claim writes them), and the
	// init's spec (warmSpecOpts).
	labels := r.ownLabels(map[string]string{LabelWarm: "true", LabelNetwork: key.network})
	container, err := r.newContainer(ctx, id, p, labels, r.warmSpecOpts(id, dir, key.network))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	c := &warmContainer{id: id, key: key, container: container, imageConfig: p.config, user: p.user, claimDone: make(chan struct{})}
	if err := r.startInit(ctx, c, ln); err != nil {
		c.state = warmGone
		r.discardWarm(c)
		return nil, err
	}
	go r.monitorWarm(c)
	return c, nil
}

// listenWarm makes a new warm container's directory and listens on its
// socket (listenInit).
func listenWarm(dir string) (*dirListener, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	ln, err := listenInit(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("listening for the init: %w", err)
	}
	return ln, nil
}

// warmSpecOpts is the spec of warm container id: a sandbox's (specOpts)
// whose process is the init, with its socket's directory dir. What only a
// claim knows is left out: the command, environment, working directory,
// user and hostname (the init takes them in its start message), the memory
// and CPU limits and the sandbox's own pids limit (the agent's default
// until then); startWarm sets them.
func (r *Runtime) warmSpecOpts(id, dir, network string) []oci.SpecOpts {
	placeholder := api.SandboxSpec{Name: "sandbox", NetworkMode: network}
	return append(r.specOpts(placeholder, ocispec.ImageConfig{}, specs.User{}, id),
		oci.WithProcessArgs(sandboxinit.Binary),
		oci.WithEnv([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}),
		r.withInitMounts(dir),
		// The init sets the sandbox's hostname and then drops CAP_SYS_ADMIN
		// from the bounding set before the exec. The seccomp profile was made
		// for the sandbox's own capabilities; it gains sethostname only.
		oci.WithAddedCapabilities([]string{"CAP_SYS_ADMIN"}),
		withSeccompAllowed("sethostname"),
	)
}

// startInit starts the task of a new warm container, its init, and waits
// until the init calls on ln. On an error the caller removes the container.
func (r *Runtime) startInit(ctx context.Context, c *warmContainer, ln *dirListener) error {
	task, err := r.newTask(ctx, c.container)
	if err != nil {
		return err
	}
	c.task = task
	// Warm: its network is wired now, off the start path: a claim does
	// nothing network-related (egress.go).
	if c.exitCh, err = r.startTask(ctx, task, c.key.network, "attaching the network"); err != nil {
		return err
	}
	_ = ln.SetDeadline(time.Now().Add(initConnectTimeout))
	if c.conn, err = ln.Accept(); err != nil {
		return fmt.Errorf("waiting for the init to call: %w", err)
	}
	return nil
}

// withInitMounts mounts the init and the container's directory dir, read
// only, at sandboxinit.Binary and sandboxinit.SocketDir: a warm container's
// init calls the agent there, and every container's exec server
// (execserver.go).
func (r *Runtime) withInitMounts(dir string) oci.SpecOpts {
	return oci.WithMounts([]specs.Mount{
		{Destination: sandboxinit.Binary, Type: "bind", Source: r.initPath, Options: []string{"rbind", "ro", "nosuid", "nodev"}},
		{Destination: sandboxinit.SocketDir, Type: "bind", Source: dir, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
	})
}

func withSeccompAllowed(names ...string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil || s.Linux.Seccomp == nil {
			return nil
		}
		s.Linux.Seccomp.Syscalls = append(s.Linux.Seccomp.Syscalls, specs.LinuxSyscall{Names: names, Action: specs.ActAllow})
		return nil
	}
}

// startWarm starts spec's sandbox in a claimed warm container. When ok is
// false nothing of the sandbox ran and the container is gone: the caller
// creates the sandbox the ordinary way.
func (r *Runtime) startWarm(ctx context.Context, c *warmContainer, spec api.SandboxSpec) (status api.SandboxStatus, ok bool) {
	now := time.Now()
	status = api.SandboxStatus{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, ContainerID: c.id,
		CPUMillis: spec.CPUMillis, MemoryBytes: spec.MemoryBytes, Start: api.StartWarm}
	giveUp := func(err error) (api.SandboxStatus, bool) {
		r.log.Error(err, "starting a sandbox in a warm container; creating it the ordinary way", "sandbox", klogRef(spec), "container", c.id)
		r.finishClaim(c, warmFailed, status)
		r.discardWarm(c)
		return status, false
	}
	args, env, cwd := processOf(spec, c.imageConfig)
	msg := sandboxinit.Start{Args: args, Env: env, Cwd: cwd, UID: c.user.UID, GID: c.user.GID, Hostname: hostname(spec)}
	if err := r.claimWarm(ctx, c.id, r.sandboxLabels(spec, now), msg); err != nil {
		return giveUp(fmt.Errorf("labelling: %w", err))
	}
	if crashAt(stepWarmClaimed) {
		return r.crashWarm(c, status, stepWarmClaimed), true
	}
	r.mu.Lock()
	r.ids[spec.UID] = c.id
	r.mu.Unlock()
	// The memory and pids limits hold before the command runs (the warm
	// container was made with the agent's default pids limit). The CPU limit
	// follows the exec: under a small sandbox's quota (10m is 1ms per 100ms)
	// the init's last steps would take tens of milliseconds. The command runs
	// unlimited for the microseconds between, within the agent Pod's quota.
	if err := r.setLimits(ctx, c.id, c.task, limitsOf(0, spec.MemoryBytes, spec.PidsLimit)); err != nil {
		r.forgetID(spec.UID)
		return giveUp(err)
	}
	_ = c.conn.SetDeadline(now.Add(startTimeout))
	if err := json.NewEncoder(c.conn).Encode(msg); err != nil {
		r.forgetID(spec.UID)
		return giveUp(fmt.Errorf("sending the command to the init: %w", err))
	}
	if crashAt(stepWarmSent) {
		return r.crashWarm(c, status, stepWarmSent), true
	}
	var res sandboxinit.Result
	err := json.NewDecoder(c.conn).Decode(&res)
	_ = c.conn.Close()
	switch {
	case errors.Is(err, io.EOF):
		// The exec closed the connection: the command runs.
		started := time.Now()
		if crashAt(stepWarmConfirmed) {
			return r.crashWarm(c, status, stepWarmConfirmed), true
		}
		if err := r.setLimits(ctx, c.id, c.task, limitsOf(spec.CPUMillis, 0, 0)); err != nil {
			status.State, status.Reason, status.Message = api.StateFailed, api.ReasonCreateFailed, "setting the CPU limit: "+err.Error()
			status.FinishedAt = &started
			r.finishClaim(c, warmFailed, status)
			r.discardWarm(c)
			r.forgetID(spec.UID)
			return status, true
		}
		if crashAt(stepWarmLimited) {
			return r.crashWarm(c, status, stepWarmLimited), true
		}
		// See runCold: the label makes the start known to a restarted agent.
		r.markStartedSoon(c.container, started, spec)
		if crashAt(stepWarmLabelled) {
			return r.crashWarm(c, status, stepWarmLabelled), true
		}
		status.State, status.CreatedAt, status.StartedAt = api.StateRunning, &now, &started
		r.remember(status, true)
		r.finishClaim(c, warmStarted, status)
		return status, true
	case err == nil:
		err = errors.New(res.Error)
	default:
		err = fmt.Errorf("no answer from the init: %w", err)
	}
	// The command could not be started, or whether it did is unknown: the
	// container goes, so nothing of it runs, and the sandbox fails.
	status.State, status.Reason, status.Message = api.StateFailed, api.ReasonCreateFailed, "starting the command: "+err.Error()
	status.FinishedAt = &now
	r.log.Info("sandbox failed to start", "sandbox", klogRef(spec), "reason", status.Reason, "err", err)
	r.finishClaim(c, warmFailed, status)
	r.discardWarm(c)
	r.forgetID(spec.UID)
	return status, true
}

// crashWarm stops a warm start at step (fault injection) as the agent's
// death would: its connection to the init closes, nothing else is done.
func (r *Runtime) crashWarm(c *warmContainer, status api.SandboxStatus, step string) api.SandboxStatus {
	_ = c.conn.Close()
	return crashed(status, step)
}

func (r *Runtime) finishClaim(c *warmContainer, state warmState, st api.SandboxStatus) {
	r.mu.Lock()
	c.state, c.status = state, st
	r.mu.Unlock()
	close(c.claimDone)
}

// monitorWarm follows a warm container's process: the init's exit before a
// claim removes the container; the sandbox's exit after one is reported. A
// broken wait (containerd restarted) is not an exit (waitExit).
func (r *Runtime) monitorWarm(c *warmContainer) {
	es, end := r.waitExit(c.container, c.exitCh)
	if end == waitClosed {
		return
	}
	r.mu.Lock()
	state := c.state
	if state == warmFree {
		free := r.warm.free[c.key]
		for i, f := range free {
			if f == c {
				r.warm.free[c.key] = append(free[:i:i], free[i+1:]...)
				break
			}
		}
		c.state = warmGone
	}
	r.mu.Unlock()
	switch state {
	case warmFree:
		r.log.Info("a warm container's init exited; replacing it", "container", c.id, "exitCode", es.ExitCode(), "taskGone", end != waitExited)
		r.discardWarm(c)
		r.noteKey(c.key)
		return
	case warmGone:
		return
	}
	<-c.claimDone
	r.mu.Lock()
	state, st := c.state, c.status
	r.mu.Unlock()
	if state == warmStarted {
		r.endWait(c.container, st, es, end)
	}
}

// discardWarm kills and removes a warm container that runs no sandbox.
func (r *Runtime) discardWarm(c *warmContainer) {
	if c.conn != nil {
		_ = c.conn.Close()
	}
	ctx, cancel := context.WithTimeout(r.nsCtx(context.Background()), 30*time.Second)
	defer cancel()
	err := r.removeContainer(ctx, c.container)
	if err == nil || errdefs.IsNotFound(err) {
		return
	}
	if !r.unavailable(err) || r.ctx.Err() != nil {
		r.log.Error(err, "removing a warm container", "container", c.id)
		return
	}
	// containerd restarts: try again once it answers, in the background.
	go func() {
		for delay := reattachMin; ; delay = min(2*delay, reattachMax) {
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(delay):
			}
			ctx, cancel := context.WithTimeout(r.nsCtx(r.ctx), callTimeout)
			err := r.removeContainer(ctx, c.container)
			cancel()
			if err == nil || errdefs.IsNotFound(err) {
				return
			}
			if !r.unavailable(err) {
				r.log.Error(err, "removing a warm container", "container", c.id)
				return
			}
		}
	}()
}

// discardAllWarm stops the refiller and removes every free warm container
// (on Close).
func (r *Runtime) discardAllWarm() {
	r.warm.stop()
	<-r.warm.done
	r.mu.Lock()
	var all []*warmContainer
	for k, cs := range r.warm.free {
		for _, c := range cs {
			c.state = warmGone
			all = append(all, c)
		}
		delete(r.warm.free, k)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range all {
		wg.Add(1)
		go func() { defer wg.Done(); r.discardWarm(c) }()
	}
	wg.Wait()
}

// WaitWarm waits until a warm container for spec's image, runtime handler
// and network mode is free, or ctx ends.
func (r *Runtime) WaitWarm(ctx context.Context, spec api.SandboxSpec) error {
	key, err := r.keyOf(spec)
	if err != nil {
		return err
	}
	if !r.warm.enabled {
		return errors.New("warm containers are disabled")
	}
	if key.network == api.NetworkEgress && r.egress == nil {
		return r.egressUnavailable()
	}
	r.noteKey(key)
	for {
		r.mu.Lock()
		n, broken, changed := len(r.warm.free[key]), r.warm.broken[key], r.warm.changed
		r.mu.Unlock()
		switch {
		case n > 0:
			return nil
		case broken != nil:
			return broken
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

var _ runtime.WarmLister = &Runtime{}

// WarmContainers counts the free warm containers by image, runtime handler
// and network mode.
func (r *Runtime) WarmContainers() []api.WarmImage {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []api.WarmImage{}
	for _, k := range r.warm.keys {
		out = append(out, api.WarmImage{Image: k.image, RuntimeHandler: k.handler, NetworkMode: k.network, Count: len(r.warm.free[k])})
	}
	return out
}
