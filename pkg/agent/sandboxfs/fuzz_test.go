package sandboxfs

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// fuzzElements are the path elements a fuzzed byte string is built from:
// the fixture's names (symlinks that try to escape, magic links, special
// files) and the tricky spellings.
var fuzzElements = []string{
	"..", ".", "", "/", "//", "abs", "up", "rel", "linkdir", "linkdir_rel", "escape_abs", "escape_rel",
	"magic", "proc", "self", "thread-self", "root", "cwd", "fd", "0", "1", "exe", "mounts", "sub", "deep",
	"nested", "rel2", "outside", "secret", "hello.txt", "etc", "passwd", "fifo", "sock", "null",
	"dangling", "loop1", "data.txt", "\x00", "tmp", "nonexistent",
}

// FuzzResolve checks that no path, however built, opens, reads, lists or
// writes anything outside the root: every descriptor the resolution gives
// is really below the root (as /proc/self/fd tells), no output shows the
// host's secret, and no write changes anything next to the root.
func FuzzResolve(f *testing.F) {
	for _, seed := range []string{
		"hello.txt", "/hello.txt", "../../../../outside/secret", "/../outside/secret", "abs", "up/outside/secret",
		"rel", "escape_abs", "escape_rel", "linkdir/secret", "linkdir_rel/secret", "linkdir/../outside/secret",
		"magic", "magic/outside/secret", "/proc/self/root/outside/secret", "/proc/self/cwd", "/proc/thread-self/root",
		"/proc/1/root", "/proc/self/fd/3", "proc/mounts", "fifo", "sock", "null", "dangling", "loop1", "loop1/x",
		"data.txt", "sub/deep/../../../..", "a\x00b", "", "/", ".", "..", "up/up/up/linkdir_rel/../../..",
	} {
		f.Add(seed, []byte{})
	}
	f.Add("", []byte{6, 3, 0, 1, 0, 10})
	f.Add("x", []byte{12, 0, 0, 28})
	f.Add("", []byte{14, 15, 16})

	fx := newFixture(f)
	owner := runtime.Owner{UID: os.Geteuid(), GID: os.Getegid()}

	f.Fuzz(func(t *testing.T, raw string, elems []byte) {
		paths := []string{raw}
		if len(elems) > 0 {
			var b strings.Builder
			for i, e := range elems {
				if i > 0 || e%2 == 0 {
					b.WriteByte('/')
				}
				b.WriteString(fuzzElements[int(e)%len(fuzzElements)])
			}
			paths = append(paths, b.String(), raw+"/"+b.String())
		}
		for _, p := range paths {
			fuzzOne(t, fx, p, owner)
		}
	})
}

func fuzzOne(t *testing.T, fx *fixture, p string, owner runtime.Owner) {
	err := rootFd(fx.rootFile, func(rootfd int) error {
		for _, flags := range []uint64{unix.O_PATH, unix.O_PATH | unix.O_NOFOLLOW, unix.O_PATH | unix.O_DIRECTORY} {
			fd, err := resolve(rootfd, p, flags)
			if err != nil {
				continue
			}
			real, err := realPath(fd)
			_ = unix.Close(fd)
			if err != nil {
				return err
			}
			if !inside(fx.root, real) {
				t.Fatalf("resolve(%q, %#x) opened %s, outside the root %s", p, flags, real, fx.root)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if fi, err := Stat(fx.rootFile, p); err == nil {
		fx.checkNoSecret(t, "Stat", []byte(fi.Name+fi.LinkTarget))
	}
	if ents, err := List(fx.rootFile, p); err == nil {
		for _, fi := range ents {
			fx.checkNoSecret(t, "List", []byte(fi.Name+fi.LinkTarget))
		}
	}
	// Reading procfs files could block (kmsg) or be slow; their
	// resolution is checked above.
	if !fuzzUnderProc(fx, p) {
		var buf bytes.Buffer
		var err error
		within(t, deadline, "ReadFile", func() { err = ReadFile(fx.rootFile, p, &buf, 1<<20) })
		if err == nil {
			fx.checkNoSecret(t, "ReadFile", buf.Bytes())
		}
	}

	// A write of a new name in the directory p names: it must land below
	// the root, where it is found again and removed.
	target := p + "/.fuzz-write"
	var werr error
	within(t, deadline, "WriteFile", func() {
		werr = WriteFile(fx.rootFile, target, strings.NewReader("fuzz"), 0o644, owner, 16)
	})
	fx.checkOutside(t)
	if werr == nil {
		err := rootFd(fx.rootFile, func(rootfd int) error {
			fd, err := resolve(rootfd, target, unix.O_PATH|unix.O_NOFOLLOW)
			if err != nil {
				return errors.New("written file not found below the root: " + err.Error())
			}
			real, err := realPath(fd)
			_ = unix.Close(fd)
			if err != nil {
				return err
			}
			if !inside(fx.root, real) {
				t.Fatalf("WriteFile(%q) wrote %s, outside the root", target, real)
			}
			return os.Remove(real)
		})
		if err != nil {
			t.Fatalf("WriteFile(%q): %v", target, err)
		}
	}
}

// fuzzUnderProc reports whether p resolves to somewhere in the procfs
// below the root.
func fuzzUnderProc(fx *fixture, p string) bool {
	under := false
	_ = rootFd(fx.rootFile, func(rootfd int) error {
		fd, err := resolve(rootfd, p, unix.O_PATH)
		if err != nil {
			return nil
		}
		defer func() { _ = unix.Close(fd) }()
		under = onProcfs(fd)
		return nil
	})
	return under
}
