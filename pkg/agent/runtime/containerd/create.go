package containerd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
)

// Making a container.
//
// A container is made the same way whether it is created for a sandbox
// (createCold) or made warm ahead of one (makeWarm), in these steps; the
// callers differ only where they say so:
//
//  1. its image is found (cold may pull it) and a lease taken (withLease);
//  2. planContainer reads and checks what it is made from: the image
//     unpacked (cold unpacks, warm requires it), its config, its numeric
//     user (root refused under RunAsNonRoot), the OCI runtime of its handler;
//  3. newContainer makes it, with a root filesystem of its own (newRootfs:
//     a snapshot and, with user namespaces, a range of host ids), the
//     caller's labels and spec; a container not made gives these back;
//  4. newTask creates its task, whose output goes to its bounded log;
//  5. startTask wires an Egress container's network, waits on the task and
//     starts it.
//
// From step 3 on a failure removes the container, with its snapshot, task,
// network and range (removeContainer): cold at once, warm through
// discardWarm, which retries while containerd restarts.

// createError is a failed step of making a container, with the reason a
// sandbox's status gives it (coldFailed). Any other error of a step is
// ReasonCreateFailed, or containerd's absence (failedCreate).
type createError struct {
	reason string
	// final: reported with reason as it is, never taken for containerd's
	// absence: the cause is known, or the command may have run.
	// ReasonRuntimeUnavailable is always containerd's absence.
	final bool
	err   error
}

func (e *createError) Error() string { return e.err.Error() }
func (e *createError) Unwrap() error { return e.err }

// withReason is err with the reason a sandbox's status gives it, unless
// containerd's absence explains it.
func withReason(reason string, err error) error { return &createError{reason: reason, err: err} }

// finalError is err with the reason a sandbox's status gives it, as it is.
func finalError(reason string, err error) error {
	return &createError{reason: reason, final: true, err: err}
}

// coldFailed is the status of a sandbox whose cold create failed with err
// (see createError).
func (r *Runtime) coldFailed(spec api.SandboxSpec, id string, err error) api.SandboxStatus {
	var ce *createError
	switch {
	case !errors.As(err, &ce):
		return r.failedCreate(spec, id, api.ReasonCreateFailed, err)
	case ce.reason == api.ReasonRuntimeUnavailable:
		return r.createUnavailable(spec, id, err)
	case ce.final:
		return r.failed(spec, id, ce.reason, err)
	}
	return r.failedCreate(spec, id, ce.reason, err)
}

// failStep, when set (by tests only), is asked once each step of making a
// container (cold or warm) has succeeded; an error fails the step with it,
// as if containerd had refused it, and the create cleans up as it would.
// Atomic: the refiller makes warm containers in goroutines of its own.
var failStep atomic.Pointer[func(step string) error]

// Steps of making a container at which failStep is asked.
const (
	stepPlanned   = "make: container planned"
	stepContainer = "make: root filesystem made, container not created" // a NewContainerOpts
	stepTask      = "make: task created"
	stepAttached  = "make: network attached"
	stepWaited    = "make: task waited on"
	stepStarted   = "make: task started"
)

// injectAfter is err, or when the step succeeded, failStep's error for it.
func injectAfter(step string, err error) error {
	if err != nil {
		return err
	}
	if f := failStep.Load(); f != nil {
		return (*f)(step)
	}
	return nil
}

// createLeasePrefix names the lease a creation holds (withLease).
const createLeasePrefix = "fast-sandbox-create-"

// withLease keeps containerd's GC away from what a creation uses until the
// container references it. The lease carries the agent's labels, so that
// the leases of an agent that died while creating are deleted when it is
// gone (sweepCreateLeases): until then they hold what they held (a
// snapshot made for a container never created), and containerd's GC,
// which runs after a deletion, not when a lease expires, could leave that
// for good.
func (r *Runtime) withLease(ctx context.Context) (context.Context, func(context.Context) error, error) {
	expiry := time.Minute
	if r.userns {
		expiry = 10 * time.Minute // the remapped copy of a large image takes a while
	}
	ctx, done, err := r.client.WithLease(ctx, leases.WithID(createLeasePrefix+rand.Text()), leases.WithExpiration(expiry),
		leases.WithLabels(r.ownLabels(map[string]string{})))
	if err != nil {
		return ctx, nil, fmt.Errorf("taking a containerd lease: %w", err)
	}
	return ctx, done, nil
}

