package sandboxfs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

const deadline = 5 * time.Second

func TestReadFile(t *testing.T) {
	fx := newFixture(t)
	big, err := os.ReadFile(filepath.Join(fx.root, "big.dat"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		max        int64
		want       string
		wantErr    error
		needProc   bool
		needDevice bool
	}{
		{name: "relative", path: "hello.txt", want: "hello\n"},
		{name: "absolute", path: "/hello.txt", want: "hello\n"},
		{name: "dot", path: "./hello.txt", want: "hello\n"},
		{name: "dotdot above root", path: "../../hello.txt", want: "hello\n"},
		{name: "absolute dotdot", path: "/../../../hello.txt", want: "hello\n"},
		{name: "dotdot inside", path: "sub/deep/../../hello.txt", want: "hello\n"},
		{name: "nested", path: "/sub/deep/nested/file", want: "nested"},
		{name: "etc passwd is the root's", path: "/etc/passwd", want: fakePasswd},
		{name: "absolute symlink stays in root", path: "abs", want: fakePasswd},
		{name: "relative symlink clamped", path: "rel", want: "sub-x"},
		{name: "relative symlink", path: "sub/rel2", want: "sub-x"},
		{name: "up symlink as parent", path: "up/hello.txt", want: "hello\n"},
		{name: "up symlink to outside name", path: "up/outside/secret", want: decoyContent},
		{name: "dotdot to outside name", path: "../outside/secret", want: decoyContent},
		{name: "relative escape symlink clamped", path: "escape_rel", want: decoyContent},
		{name: "relative symlinked parent clamped", path: "linkdir_rel/secret", want: decoyContent},
		{name: "absolute escape symlink", path: "escape_abs", wantErr: ErrNotFound},
		{name: "absolute symlinked parent", path: "linkdir/secret", wantErr: ErrNotFound},
		{name: "host path", path: filepath.Join(fx.outside, "secret"), wantErr: ErrNotFound},
		{name: "binary", path: "bin.dat", want: string(binaryContent())},
		{name: "large unlimited", path: "big.dat", want: string(big)},
		{name: "large at bound", path: "big.dat", max: bigSize, want: string(big)},
		{name: "large over bound", path: "big.dat", max: bigSize - 1, wantErr: ErrTooLarge},
		{name: "missing", path: "nope", wantErr: ErrNotFound},
		{name: "dangling", path: "dangling", wantErr: ErrNotFound},
		{name: "file as parent", path: "hello.txt/x", wantErr: ErrNotFound},
		{name: "trailing slash on file", path: "hello.txt/", wantErr: ErrNotFound},
		{name: "loop", path: "loop1", wantErr: ErrEscape},
		{name: "directory", path: "sub", wantErr: ErrNotRegular},
		{name: "root", path: "/", wantErr: ErrNotRegular},
		{name: "directory named like a file", path: "data.txt", wantErr: ErrNotRegular},
		{name: "fifo", path: "fifo", wantErr: ErrNotRegular},
		{name: "socket", path: "sock", wantErr: ErrNotRegular},
		{name: "device", path: "null", wantErr: ErrNotRegular, needDevice: true},
		{name: "empty", path: "", wantErr: ErrEscape},
		{name: "nul", path: "hello.txt\x00x", wantErr: ErrEscape},
		{name: "too long", path: strings.Repeat("a/", 3000), wantErr: ErrEscape},
		{name: "magic link", path: "magic/hello.txt", wantErr: ErrEscape, needProc: true},
		{name: "proc root magic link", path: "/proc/self/root/etc/passwd", wantErr: ErrEscape, needProc: true},
		{name: "proc fd magic link", path: "/proc/self/fd/0", wantErr: ErrEscape, needProc: true},
		{name: "proc cwd magic link", path: "/proc/self/cwd/hello.txt", wantErr: ErrEscape, needProc: true},
		{name: "proc regular file", path: "/proc/self/comm", want: "", needProc: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needProc && !fx.procMounted {
				t.Skip("no procfs below the root")
			}
			if tc.needDevice && !fx.deviceMade {
				t.Skip("no device in the fixture")
			}
			var buf bytes.Buffer
			var err error
			within(t, deadline, "ReadFile", func() { err = ReadFile(fx.rootFile, tc.path, &buf, tc.max) })
			fx.checkNoSecret(t, "ReadFile", buf.Bytes())
			fx.checkNoSecret(t, "ReadFile error", []byte(errString(err)))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ReadFile(%q) = %v, want %v", tc.path, err, tc.wantErr)
				}
				if errors.Is(tc.wantErr, ErrTooLarge) && buf.Len() > 0 {
					t.Fatalf("ReadFile(%q) wrote %d bytes before ErrTooLarge", tc.path, buf.Len())
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadFile(%q): %v", tc.path, err)
			}
			if tc.name == "proc regular file" {
				if buf.Len() == 0 {
					t.Fatalf("ReadFile(%q) is empty", tc.path)
				}
				return
			}
			if buf.String() != tc.want {
				t.Fatalf("ReadFile(%q) = %d bytes %.40q, want %d bytes %.40q", tc.path, buf.Len(), buf.String(), len(tc.want), tc.want)
			}
		})
	}
	fx.checkOutside(t)
}

