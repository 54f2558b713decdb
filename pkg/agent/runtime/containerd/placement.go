package containerd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// placement is where sandboxes go: the agent Pod's cgroup (so their usage is
// the Pod's and can never exceed its limits) and its network namespace.
type placement struct {
	cgroupParent string
	systemd      bool
	netNS        string
}

// findPodPlacement finds the agent Pod's cgroup and network namespace. With
// the Pod's UID it reads them from the Pod's sandbox ("pause") container in
// containerd, which works whatever the cgroup version and driver and even
// when the agent sees a private cgroup namespace. Without it, it takes the
// parent of the agent's own cgroup from /proc/self/cgroup. An explicit
// cgroup parent wins over both.
func findPodPlacement(ctx context.Context, c *client.Client, podUID, explicit string) (placement, error) {
	var p placement
	if podUID != "" {
		cs, err := c.Containers(ctx,
			fmt.Sprintf(`labels."io.kubernetes.pod.uid"==%q,labels."io.cri-containerd.kind"=="sandbox"`, podUID))
		if err != nil {
			return p, fmt.Errorf("looking up the sandbox container of Pod %s: %w", podUID, err)
		}
		if len(cs) == 0 && explicit == "" {
			return p, fmt.Errorf("containerd has no sandbox container for Pod %s: is the containerd socket the one kubelet uses, and the namespace %q?", podUID, "k8s.io")
		}
		if len(cs) > 0 {
			spec, err := cs[0].Spec(ctx)
			if err != nil {
				return p, fmt.Errorf("reading the spec of Pod %s's sandbox container: %w", podUID, err)
			}
			if spec.Linux != nil {
				p.cgroupParent, p.systemd = parentOf(spec.Linux.CgroupsPath)
				for _, ns := range spec.Linux.Namespaces {
					if ns.Type == specs.NetworkNamespace {
						p.netNS = ns.Path
					}
				}
			}
		}
	}
	if explicit != "" {
		p.cgroupParent, p.systemd = explicit, strings.HasSuffix(explicit, ".slice")
	}
	if p.cgroupParent == "" {
		own, err := ownCgroup()
		if err != nil {
			return p, err
		}
		if own == "/" || own == "" {
			return p, fmt.Errorf("cannot tell the agent Pod's cgroup: /proc/self/cgroup says %q (a private cgroup namespace?); set the Pod UID or --cgroup-parent", own)
		}
		p.cgroupParent, p.systemd = parentOf(own)
	}
	return p, nil
}

// parentOf returns the parent of a container's cgroupsPath: a directory for
// cgroupfs ("/kubepods/burstable/pod<uid>/<id>"), the slice for systemd
// ("kubepods-burstable-pod<uid>.slice:cri-containerd:<id>").
func parentOf(cgroupsPath string) (string, bool) {
	if parts := strings.Split(cgroupsPath, ":"); len(parts) == 3 {
		return parts[0], true
	}
	return filepath.Dir(cgroupsPath), false
}

// ownCgroup returns the agent's own cgroup: the memory controller's on v1,
// the unified one on v2.
func ownCgroup() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	var unified string
	s := bufio.NewScanner(f)
	for s.Scan() {
		parts := strings.SplitN(s.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, ctrl := range strings.Split(parts[1], ",") {
			if ctrl == "memory" {
				return parts[2], nil
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = parts[2]
		}
	}
	return unified, s.Err()
}

// oomKilled says whether the kernel's OOM killer killed a process of the
// sandbox's cgroup. The cgroup stays until the task is deleted.
func (r *Runtime) oomKilled(id string) bool {
	if cgroups.Mode() == cgroups.Unified {
		var (
			m   *cgroup2.Manager
			err error
		)
		if r.systemd {
			m, err = cgroup2.LoadSystemd(r.cgroupParent, "fsbx-"+strings.TrimPrefix(id, idPrefix)+".scope")
		} else {
			m, err = cgroup2.Load(r.cgroupPath(id))
		}
		if err != nil {
			return false
		}
		st, err := m.Stat()
		return err == nil && st.GetMemoryEvents().GetOomKill() > 0
	}
	path := cgroup1.StaticPath(r.cgroupPath(id))
	if r.systemd {
		path = cgroup1.Slice(r.cgroupParent, "fsbx-"+strings.TrimPrefix(id, idPrefix)+".scope")
	}
	cg, err := cgroup1.Load(path, cgroup1.WithHierarchy(cgroup1.SingleSubsystem(cgroup1.Default, cgroup1.Memory)))
	if err != nil {
		return false
	}
	st, err := cg.Stat(cgroup1.IgnoreNotExist)
	return err == nil && st.GetMemoryOomControl().GetOomKill() > 0
}
