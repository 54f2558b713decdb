package containerd

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CFS quota bounds, in microseconds, as the kernel enforces them for
// cpu.cfs_quota_us (cgroup v1) and cpu.max (v2): a quota below 1ms, or above
// max_cfs_runtime (2^44-1 µs, "more than 203 days"), is refused with EINVAL.
const (
	// minCPUQuota is the smallest quota, as kubelet's MinQuotaPeriod: kubelet
	// also raises a smaller quota (a limit below 10m) to it.
	minCPUQuota = 1000
	// maxCPUQuota is the kernel's max_cfs_runtime; 1024 CPUs (the API's
	// maximum) are 102,400,000 µs per 100ms period, far below it.
	maxCPUQuota = 1<<44 - 1
)

// cpuQuota is the CFS quota of a CPU limit over cpuPeriod, clamped to what
// the kernel accepts (without overflow for any positive cpuMillis).
func cpuQuota(cpuMillis int64) int64 {
	if cpuMillis >= maxCPUQuota/cpuPeriod*1000 {
		return maxCPUQuota
	}
	return max(cpuMillis*cpuPeriod/1000, minCPUQuota)
}

// limitsOf are a sandbox's CPU, memory and pids limits as OCI resources
// (each only if positive); nil when none is. The memory limit is used as it
// is: the kernel rounds it down to whole pages and caps it at its own maximum
// (PAGE_COUNTER_MAX pages, far above the API's 64Ti), without an error.
func limitsOf(cpuMillis, memoryBytes, pids int64) *specs.LinuxResources {
	if cpuMillis <= 0 && memoryBytes <= 0 && pids <= 0 {
		return nil
	}
	res := &specs.LinuxResources{}
	if cpuMillis > 0 {
		quota, period := cpuQuota(cpuMillis), uint64(cpuPeriod)
		res.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if memoryBytes > 0 {
		res.Memory = &specs.LinuxMemory{Limit: &memoryBytes}
	}
	if pids > 0 {
		res.Pids = &specs.LinuxPids{Limit: &pids}
	}
	return res
}

// setLimits gives a running container new CPU, memory and pids limits. It writes
// the container's cgroup directly, which takes microseconds, and falls back
// to the OCI runtime's update (a process spawn) where the cgroup filesystem
// is not writable from here.
func (r *Runtime) setLimits(ctx context.Context, id string, task client.Task, res *specs.LinuxResources) error {
	if res == nil {
		return nil
	}
	direct := r.writeCgroup(id, res)
	if direct == nil {
		return nil
	}
	r.cgroupWriteFailed.Do(func() {
		r.log.Info("cannot write sandbox cgroups directly; setting limits through the OCI runtime, which is slower (is the node's cgroupfs mounted writable?)", "err", direct.Error())
	})
	if err := task.Update(ctx, client.WithResources(res)); err != nil {
		return fmt.Errorf("setting limits (cgroup write: %v): %w", direct, err)
	}
	return nil
}

func (r *Runtime) writeCgroup(id string, res *specs.LinuxResources) error {
	scope := "fsbx-" + strings.TrimPrefix(id, idPrefix) + ".scope"
	if cgroups.Mode() == cgroups.Unified {
		var (
			m   *cgroup2.Manager
			err error
		)
		if r.systemd {
			m, err = cgroup2.LoadSystemd(r.cgroupParent, scope)
		} else {
			m, err = cgroup2.Load(r.cgroupPath(id))
		}
		if err != nil {
			return err
		}
		v2 := &cgroup2.Resources{}
		if res.CPU != nil {
			v2.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(res.CPU.Quota, res.CPU.Period)}
		}
		if res.Memory != nil {
			v2.Memory = &cgroup2.Memory{Max: res.Memory.Limit}
		}
		if res.Pids != nil {
			v2.Pids = &cgroup2.Pids{Max: *res.Pids.Limit}
		}
		return m.Update(v2)
	}
	path := cgroup1.StaticPath(r.cgroupPath(id))
	if r.systemd {
		path = cgroup1.Slice(r.cgroupParent, scope)
	}
	for _, sub := range []struct {
		name cgroup1.Name
		set  bool
		res  *specs.LinuxResources
	}{
		{cgroup1.Cpu, res.CPU != nil, &specs.LinuxResources{CPU: res.CPU}},
		{cgroup1.Memory, res.Memory != nil, &specs.LinuxResources{Memory: res.Memory}},
		{cgroup1.Pids, res.Pids != nil, &specs.LinuxResources{Pids: res.Pids}},
	} {
		if !sub.set {
			continue
		}
		cg, err := cgroup1.Load(path, cgroup1.WithHierarchy(cgroup1.SingleSubsystem(cgroup1.Default, sub.name)))
		if err != nil {
			return err
		}
		if err := cg.Update(sub.res); err != nil {
			return err
		}
	}
	return nil
}
