package containerd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestExecServersDoesNotWaitForASlot: the count the agent's status reports
// is read while a slot is locked (its server starting or stopping, which
// takes seconds), not after.
func TestExecServersDoesNotWaitForASlot(t *testing.T) {
	r := &Runtime{}
	sl := r.execSlot("fsbx-busy")
	sl.mu.Lock() // as startExecServer holds it
	defer sl.mu.Unlock()
	r.execServers.live.Add(1)
	got := make(chan int, 1)
	go func() { got <- r.ExecServers() }()
	select {
	case n := <-got:
		if n != 1 {
			t.Errorf("ExecServers() = %d, want 1", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ExecServers waited for a locked slot")
	}
}

// TestInstallFileNeverReplaces: agents sharing a node's state directory
// install the init while containers bind-mount it; an installed file is
// never renamed over (a bind mount of the unlinked file fails with ENOENT,
// as a chaos run saw), and another version goes beside it.
func TestInstallFileNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(src, []byte("version 1"), 0o644); err != nil {
		t.Fatal(err)
	}
	inode := func(p string) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	p1, err := installFile(src, dir, "sandbox-init")
	if err != nil {
		t.Fatal(err)
	}
	first := inode(p1)
	// Another agent (or this one restarted) installs the same binary.
	again, err := installFile(src, dir, "sandbox-init")
	if err != nil || again != p1 || inode(again) != first {
		t.Errorf("the same content installed again: %s (inode %d), %v; want %s (inode %d) left alone", again, inode(again), err, p1, first)
	}
	if fi, err := os.Stat(p1); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("installed file: %v, %v; want mode 0755", fi, err)
	}
	// A new version goes beside the old one, which stays as it was.
	if err := os.WriteFile(src, []byte("version 2"), 0o644); err != nil {
		t.Fatal(err)
	}
	p2, err := installFile(src, dir, "sandbox-init")
	if err != nil || p2 == p1 {
		t.Fatalf("a new version installed as %s, %v; want a path other than %s", p2, err, p1)
	}
	if got, _ := os.ReadFile(p1); string(got) != "version 1" || inode(p1) != first {
		t.Errorf("the old version became %q (inode %d, was %d)", got, inode(p1), first)
	}
	if got, _ := os.ReadFile(p2); string(got) != "version 2" {
		t.Errorf("the new version holds %q", got)
	}
	// No temporary file is left.
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("the directory holds %d entries, want the two versions", len(ents))
	}
}