// A FIFO must be refused without being opened: nothing writes to it, so an
// open for reading would block forever.
func TestReadFileFIFODoesNotBlock(t *testing.T) {
	fx := newFixture(t)
	for _, p := range []string{"fifo", "/fifo", "up/fifo"} {
		var err error
		within(t, deadline, "ReadFile of a FIFO", func() { err = ReadFile(fx.rootFile, p, io.Discard, 0) })
		if !errors.Is(err, ErrNotRegular) {
			t.Fatalf("ReadFile(%q) = %v, want ErrNotRegular", p, err)
		}
		within(t, deadline, "List of a FIFO", func() { _, err = List(fx.rootFile, p) })
		if !errors.Is(err, ErrNotRegular) {
			t.Fatalf("List(%q) = %v, want ErrNotRegular", p, err)
		}
		within(t, deadline, "WriteFile over a FIFO", func() {
			err = WriteFile(fx.rootFile, p, strings.NewReader("x"), 0o644, runtime.Owner{}, 0)
		})
		if !errors.Is(err, ErrNotRegular) {
			t.Fatalf("WriteFile(%q) = %v, want ErrNotRegular", p, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(fx.root, "fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Fatalf("fifo changed: %v, mode %o", err, st.Mode)
	}
}

func TestStat(t *testing.T) {
	fx := newFixture(t)
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	if err := os.Chtimes(filepath.Join(fx.root, "hello.txt"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(fx.root, "sub"), 0o750|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		want       api.FileInfo // ModTime checked only when set
		wantErr    error
		needProc   bool
	}{
		{name: "file", path: "hello.txt", want: api.FileInfo{Name: "hello.txt", Size: 6, Mode: 0o644, Type: api.FileTypeFile, ModTime: mtime}},
		{name: "absolute", path: "/hello.txt", want: api.FileInfo{Name: "hello.txt", Size: 6, Mode: 0o644, Type: api.FileTypeFile}},
		{name: "dotdot above root", path: "../../../hello.txt", want: api.FileInfo{Name: "hello.txt", Size: 6, Mode: 0o644, Type: api.FileTypeFile}},
		{name: "root", path: "/", want: api.FileInfo{Name: "/", Type: api.FileTypeDir, Mode: 0o755}},
		{name: "root dot", path: ".", want: api.FileInfo{Name: "/", Type: api.FileTypeDir, Mode: 0o755}},
		{name: "dir with setgid", path: "sub", want: api.FileInfo{Name: "sub", Type: api.FileTypeDir, Mode: 0o2750}},
		{name: "directory named like a file", path: "data.txt", want: api.FileInfo{Name: "data.txt", Type: api.FileTypeDir, Mode: 0o755}},
		{name: "absolute symlink not followed", path: "abs", want: api.FileInfo{Name: "abs", Type: api.FileTypeSymlink, LinkTarget: "/etc/passwd", Size: int64(len("/etc/passwd")), Mode: 0o777}},
		{name: "up symlink", path: "up", want: api.FileInfo{Name: "up", Type: api.FileTypeSymlink, LinkTarget: "../../../../..", Size: 14, Mode: 0o777}},
		{name: "dangling", path: "dangling", want: api.FileInfo{Name: "dangling", Type: api.FileTypeSymlink, LinkTarget: "/nonexistent", Size: 12, Mode: 0o777}},
		{name: "symlink in symlinked parent", path: "sub/deep/../rel2", want: api.FileInfo{Name: "rel2", Type: api.FileTypeSymlink, LinkTarget: "../sub/x", Size: 8, Mode: 0o777}},
		{name: "through up", path: "up/sub/x", want: api.FileInfo{Name: "x", Type: api.FileTypeFile, Size: 5, Mode: 0o644}},
		{name: "relative symlinked parent clamped", path: "linkdir_rel/secret", want: api.FileInfo{Name: "secret", Type: api.FileTypeFile, Size: int64(len(decoyContent)), Mode: 0o644}},
		{name: "absolute symlinked parent", path: "linkdir/secret", wantErr: ErrNotFound},
		{name: "host-only name", path: "linkdir_rel/" + fx.hostOnlyName, wantErr: ErrNotFound},
		{name: "fifo", path: "fifo", want: api.FileInfo{Name: "fifo", Type: api.FileTypeOther, Mode: 0o644}},
		{name: "missing", path: "missing", wantErr: ErrNotFound},
		{name: "loop followed as parent", path: "loop1/x", wantErr: ErrEscape},
		{name: "loop itself", path: "loop1", want: api.FileInfo{Name: "loop1", Type: api.FileTypeSymlink, LinkTarget: "loop2", Size: 5, Mode: 0o777}},
		{name: "empty", path: "", wantErr: ErrEscape},
		{name: "nul", path: "\x00", wantErr: ErrEscape},
		{name: "magic link as parent", path: "/proc/self/root/etc", wantErr: ErrEscape, needProc: true},
		{name: "magic link itself has no target", path: "/proc/self/root", want: api.FileInfo{Name: "root", Type: api.FileTypeSymlink, Mode: 0o777}, needProc: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.needProc && !fx.procMounted {
				t.Skip("no procfs below the root")
			}
			got, err := Stat(fx.rootFile, tc.path)
			fx.checkNoSecret(t, "Stat", []byte(got.Name+got.LinkTarget+strings.ReplaceAll(errString(err), tc.path, "")))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Stat(%q) = %+v, %v; want %v", tc.path, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Stat(%q): %v", tc.path, err)
			}
			if got.ModTime.IsZero() {
				t.Errorf("Stat(%q): no ModTime", tc.path)
			}
			want := tc.want
			if want.ModTime.IsZero() {
				want.ModTime = got.ModTime
			}
			if want.Type == api.FileTypeDir || want.Type == api.FileTypeOther || (want.Type == api.FileTypeSymlink && want.Size == 0) {
				want.Size = got.Size
			}
			if !got.ModTime.Equal(want.ModTime) {
				t.Errorf("Stat(%q).ModTime = %v, want %v", tc.path, got.ModTime, want.ModTime)
			}
			got.ModTime, want.ModTime = time.Time{}, time.Time{}
			if got != want {
				t.Fatalf("Stat(%q) = %+v, want %+v", tc.path, got, want)
			}
		})
	}
	fx.checkOutside(t)
}

func TestList(t *testing.T) {
	fx := newFixture(t)
	rootNames := []string{"abs", "big.dat", "bin.dat", "dangling", "data.txt", "escape_abs", "escape_rel", "etc", "fifo", "hello.txt",
		"linkdir", "linkdir_rel", "loop1", "loop2", "magic", "outside", "proc", "rel", "sock", "sub", "up"}
	if fx.deviceMade {
		rootNames = append(rootNames, "null")
		sort.Strings(rootNames)
	}
	cases := []struct {
		name, path string
		want       []string
		wantErr    error
	}{
		{name: "root", path: "/", want: rootNames},
		{name: "root relative", path: ".", want: rootNames},
		{name: "dotdot above root", path: "../..", want: rootNames},
		{name: "up symlink", path: "up", want: rootNames},
		{name: "sub", path: "sub", want: []string{"deep", "rel2", "x"}},
		{name: "nested through dotdot", path: "sub/deep/nested/../..", want: []string{"deep", "rel2", "x"}},
		{name: "relative symlinked dir clamped", path: "linkdir_rel", want: []string{"secret"}},
		{name: "absolute symlinked dir", path: "linkdir", wantErr: ErrNotFound},
		{name: "host dir", path: fx.outside, wantErr: ErrNotFound},
		{name: "empty dir", path: "data.txt", want: []string{}},
		{name: "file", path: "hello.txt", wantErr: ErrNotRegular},
		{name: "symlink to file", path: "abs", wantErr: ErrNotRegular},
		{name: "fifo", path: "fifo", wantErr: ErrNotRegular},
		{name: "missing", path: "missing", wantErr: ErrNotFound},
		{name: "missing parent", path: "missing/x", wantErr: ErrNotFound},
		{name: "file as parent", path: "hello.txt/x", wantErr: ErrNotFound},
		{name: "dangling", path: "dangling", wantErr: ErrNotFound},
		{name: "loop", path: "loop1", wantErr: ErrEscape},
		{name: "empty path", path: "", wantErr: ErrEscape},
		{name: "magic link", path: "magic", wantErr: ErrEscape},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "magic link" && !fx.procMounted {
				t.Skip("no procfs below the root")
			}
			var got []api.FileInfo
			var err error
			within(t, deadline, "List", func() { got, err = List(fx.rootFile, tc.path) })
			var names []string
			for _, fi := range got {
				fx.checkNoSecret(t, "List", []byte(fi.Name+fi.LinkTarget))
				names = append(names, fi.Name)
			}
			fx.checkNoSecret(t, "List error", []byte(errString(err)))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("List(%q) = %v, %v; want %v", tc.path, names, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("List(%q): %v", tc.path, err)
			}
			if strings.Join(names, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("List(%q) = %q, want %q", tc.path, names, tc.want)
			}
		})
	}

	// Entries are described as Stat describes them.
	got, err := List(fx.rootFile, "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, fi := range got {
		if fi.Name == "proc" {
			continue // its mode and times are procfs's
		}
		st, err := Stat(fx.rootFile, "/"+fi.Name)
		if err != nil {
			t.Fatalf("Stat(%q): %v", fi.Name, err)
		}
		if st != fi {
			t.Errorf("List entry %+v, Stat %+v", fi, st)
		}
	}

	if fx.procMounted {
		// No link target of procfs is shown: magic links would show
		// the agent's view of paths.
		ents, err := List(fx.rootFile, "/proc/self")
		if err != nil {
			t.Fatal(err)
		}
		seen := false
		for _, fi := range ents {
			if fi.Name == "root" {
				seen = true
				if fi.Type != api.FileTypeSymlink || fi.LinkTarget != "" {
					t.Errorf("/proc/self/root listed as %+v", fi)
				}
			}
		}
		if !seen {
			t.Errorf("/proc/self/root not listed")
		}
	}
	fx.checkOutside(t)
}

