package sandboxfs

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fixture is a fake sandbox root next to a host directory it must never
// reach:
//
//	base/outside/          host-only: secret (hostSecret), host-only-<rand>
//	base/root/             the sandbox root
//	  hello.txt            "hello\n", 0644
//	  etc/passwd           fakePasswd (abs -> /etc/passwd must find this one)
//	  sub/x, sub/deep/nested/file, sub/rel2 -> ../sub/x
//	  outside/secret       decoyContent: where clamped escapes land
//	  bin.dat              every byte value, repeated
//	  big.dat              bigSize random bytes
//	  data.txt/            a directory named like a file
//	  fifo, sock           a FIFO and a Unix socket
//	  null                 character device 1:3 (when mknod is allowed)
//	  abs -> /etc/passwd   up -> ../../../../..   rel -> ../sub/x
//	  dangling -> /nonexistent   loop1 <-> loop2
//	  escape_abs -> base/outside/secret (host absolute path)
//	  escape_rel -> ../outside/secret   (host relative path, from root)
//	  linkdir -> base/outside           linkdir_rel -> ../outside
//	  proc/                read-only bind mount of /proc (when mount is allowed)
//	  magic -> /proc/self/root
type fixture struct {
	base, root, outside string
	hostSecret          string
	hostOnlyName        string
	rootFile            *os.File
	procMounted         bool
	deviceMade          bool
	outsideBefore       []string
}

const (
	fakePasswd   = "root:x:0:0:fake sandbox root:/root:/bin/sh\n"
	decoyContent = "decoy inside the root\n"
	bigSize      = 1<<20 + 1
)

func binaryContent() []byte {
	b := make([]byte, 4096)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	base := tb.TempDir()
	var rb [8]byte
	if _, err := rand.Read(rb[:]); err != nil {
		tb.Fatal(err)
	}
	tag := hex.EncodeToString(rb[:])
	fx := &fixture{
		base:         base,
		root:         filepath.Join(base, "root"),
		outside:      filepath.Join(base, "outside"),
		hostSecret:   "HOST-SECRET-" + tag,
		hostOnlyName: "host-only-" + tag,
	}
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	mkdir := func(p string) { must(os.MkdirAll(p, 0o755)) }
	write := func(p string, data []byte) {
		mkdir(filepath.Dir(p))
		must(os.WriteFile(p, data, 0o644))
		must(os.Chmod(p, 0o644)) // whatever the umask
	}
	link := func(target, name string) { must(os.Symlink(target, filepath.Join(fx.root, name))) }

	write(filepath.Join(fx.outside, "secret"), []byte(fx.hostSecret))
	write(filepath.Join(fx.outside, fx.hostOnlyName), []byte(fx.hostSecret))

	r := fx.root
	write(filepath.Join(r, "hello.txt"), []byte("hello\n"))
	write(filepath.Join(r, "etc", "passwd"), []byte(fakePasswd))
	write(filepath.Join(r, "sub", "x"), []byte("sub-x"))
	write(filepath.Join(r, "sub", "deep", "nested", "file"), []byte("nested"))
	must(os.Symlink("../sub/x", filepath.Join(r, "sub", "rel2")))
	write(filepath.Join(r, "outside", "secret"), []byte(decoyContent))
	write(filepath.Join(r, "bin.dat"), binaryContent())
	big := make([]byte, bigSize)
	if _, err := rand.Read(big); err != nil {
		tb.Fatal(err)
	}
	write(filepath.Join(r, "big.dat"), big)
	mkdir(filepath.Join(r, "data.txt"))
	must(unix.Mkfifo(filepath.Join(r, "fifo"), 0o644))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(r, "sock"), Net: "unix"})
	must(err)
	ln.SetUnlinkOnClose(false)
	must(ln.Close())
	if err := unix.Mknod(filepath.Join(r, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
		fx.deviceMade = true
	} else {
		tb.Logf("no character device in the fixture (mknod: %v)", err)
	}
	link("/etc/passwd", "abs")
	link("../../../../..", "up")
	link("../sub/x", "rel")
	link("/nonexistent", "dangling")
	link("loop2", "loop1")
	link("loop1", "loop2")
	link(filepath.Join(fx.outside, "secret"), "escape_abs")
	link("../outside/secret", "escape_rel")
	link(fx.outside, "linkdir")
	link("../outside", "linkdir_rel")
	link("/proc/self/root", "magic")

	// A real procfs below the root gives real magic links. A read-only
	// bind mount needs CAP_SYS_ADMIN; without it those cases are skipped.
	proc := filepath.Join(r, "proc")
	mkdir(proc)
	if err := unix.Mount("/proc", proc, "", unix.MS_BIND, ""); err == nil {
		fx.procMounted = true
		tb.Cleanup(func() {
			if err := unix.Unmount(proc, unix.MNT_DETACH); err != nil {
				tb.Errorf("unmount %s: %v", proc, err)
			}
		})
		if err := unix.Mount("", proc, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			tb.Fatalf("remount %s read-only: %v", proc, err)
		}
	} else {
		tb.Logf("no procfs below the root, magic link cases skipped (bind mount: %v)", err)
	}

	// As the agent gets it from runtime.Root: O_PATH.
	fd, err := unix.Open(r, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(err)
	fx.rootFile = os.NewFile(uintptr(fd), r)
	tb.Cleanup(func() { _ = fx.rootFile.Close() })
	fx.outsideBefore = fx.outsideState(tb)
	return fx
}

// outsideState lists the host directories next to the root (names and
// contents), to be compared after each operation.
func (fx *fixture) outsideState(tb testing.TB) []string {
	tb.Helper()
	var out []string
	for _, d := range []string{fx.base, fx.outside} {
		ents, err := os.ReadDir(d)
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range ents {
			s := filepath.Join(d, e.Name())
			if e.Type().IsRegular() {
				data, err := os.ReadFile(s)
				if err != nil {
					tb.Fatal(err)
				}
				s += "=" + string(data)
			}
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

// checkOutside fails when anything next to the root changed.
func (fx *fixture) checkOutside(tb testing.TB) {
	tb.Helper()
	now := fx.outsideState(tb)
	if strings.Join(now, "\n") != strings.Join(fx.outsideBefore, "\n") {
		tb.Fatalf("host files next to the root changed:\nbefore %q\nnow    %q", fx.outsideBefore, now)
	}
}

// checkNoSecret fails when output shows anything of the host's files.
func (fx *fixture) checkNoSecret(tb testing.TB, what string, data []byte) {
	tb.Helper()
	if bytes.Contains(data, []byte(fx.hostSecret)) || bytes.Contains(data, []byte(fx.hostOnlyName)) {
		tb.Fatalf("%s shows a host file outside the root: %q", what, data)
	}
}

// tempLeft returns the temporary files of WriteFile left anywhere below
// the root (procfs left out).
func (fx *fixture) tempLeft(tb testing.TB) []string {
	tb.Helper()
	var left []string
	err := filepath.WalkDir(fx.root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p == filepath.Join(fx.root, "proc") {
			return filepath.SkipDir
		}
		if strings.HasPrefix(d.Name(), ".sandboxfs-") {
			left = append(left, p)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return left
}

// within runs fn and fails the test when it does not return in time (a
// FIFO opened for reading would block forever).
func within(tb testing.TB, d time.Duration, what string, fn func()) {
	tb.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		tb.Fatalf("%s did not return within %v (blocked on a FIFO?)", what, d)
	}
}

// realPath is where an open descriptor really is, as the kernel says.
func realPath(fd int) (string, error) {
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
}

func inside(root, p string) bool {
	return p == root || strings.HasPrefix(p, root+"/")
}
