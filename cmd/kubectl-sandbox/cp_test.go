package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/client"
)

// sandboxFS is the files subresource of one sandbox over an in-memory tree:
// files (content and mode), directories, symlinks and extra entries that
// List answers as they are (to test hostile names).
type sandboxFS struct {
	mu       sync.Mutex
	files    map[string][]byte
	modes    map[string]uint32
	dirs     map[string]bool
	links    map[string]string
	extra    map[string][]client.FileInfo
	puts     []string
	putModes []string
}

func newSandboxFS() *sandboxFS {
	return &sandboxFS{files: map[string][]byte{}, modes: map[string]uint32{}, dirs: map[string]bool{"/": true},
		links: map[string]string{}, extra: map[string][]client.FileInfo{}}
}

func (fs *sandboxFS) info(p string) (client.FileInfo, bool) {
	name := path.Base(p)
	switch {
	case fs.dirs[p]:
		return client.FileInfo{Name: name, Mode: 0o755, Type: client.FileTypeDir, ModTime: time.Unix(0, 0)}, true
	case fs.links[p] != "":
		return client.FileInfo{Name: name, Mode: 0o777, Type: client.FileTypeSymlink, LinkTarget: fs.links[p]}, true
	}
	b, ok := fs.files[p]
	return client.FileInfo{Name: name, Size: int64(len(b)), Mode: fs.modes[p], Type: client.FileTypeFile}, ok
}

func (fs *sandboxFS) install(h *harness) {
	notFound := func(w http.ResponseWriter, p string) {
		writeStatus(w, apierrors.NewNotFound(v1alpha1.Resource("sandboxes/files"), p))
	}
	h.handlers["GET files"] = func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		q := r.URL.Query()
		p := q.Get("path")
		switch q.Get("op") {
		case "stat":
			fi, ok := fs.info(p)
			if !ok {
				notFound(w, p)
				return
			}
			_ = json.NewEncoder(w).Encode(fi)
		case "list":
			if !fs.dirs[p] {
				notFound(w, p)
				return
			}
			var entries []client.FileInfo
			for _, m := range []map[string]bool{fs.dirs, keys(fs.files), keys(fs.links)} {
				for child := range m {
					if child != "/" && path.Dir(child) == p {
						fi, _ := fs.info(child)
						entries = append(entries, fi)
					}
				}
			}
			entries = append(entries, fs.extra[p]...)
			sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
			_ = json.NewEncoder(w).Encode(entries)
		default:
			b, ok := fs.files[p]
			if !ok {
				notFound(w, p)
				return
			}
			_, _ = w.Write(b)
		}
	}
	h.handlers["PUT files"] = func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		q := r.URL.Query()
		p := q.Get("path")
		if !fs.dirs[path.Dir(p)] {
			notFound(w, path.Dir(p))
			return
		}
		mode, err := strconv.ParseUint(q.Get("mode"), 8, 32)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest("mode"))
			return
		}
		b, _ := io.ReadAll(r.Body)
		fs.files[p], fs.modes[p] = b, uint32(mode)
		fs.puts = append(fs.puts, p)
		fs.putModes = append(fs.putModes, q.Get("mode"))
		w.WriteHeader(http.StatusNoContent)
	}
}