// sweepCreateLeases deletes the creation leases matching filter, which
// names an agent that no longer runs (the previous process of this one, or
// an agent Pod that is gone), and waits for containerd's GC to remove what
// only they held.
func (r *Runtime) sweepCreateLeases(ctx context.Context, filter string) {
	ls := r.client.LeasesService()
	all, err := ls.List(ctx, filter)
	if err != nil {
		r.log.Error(err, "listing the leases of creations")
		return
	}
	for _, l := range all {
		if !strings.HasPrefix(l.ID, createLeasePrefix) {
			continue
		}
		r.log.Info("deleting the lease of a creation its agent did not finish", "lease", l.ID, "agent", l.Labels[LabelAgent], "agentPodUID", l.Labels[LabelAgentPodUID])
		if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil && !errdefs.IsNotFound(err) {
			r.log.Error(err, "deleting the lease of a creation its agent did not finish", "lease", l.ID)
		}
	}
}

// containerPlan is what a container is made from, read and checked before
// anything of it is made (planContainer).
type containerPlan struct {
	image   client.Image
	config  ocispec.ImageConfig     // the image's
	user    specs.User              // the image's USER
	runtime client.NewContainerOpts // the OCI runtime of the handler
}

// unpackPolicy is what planContainer does with an image that is not
// unpacked for the snapshotter.
type unpackPolicy int

const (
	// unpackMissing unpacks it (cold: a pulled image, or one the CRI
	// unpacked for another snapshotter); an unanswered check is passed.
	unpackMissing unpackPolicy = iota
	// requireUnpacked fails, as does an unanswered check (warm: nothing is
	// unpacked in the background; its sandboxes start cold, which unpacks).
	requireUnpacked
)

// planContainer reads and checks image ref for a container of the runtime
// handler.
func (r *Runtime) planContainer(ctx context.Context, ref string, image client.Image, handler string, unpack unpackPolicy) (containerPlan, error) {
	unpacked, err := image.IsUnpacked(ctx, r.cfg.Snapshotter)
	switch {
	case unpack == requireUnpacked && (err != nil || !unpacked):
		return containerPlan{}, fmt.Errorf("image %s is not unpacked for %s", ref, r.cfg.Snapshotter)
	case unpack == unpackMissing && err == nil && !unpacked:
		if err := image.Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return containerPlan{}, fmt.Errorf("unpacking %s: %w", ref, err)
		}
	}
	imageConfig, err := image.Spec(ctx)
	if err != nil {
		return containerPlan{}, fmt.Errorf("reading the config of image %s: %w", ref, err)
	}
	user, err := numericUser(imageConfig.Config.User)
	if err != nil {
		return containerPlan{}, fmt.Errorf("image %s: %w", ref, err)
	}
	if err := r.checkUser(ref, imageConfig.Config.User, user); err != nil {
		return containerPlan{}, finalError(api.ReasonRunAsNonRootViolation, err)
	}
	runtimeOpt, err := r.runtimeOpt(handler)
	if err != nil {
		return containerPlan{}, err
	}
	p := containerPlan{image: image, config: imageConfig.Config, user: user, runtime: runtimeOpt}
	return p, injectAfter(stepPlanned, nil)
}

// handlerOf is a sandbox's runtime handler: its own, or the default.
func (r *Runtime) handlerOf(spec api.SandboxSpec) string {
	if spec.RuntimeHandler != "" {
		return spec.RuntimeHandler
	}
	return r.cfg.DefaultRuntimeHandler
}