func TestListTooLarge(t *testing.T) {
	fx := newFixture(t)
	dir := filepath.Join(fx.root, "many")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range MaxListEntries {
		if err := os.Mkdir(filepath.Join(dir, "d"+strconv.Itoa(i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := List(fx.rootFile, "many")
	if err != nil || len(got) != MaxListEntries {
		t.Fatalf("List of %d entries: %d, %v", MaxListEntries, len(got), err)
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].Name >= got[i].Name {
			t.Fatalf("not sorted: %q before %q", got[i-1].Name, got[i].Name)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "one-more"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := List(fx.rootFile, "many"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("List of %d entries = %v, want ErrTooLarge", MaxListEntries+1, err)
	}
}

func TestWriteFile(t *testing.T) {
	owner := runtime.Owner{UID: 1234, GID: 5678}
	checkOwner := os.Geteuid() == 0
	if !checkOwner {
		// Giving a file away (fchown to another uid) needs CAP_CHOWN.
		t.Log("not running as root: owner is written as the caller's own ids and not checked")
		owner = runtime.Owner{UID: os.Geteuid(), GID: os.Getegid()}
	}
	type result struct {
		real    string // where the content must be, relative to the root
		content string
	}
	cases := []struct {
		name, path string
		content    string
		mode       os.FileMode
		max        int64
		want       *result
		wantErr    error
		check      func(t *testing.T, fx *fixture)
		needProc   bool
	}{
		{name: "new file", path: "new.txt", content: "new", mode: 0o640, want: &result{"new.txt", "new"}},
		{name: "new absolute", path: "/sub/new.txt", content: "n", mode: 0o600, want: &result{"sub/new.txt", "n"}},
		{name: "overwrite", path: "hello.txt", content: "bye", mode: 0o644, want: &result{"hello.txt", "bye"}},
		{name: "binary", path: "b.bin", content: string(binaryContent()), mode: 0o755, want: &result{"b.bin", string(binaryContent())}},
		{name: "empty content", path: "empty", content: "", mode: 0o644, want: &result{"empty", ""}},
		{name: "setuid setgid sticky", path: "special", content: "s", mode: 0o750 | os.ModeSetuid | os.ModeSetgid | os.ModeSticky, want: &result{"special", "s"}},
		{name: "dotdot above root", path: "../../../outside/new", content: "x", mode: 0o644, want: &result{"outside/new", "x"}},
		{name: "up symlink parent", path: "up/outside/up", content: "x", mode: 0o644, want: &result{"outside/up", "x"}},
		{name: "relative symlinked parent clamped", path: "linkdir_rel/x", content: "x", mode: 0o644, want: &result{"outside/x", "x"}},
		{name: "absolute symlinked parent", path: "linkdir/x", content: "x", mode: 0o644, wantErr: ErrNotFound},
		{name: "host path", path: "{outside}/x", content: "x", mode: 0o644, wantErr: ErrNotFound},
		{
			name: "absolute symlink replaced, target untouched", path: "abs", content: "x", mode: 0o644, want: &result{"abs", "x"},
			check: func(t *testing.T, fx *fixture) { wantContent(t, fx, "etc/passwd", fakePasswd) },
		},
		{
			name: "escape symlink replaced", path: "escape_rel", content: "x", mode: 0o644, want: &result{"escape_rel", "x"},
			check: func(t *testing.T, fx *fixture) { wantContent(t, fx, "outside/secret", decoyContent) },
		},
		{name: "absolute escape symlink replaced", path: "escape_abs", content: "x", mode: 0o644, want: &result{"escape_abs", "x"}},
		{
			name: "dangling symlink replaced", path: "dangling", content: "x", mode: 0o644, want: &result{"dangling", "x"},
			check: func(t *testing.T, fx *fixture) {
				if _, err := os.Lstat(filepath.Join(fx.root, "nonexistent")); !os.IsNotExist(err) {
					t.Fatalf("link target created: %v", err)
				}
			},
		},
		{name: "missing parent", path: "nodir/x", content: "x", mode: 0o644, wantErr: ErrNotFound},
		{name: "file as parent", path: "hello.txt/x", content: "x", mode: 0o644, wantErr: ErrNotFound},
		{name: "dangling parent", path: "dangling/x", content: "x", mode: 0o644, wantErr: ErrNotFound},
		{name: "directory", path: "sub", content: "x", mode: 0o644, wantErr: ErrNotRegular},
		{name: "directory named like a file", path: "data.txt", content: "x", mode: 0o644, wantErr: ErrNotRegular},
		{name: "trailing slash", path: "sub/", content: "x", mode: 0o644, wantErr: ErrNotRegular},
		{name: "root", path: "/", content: "x", mode: 0o644, wantErr: ErrNotRegular},
		{name: "dotdot last", path: "sub/..", content: "x", mode: 0o644, wantErr: ErrNotRegular},
		{name: "socket", path: "sock", content: "x", mode: 0o644, wantErr: ErrNotRegular},
		{name: "empty path", path: "", content: "x", mode: 0o644, wantErr: ErrEscape},
		{name: "nul", path: "x\x00y", content: "x", mode: 0o644, wantErr: ErrEscape},
		{name: "loop parent", path: "loop1/x", content: "x", mode: 0o644, wantErr: ErrEscape},
		{name: "magic link parent", path: "/proc/self/root/tmp/x", content: "x", mode: 0o644, wantErr: ErrEscape, needProc: true},
		{name: "at bound", path: "bound", content: "0123456789", mode: 0o644, max: 10, want: &result{"bound", "0123456789"}},
		{
			name: "over bound", path: "over", content: "0123456789x", mode: 0o644, max: 10, wantErr: ErrTooLarge,
			check: func(t *testing.T, fx *fixture) {
				if _, err := os.Lstat(filepath.Join(fx.root, "over")); !os.IsNotExist(err) {
					t.Fatalf("file left after ErrTooLarge: %v", err)
				}
			},
		},
		{
			name: "over bound keeps old file", path: "sub/x", content: "0123456789x", mode: 0o644, max: 10, wantErr: ErrTooLarge,
			check: func(t *testing.T, fx *fixture) { wantContent(t, fx, "sub/x", "sub-x") },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t) // each write changes the tree
			if tc.needProc && !fx.procMounted {
				t.Skip("no procfs below the root")
			}
			tc.path = strings.ReplaceAll(tc.path, "{outside}", fx.outside)
			var err error
			within(t, deadline, "WriteFile", func() {
				err = WriteFile(fx.rootFile, tc.path, strings.NewReader(tc.content), tc.mode, owner, tc.max)
			})
			fx.checkOutside(t)
			if left := fx.tempLeft(t); len(left) > 0 {
				t.Fatalf("temporary files left: %q", left)
			}
			if tc.check != nil {
				defer tc.check(t, fx)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("WriteFile(%q) = %v, want %v", tc.path, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("WriteFile(%q): %v", tc.path, err)
			}
			real := filepath.Join(fx.root, tc.want.real)
			wantContent(t, fx, tc.want.real, tc.want.content)
			var st unix.Stat_t
			if err := unix.Lstat(real, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				t.Fatalf("%s: mode %o, not a regular file", real, st.Mode)
			}
			wantMode := uint32(tc.mode.Perm())
			for goBit, unixBit := range map[os.FileMode]uint32{os.ModeSetuid: unix.S_ISUID, os.ModeSetgid: unix.S_ISGID, os.ModeSticky: unix.S_ISVTX} {
				if tc.mode&goBit != 0 {
					wantMode |= unixBit
				}
			}
			if st.Mode&0o7777 != wantMode {
				t.Errorf("%s: mode %o, want %o", real, st.Mode&0o7777, wantMode)
			}
			if checkOwner && (int(st.Uid) != owner.UID || int(st.Gid) != owner.GID) {
				t.Errorf("%s: owner %d:%d, want %d:%d", real, st.Uid, st.Gid, owner.UID, owner.GID)
			}
		})
	}
}

func wantContent(t *testing.T, fx *fixture, rel, want string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(fx.root, rel))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s = %.40q, want %.40q", rel, got, want)
	}
}

func TestWriteFileReaderError(t *testing.T) {
	fx := newFixture(t)
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("partial"), iotest.ErrReader(boom))
	err := WriteFile(fx.rootFile, "hello.txt", r, 0o644, runtime.Owner{UID: os.Geteuid(), GID: os.Getegid()}, 0)
	if !errors.Is(err, boom) {
		t.Fatalf("WriteFile = %v, want %v", err, boom)
	}
	wantContent(t, fx, "hello.txt", "hello\n")
	if left := fx.tempLeft(t); len(left) > 0 {
		t.Fatalf("temporary files left: %q", left)
	}
}

func TestWriteFileBadMode(t *testing.T) {
	fx := newFixture(t)
	for _, m := range []os.FileMode{os.ModeDir | 0o755, os.ModeSymlink, os.ModeNamedPipe | 0o644} {
		if err := WriteFile(fx.rootFile, "m", strings.NewReader("x"), m, runtime.Owner{}, 0); err == nil {
			t.Fatalf("WriteFile with mode %v succeeded", m)
		}
	}
	if _, err := os.Lstat(filepath.Join(fx.root, "m")); !os.IsNotExist(err) {
		t.Fatalf("file created with a bad mode: %v", err)
	}
}

// Readers, through ReadFile and directly, see the old content or the new,
// never a part of it.
func TestWriteFileAtomic(t *testing.T) {
	fx := newFixture(t)
	const size = 256 << 10
	contents := [][]byte{bytes.Repeat([]byte{'a'}, size), bytes.Repeat([]byte{'b'}, size)}
	owner := runtime.Owner{UID: os.Geteuid(), GID: os.Getegid()}
	if err := WriteFile(fx.rootFile, "atomic.dat", bytes.NewReader(contents[0]), 0o644, owner, 0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	check := func(data []byte) error {
		if len(data) != size || (!bytes.Equal(data, contents[0]) && !bytes.Equal(data, contents[1])) {
			return errors.New("partial content: " + strconv.Itoa(len(data)) + " bytes")
		}
		return nil
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var buf bytes.Buffer
			if err := ReadFile(fx.rootFile, "atomic.dat", &buf, 0); err != nil {
				errs <- err
				return
			}
			if err := check(buf.Bytes()); err != nil {
				errs <- err
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(filepath.Join(fx.root, "atomic.dat"))
			if err != nil {
				errs <- err
				return
			}
			if err := check(data); err != nil {
				errs <- err
				return
			}
		}
	}()
	for i := range 60 {
		// A slow reader makes each write take a while.
		r := iotest.HalfReader(bytes.NewReader(contents[(i+1)%2]))
		if err := WriteFile(fx.rootFile, "atomic.dat", r, 0o644, owner, 0); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if left := fx.tempLeft(t); len(left) > 0 {
		t.Fatalf("temporary files left: %q", left)
	}
}

func TestClosedRoot(t *testing.T) {
	fx := newFixture(t)
	f, err := os.Open(fx.root)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ReadFile(f, "hello.txt", io.Discard, 0); err == nil {
		t.Fatal("ReadFile with a closed root succeeded")
	}
	if _, err := Stat(nil, "hello.txt"); err == nil {
		t.Fatal("Stat with a nil root succeeded")
	}
}

func TestNoOpenat2FailsClosed(t *testing.T) {
	err := opErr("read", "/x", mapErr(unix.ENOSYS))
	if !errors.Is(err, errors.ErrUnsupported) || errors.Is(err, ErrNotFound) {
		t.Fatalf("ENOSYS gives %v", err)
	}
	if !strings.Contains(err.Error(), "openat2") {
		t.Fatalf("ENOSYS error does not say why: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