func keys[V any](m map[string]V) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func TestCpUpload(t *testing.T) {
	h := newHarness(t)
	fs := newSandboxFS()
	fs.dirs["/work"] = true
	fs.install(h)
	dir := t.TempDir()
	local := filepath.Join(dir, "run.sh")
	if err := os.WriteFile(local, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ dst, want string }{
		{"box:/work", "/work/run.sh"},            // an existing directory
		{"box:/work/", "/work/run.sh"},           // a trailing slash
		{"box:/work/other.sh", "/work/other.sh"}, // a new file
	} {
		if code := h.run("cp", local, tc.dst); code != 0 {
			t.Fatalf("cp %s: exit %d: %s", tc.dst, code, h.err)
		}
		if got := fs.puts[len(fs.puts)-1]; got != tc.want {
			t.Errorf("cp %s wrote %s, want %s", tc.dst, got, tc.want)
		}
	}
	if string(fs.files["/work/run.sh"]) != "#!/bin/sh\necho hi\n" || fs.putModes[0] != "0755" {
		t.Errorf("content %q, mode %s", fs.files["/work/run.sh"], fs.putModes[0])
	}

	h.in.WriteString("from stdin")
	if code := h.run("cp", "-", "box:/work/in.txt"); code != 0 {
		t.Fatalf("cp -: exit %d: %s", code, h.err)
	}
	if string(fs.files["/work/in.txt"]) != "from stdin" || fs.modes["/work/in.txt"] != 0o644 {
		t.Errorf("stdin copy: %q %o", fs.files["/work/in.txt"], fs.modes["/work/in.txt"])
	}

	h.err.Reset()
	if code := h.run("cp", dir, "box:/work"); code != 1 || !strings.Contains(h.err.String(), "is a directory") {
		t.Errorf("directory upload: exit %d, stderr %q", code, h.err)
	}
	h.err.Reset()
	if code := h.run("cp", local, "box:/nodir/x"); code != 1 || !strings.Contains(h.err.String(), "(NotFound)") {
		t.Errorf("upload into a missing directory: exit %d, stderr %q", code, h.err)
	}
}

func TestCpDownload(t *testing.T) {
	h := newHarness(t)
	fs := newSandboxFS()
	fs.dirs["/data"], fs.dirs["/data/sub"] = true, true
	fs.files["/data/a.txt"], fs.modes["/data/a.txt"] = []byte("A"), 0o640
	fs.files["/data/sub/b.txt"], fs.modes["/data/sub/b.txt"] = []byte("B"), 0o4755
	fs.links["/data/link"] = "/etc/shadow"
	fs.install(h)
	dir := t.TempDir()

	// A file into an existing directory, with its permission bits.
	if code := h.run("cp", "box:/data/a.txt", dir); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	checkFile(t, filepath.Join(dir, "a.txt"), "A", 0o640)

	// A file to stdout.
	if code := h.run("cp", "box:/data/sub/b.txt", "-"); code != 0 || h.out.String() != "B" {
		t.Fatalf("exit %d, stdout %q: %s", code, h.out, h.err)
	}

	// A directory, recursively, to a new local one; the symlink is
	// skipped and setuid is not kept.
	out := filepath.Join(dir, "out")
	if code := h.run("cp", "box:/data", out); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	checkFile(t, filepath.Join(out, "a.txt"), "A", 0o640)
	checkFile(t, filepath.Join(out, "sub", "b.txt"), "B", 0o755)
	if _, err := os.Lstat(filepath.Join(out, "link")); !os.IsNotExist(err) {
		t.Errorf("the symlink was copied: %v", err)
	}
	if !strings.Contains(h.err.String(), "skipping symlink box:/data/link -> /etc/shadow") {
		t.Errorf("stderr %q", h.err)
	}

	// Into the existing directory: as cp -r, under its own name.
	if code := h.run("cp", "box:/data", out); code != 0 {
		t.Fatalf("exit %d: %s", code, h.err)
	}
	checkFile(t, filepath.Join(out, "data", "sub", "b.txt"), "B", 0o755)

	// A name from the sandbox that would leave the destination.
	fs.extra["/data/sub"] = []client.FileInfo{{Name: "../../escape", Type: client.FileTypeFile}}
	h.err.Reset()
	if code := h.run("cp", "box:/data", filepath.Join(dir, "evil")); code != 1 || !strings.Contains(h.err.String(), "refusing the entry name") {
		t.Errorf("exit %d, stderr %q", code, h.err)
	}
	if _, err := os.Stat(filepath.Join(dir, "escape")); !os.IsNotExist(err) {
		t.Errorf("a file was written outside the destination: %v", err)
	}

	h.err.Reset()
	if code := h.run("cp", "box:/nope", dir); code != 1 || !strings.Contains(h.err.String(), `Error from server (NotFound)`) {
		t.Errorf("missing file: exit %d, stderr %q", code, h.err)
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left %s", e.Name())
		}
	}
}

func checkFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Error(err)
		return
	}
	st, _ := os.Stat(p)
	if string(b) != content || st.Mode().Perm() != mode {
		t.Errorf("%s: %q %v, want %q %v", p, b, st.Mode().Perm(), content, mode)
	}
}
