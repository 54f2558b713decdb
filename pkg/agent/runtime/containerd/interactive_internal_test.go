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

func TestOCICause(t *testing.T) {
	for _, tc := range []struct {
		name, err, want string
		code            int
	}{
		{"runc, not in PATH", `failed to start exec "e": OCI runtime exec failed: exec failed: unable to start container process: exec: "x": executable file not found in $PATH: unknown`,
			`exec: "x": executable file not found in $PATH`, ExitCommandNotFound},
		{"runc, no such file", `OCI runtime exec failed: exec failed: unable to start container process: exec: "/x": stat /x: no such file or directory: unknown`,
			`exec: "/x": stat /x: no such file or directory`, ExitCommandNotFound},
		{"crun", "OCI runtime exec failed: executable file `x` not found in $PATH: No such file or directory: unknown",
			"executable file `x` not found in $PATH: No such file or directory", ExitCommandNotFound},
		{"not executable", `OCI runtime exec failed: exec failed: unable to start container process: exec /etc/passwd: permission denied: unknown`,
			`exec /etc/passwd: permission denied`, ExitCommandNotExecutable},
		{"another runtime's words", "no such program x", "no such program x", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := errors.New(tc.err)
			if got := ociCause(err); got != tc.want {
				t.Errorf("ociCause = %q, want %q", got, tc.want)
			}
			if got := startFailedCode(err); got != tc.code {
				t.Errorf("startFailedCode = %d, want %d", got, tc.code)
			}
		})
	}
}