// runtimeOpt selects the OCI runtime of a runtime handler.
func (r *Runtime) runtimeOpt(handler string) (client.NewContainerOpts, error) {
	binary, ok := r.cfg.RuntimeHandlers[handler]
	if !ok {
		return nil, fmt.Errorf("unknown runtime handler %q (this agent has %s)", handler, strings.Join(sortedKeys(r.cfg.RuntimeHandlers), ", "))
	}
	return client.WithRuntime("io.containerd.runc.v2", &runcoptions.Options{BinaryName: binary, SystemdCgroup: r.systemd}), nil
}

// newContainer makes container id from p, with labels and spec; its root
// filesystem (newRootfs) adds its own to both. A container not made gives
// its range of host ids back at once; its snapshot, made under the lease,
// goes with the lease. An error of newRootfs is returned as it is, one of
// containerd's wrapped ("creating container: ..."; errdefs still tell
// AlreadyExists).
func (r *Runtime) newContainer(ctx context.Context, id string, p containerPlan, labels map[string]string, spec []oci.SpecOpts) (client.Container, error) {
	fs, err := r.newRootfs(ctx, id, p.image)
	if err != nil {
		return nil, err
	}
	container, err := r.client.NewContainer(ctx, id,
		client.WithContainerLabels(withLabels(labels, fs.labels)),
		client.WithImageName(p.image.Name()),
		client.WithSnapshotter(r.cfg.Snapshotter),
		fs.snapshot,
		p.runtime,
		client.WithNewSpec(append(spec, fs.spec...)...),
		func(context.Context, *client.Client, *containers.Container) error {
			return injectAfter(stepContainer, nil)
		},
	)
	if err != nil {
		r.abandon(ctx, fs)
		return nil, fmt.Errorf("creating container: %w", err)
	}
	return container, nil
}

// newTask creates a container's task, its output going to the container's
// bounded log: the shim runs the installed sandbox init as the logging
// binary, which has opened the log when the task is created. On an error
// the caller removes the container, and with it any task.
func (r *Runtime) newTask(ctx context.Context, c client.Container) (client.Task, error) {
	task, err := r.createTask(ctx, c)
	if err = injectAfter(stepTask, err); err != nil {
		return nil, fmt.Errorf("creating task: %w", err)
	}
	return task, nil
}

func (r *Runtime) createTask(ctx context.Context, c client.Container) (client.Task, error) {
	path := r.logPath(c.ID())
	if r.initPath == "" {
		return c.NewTask(ctx, cio.LogFile(path))
	}
	task, err := c.NewTask(ctx, cio.BinaryIO(r.initPath, sandboxlog.Args(path, r.cfg.LogMaxBytes, r.cfg.LogMaxFiles)))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return task, fmt.Errorf("the sandbox's logger did not open its log: %w", err)
	}
	return task, nil
}

// startTask starts a new container's task. An Egress container's network
// is wired first: the task's namespace exists (the OCI runtime made it with
// the task's process, which waits to start), so the process never runs
// without it; attaching words the failure ("attaching the network"). The
// task is then waited on, until the runtime closes, and started. A failed
// start is final, unless it never reached containerd: the process may run.
// On an error the caller removes the container.
func (r *Runtime) startTask(ctx context.Context, task client.Task, network, attaching string) (<-chan client.ExitStatus, error) {
	if network == api.NetworkEgress {
		if err := injectAfter(stepAttached, r.attachEgress(task.ID(), task)); err != nil {
			return nil, fmt.Errorf("%s: %w", attaching, err)
		}
	}
	exitCh, err := task.Wait(r.ctx)
	if err = injectAfter(stepWaited, err); err != nil {
		return nil, fmt.Errorf("waiting on task: %w", err)
	}
	if err := injectAfter(stepStarted, task.Start(ctx)); err != nil {
		err = fmt.Errorf("starting task: %w", err)
		return nil, &createError{reason: api.ReasonCreateFailed, final: !notDialed(err), err: err}
	}
	return exitCh, nil
}
