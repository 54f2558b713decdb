package containerd

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
)

// Ephemeral storage.
//
// A sandbox with EphemeralStorageBytes may write that much to its writable
// layer (the container's snapshot) and its log together. One goroutine of
// the runtime measures every running sandbox that has such a limit, one
// after the other, every StorageCheckPeriod (from the end of a pass to the
// start of the next, so a slow pass never piles up): the snapshotter's usage
// of the container's snapshot (for overlayfs, a walk of its upper
// directory) plus the size of its log files. A sandbox over its limit is
// stopped: the reason and the figures are recorded on its container first
// (LabelStopReason, LabelStopMessage), then its processes are killed, so
// its final status says why even when it is read by an agent started
// later (finalStatus). A sandbox may overshoot its limit by what it writes
// within one period.

// Labels of the storage limit and of a stop the runtime decided.
const (
	// LabelEphemeralStorage is the sandbox's ephemeral storage limit in bytes
	// (only when it has one).
	LabelEphemeralStorage = "fast-sandbox.io/ephemeral-storage-bytes"
	// LabelStopReason and LabelStopMessage are the reason and message of a
	// sandbox the runtime stopped (e.g. ReasonEphemeralStorageExceeded),
	// written before the kill; its final status carries them.
	LabelStopReason  = "fast-sandbox.io/stop-reason"
	LabelStopMessage = "fast-sandbox.io/stop-message"
)

// DefaultStorageCheckPeriod is the default of Config.StorageCheckPeriod.
const DefaultStorageCheckPeriod = 2 * time.Second

// storageLoop checks the sandboxes' storage until the runtime closes.
func (r *Runtime) storageLoop() {
	t := time.NewTimer(r.cfg.StorageCheckPeriod)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.checkStorage(r.ctx)
		t.Reset(r.cfg.StorageCheckPeriod)
	}
}

// checkStorage measures each running sandbox of this agent that has a
// storage limit and stops those above it.
func (r *Runtime) checkStorage(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, callTimeout)
	cs, err := r.client.Containers(lctx, fmt.Sprintf("labels.%q==%q,labels.%q==%q,labels.%q",
		LabelManagedBy, managedBy, LabelAgent, r.cfg.Agent, LabelEphemeralStorage))
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.log.V(1).Info("listing sandboxes to check their storage", "err", err)
		}
		return
	}
	for _, c := range cs {
		if ctx.Err() != nil {
			return
		}
		info, err := c.Info(ctx, client.WithoutRefreshedMetadata)
		if err != nil {
			continue
		}
		uid := info.Labels[LabelUID]
		var limit int64
		if _, err := fmt.Sscan(info.Labels[LabelEphemeralStorage], &limit); err != nil || limit <= 0 || !r.running(uid) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		layer, logs, err := r.storageUsed(cctx, info.ID, info.Snapshotter, info.SnapshotKey)
		if err == nil && layer+logs > limit {
			err = r.stopForStorage(cctx, c, info.Labels, layer, logs, limit)
		}
		cancel()
		if err != nil && ctx.Err() == nil && !errdefs.IsNotFound(err) {
			r.log.Error(err, "checking a sandbox's ephemeral storage", "sandbox", info.Labels[LabelNamespace]+"/"+info.Labels[LabelName], "container", info.ID)
		}
	}
}

// running says whether the runtime knows the sandbox uid as running or
// paused (a paused sandbox writes nothing, but it is measured and stopped
// like any: the agent may write its files).
func (r *Runtime) running(uid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.known[uid]
	return ok && alive(st.State)
}

// storageUsed is what a container's writable layer and log hold.
func (r *Runtime) storageUsed(ctx context.Context, id, snapshotter, key string) (layer, logs int64, err error) {
	if key != "" {
		u, err := r.client.SnapshotService(snapshotter).Usage(ctx, key)
		if err != nil {
			return 0, 0, fmt.Errorf("measuring the writable layer of %s: %w", id, err)
		}
		layer = u.Size
	}
	if logs, err = sandboxlog.Size(r.logPath(id)); err != nil {
		return 0, 0, fmt.Errorf("measuring the log of %s: %w", id, err)
	}
	return layer, logs, nil
}

// stopForStorage records why a sandbox is stopped, then kills it.
func (r *Runtime) stopForStorage(ctx context.Context, c client.Container, labels map[string]string, layer, logs, limit int64) error {
	msg := fmt.Sprintf("the sandbox was stopped: it used %s of ephemeral storage (writable layer %d bytes, logs %d bytes), above its limit of %s",
		bytesMiB(layer+logs), layer, logs, bytesMiB(limit))
	r.log.Info("stopping a sandbox above its ephemeral storage limit", "sandbox", labels[LabelNamespace]+"/"+labels[LabelName],
		"container", c.ID(), "layerBytes", layer, "logBytes", logs, "limitBytes", limit)
	if _, err := c.SetLabels(ctx, map[string]string{LabelStopReason: api.ReasonEphemeralStorageExceeded, LabelStopMessage: msg}); err != nil {
		return fmt.Errorf("recording why sandbox %s is stopped: %w", labels[LabelUID], err)
	}
	task, err := c.Task(ctx, nil)
	if err != nil {
		return fmt.Errorf("loading task of %s: %w", c.ID(), err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil {
		return fmt.Errorf("killing sandbox %s: %w", labels[LabelUID], err)
	}
	thawKilled(ctx, task)
	return nil
}

// stopReason is the reason and message the runtime recorded when it
// stopped a container (LabelStopReason), if it did.
func stopReason(ctx context.Context, c client.Container) (reason, message string) {
	labels, err := c.Labels(ctx)
	if err != nil {
		return "", ""
	}
	return labels[LabelStopReason], labels[LabelStopMessage]
}

func bytesMiB(n int64) string { return fmt.Sprintf("%d bytes (%.1f MiB)", n, float64(n)/(1<<20)) }
