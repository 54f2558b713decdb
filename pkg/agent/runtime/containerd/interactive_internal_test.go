package containerd

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// TestOpenRootChecksTheProcess: Root's process is the container's only
// while it is in the container's cgroup: a live process elsewhere (a pid
// reused by another) is refused as finished, as is a pid no process has;
// one in a cgroup ending with the container's opens its root.
func TestOpenRootChecksTheProcess(t *testing.T) {
	r := &Runtime{hostProc: "/proc"}
	self := uint32(os.Getpid())
	if f, err := r.openRoot("fsbx-not-this-process", self); !errors.Is(err, runtime.ErrFinished) {
		if f != nil {
			f.Close()
		}
		t.Errorf("openRoot of a process outside the container's cgroup: %v, want ErrFinished", err)
	}
	if _, err := r.openRoot("fsbx-any", 1<<30); !errors.Is(err, runtime.ErrFinished) {
		t.Errorf("openRoot of a pid no process has: %v, want ErrFinished", err)
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	leaf := ""
	for _, line := range strings.Split(string(data), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && parts[2] != "/" {
			leaf = filepath.Base(parts[2])
		}
	}
	if leaf == "" {
		t.Skip("this process is in no cgroup of its own")
	}
	root, err := r.openRoot(leaf, self)
	if err != nil {
		t.Fatalf("openRoot of this process, in cgroup %s: %v", leaf, err)
	}
	defer root.Close()
	got, err := root.Stat()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.Stat("/")
	if !os.SameFile(got, want) {
		t.Error("the root opened is not this process's /")
	}
}

func TestInCgroup(t *testing.T) {
	v1 := "12:pids:/kubepods/pod1/fsbx-a\n11:memory:/kubepods/pod1/fsbx-a\n1:name=systemd:/\n"
	v2 := "0::/../../fsbx-b\n"
	systemd := "0::/kubepods.slice/kubepods-pod1.slice/fsbx-c.scope\n"
	cases := []struct {
		file, leaf string
		want       bool
	}{
		{v1, "fsbx-a", true}, {v1, "fsbx-a2", false}, {v1, "pod1", false},
		{v2, "fsbx-b", true}, {v2, "b", false},
		{systemd, "fsbx-c.scope", true}, {systemd, "fsbx-c", false},
		{"", "fsbx-a", false},
	}
	for _, tc := range cases {
		if got := inCgroup([]byte(tc.file), tc.leaf); got != tc.want {
			t.Errorf("inCgroup(%q, %q) = %v", tc.file, tc.leaf, got)
		}
	}
	r := &Runtime{systemd: true, cgroupParent: "kubepods-pod1.slice"}
	if leaf := r.cgroupLeaf("fsbx-c"); leaf != "fsbx-c.scope" {
		t.Errorf("systemd leaf %q", leaf)
	}
}
