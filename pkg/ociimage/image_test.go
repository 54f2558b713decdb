package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// tarEntry is what the tests check of one tar archive entry.
type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

// readTar returns the entries of a tar archive in order.
func readTar(t *testing.T, r io.Reader) []tarEntry {
	t.Helper()
	var entries []tarEntry
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading tar entry %s: %v", hdr.Name, err)
		}
		entries = append(entries, tarEntry{hdr: hdr, data: data})
	}
}

func sha256Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// blobOf checks that the archive holds the blob that d describes and
// returns its content.
func blobOf(t *testing.T, files map[string][]byte, d descriptor) []byte {
	t.Helper()
	data, ok := files["blobs/"+strings.Replace(d.Digest, ":", "/", 1)]
	if !ok {
		t.Fatalf("no blob for %s (%s)", d.Digest, d.MediaType)
	}
	if got := sha256Digest(data); got != d.Digest {
		t.Fatalf("blob %s has digest %s", d.Digest, got)
	}
	if int64(len(data)) != d.Size {
		t.Fatalf("blob %s has size %d, descriptor says %d", d.Digest, len(data), d.Size)
	}
	return data
}

func unmarshal(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decoding %s: %v", data, err)
	}
}

func TestBuild(t *testing.T) {
	src := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho agent\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Entrypoint: []string{"/bin/agent", "--v=2"},
		Cmd:        []string{"serve"},
		Env:        []string{"PATH=/bin", "A=b=c"},
		WorkingDir: "/work",
		User:       "65534:65534",
		Labels:     map[string]string{"b": "2", "a": "1"},
	}
	files := []File{
		{Path: "/bin/agent", Mode: 0o755, SourcePath: src},
		{Path: "/etc/passwd", Data: []byte("root:x:0:0::/:/bin/sh\n")},
		{Path: "/etc/empty", Data: []byte{}},
		{Path: "/bin/sh", Symlink: "agent"},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "/usr/local/bin/suid", Mode: os.ModeSetuid | os.ModeSetgid | 0o750, Data: []byte("x")},
		{Path: "/work", Mode: os.ModeDir | 0o700},
	}

	var out bytes.Buffer
	img, err := New("testbox", cfg, files)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	n, err := img.WriteTo(&out)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(out.Len()) {
		t.Errorf("WriteTo returned %d, wrote %d bytes", n, out.Len())
	}
	if img.Ref() != "docker.io/library/testbox:latest" {
		t.Errorf("Ref() = %q", img.Ref())
	}

	// The layout archive.
	var names []string
	layout := map[string][]byte{}
	for _, e := range readTar(t, bytes.NewReader(out.Bytes())) {
		names = append(names, e.hdr.Name)
		layout[e.hdr.Name] = e.data
		if !e.hdr.ModTime.Equal(time.Unix(0, 0)) || e.hdr.Uid != 0 || e.hdr.Gid != 0 {
			t.Errorf("layout entry %s: mtime %v, uid %d, gid %d; want epoch and root", e.hdr.Name, e.hdr.ModTime, e.hdr.Uid, e.hdr.Gid)
		}
	}
	if len(names) != 7 {
		t.Errorf("layout archive has entries %q, want oci-layout, index.json, 2 directories and 3 blobs", names)
	}
	var ociLayoutDoc ociLayout
	unmarshal(t, layout["oci-layout"], &ociLayoutDoc)
	if ociLayoutDoc.ImageLayoutVersion != "1.0.0" {
		t.Errorf("oci-layout = %s", layout["oci-layout"])
	}

	var idx index
	unmarshal(t, layout["index.json"], &idx)
	if idx.SchemaVersion != 2 || idx.MediaType != mediaTypeIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json = %s", layout["index.json"])
	}
	md := idx.Manifests[0]
	wantAnnotations := map[string]string{
		"io.containerd.image.name":          "docker.io/library/testbox:latest",
		"org.opencontainers.image.ref.name": "latest",
	}
	if md.MediaType != mediaTypeManifest || !reflect.DeepEqual(md.Annotations, wantAnnotations) {
		t.Errorf("manifest descriptor = %+v, want media type %s and annotations %v", md, mediaTypeManifest, wantAnnotations)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Errorf("manifest descriptor platform = %+v, want linux/%s", md.Platform, runtime.GOARCH)
	}
	if img.Digest() != md.Digest {
		t.Errorf("Digest() = %s, index.json says %s", img.Digest(), md.Digest)
	}

	var m manifest
	unmarshal(t, blobOf(t, layout, md), &m)
	if m.SchemaVersion != 2 || m.MediaType != mediaTypeManifest || m.Config.MediaType != mediaTypeConfig ||
		len(m.Layers) != 1 || m.Layers[0].MediaType != mediaTypeLayer {
		t.Fatalf("manifest = %+v", m)
	}

	var c imageConfig
	unmarshal(t, blobOf(t, layout, m.Config), &c)
	layerGz := blobOf(t, layout, m.Layers[0])
	zr, err := gzip.NewReader(bytes.NewReader(layerGz))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	layerTar, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("decompressing layer: %v", err)
	}
	wantConfig := imageConfig{
		Created:      "1970-01-01T00:00:00Z",
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config: containerConfig{
			User:       cfg.User,
			Env:        cfg.Env,
			Entrypoint: cfg.Entrypoint,
			Cmd:        cfg.Cmd,
			WorkingDir: cfg.WorkingDir,
			Labels:     cfg.Labels,
		},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{sha256Digest(layerTar)}},
		History: []history{{Created: "1970-01-01T00:00:00Z", CreatedBy: createdBy}},
	}
	if !reflect.DeepEqual(c, wantConfig) {
		t.Errorf("image config = %+v\nwant %+v", c, wantConfig)
	}

	// The layer.
	type want struct {
		typ  byte
		mode int64
		data string // content, or link target
	}
	wantLayer := []struct {
		name string
		want
	}{
		{"bin/", want{tar.TypeDir, 0o755, ""}},
		{"bin/agent", want{tar.TypeReg, 0o755, "#!/bin/sh\necho agent\n"}},
		{"bin/sh", want{tar.TypeSymlink, 0o777, "agent"}},
		{"etc/", want{tar.TypeDir, 0o755, ""}},
		{"etc/empty", want{tar.TypeReg, 0o644, ""}},
		{"etc/passwd", want{tar.TypeReg, 0o644, "root:x:0:0::/:/bin/sh\n"}},
		{"tmp/", want{tar.TypeDir, 0o1777, ""}},
		{"usr/", want{tar.TypeDir, 0o755, ""}},
		{"usr/local/", want{tar.TypeDir, 0o755, ""}},
		{"usr/local/bin/", want{tar.TypeDir, 0o755, ""}},
		{"usr/local/bin/suid", want{tar.TypeReg, 0o6750, "x"}},
		{"work/", want{tar.TypeDir, 0o700, ""}},
	}
	got := readTar(t, bytes.NewReader(layerTar))
	if len(got) != len(wantLayer) {
		for _, e := range got {
			t.Logf("layer entry %s", e.hdr.Name)
		}
		t.Fatalf("layer has %d entries, want %d", len(got), len(wantLayer))
	}
	for i, w := range wantLayer {
		h := got[i].hdr
		data := string(got[i].data)
		if h.Typeflag == tar.TypeSymlink {
			data = h.Linkname
		}
		if h.Name != w.name || h.Typeflag != w.typ || h.Mode != w.mode || data != w.data {
			t.Errorf("layer entry %d = %s type %q mode %#o data %q; want %s type %q mode %#o data %q",
				i, h.Name, h.Typeflag, h.Mode, data, w.name, w.typ, w.mode, w.data)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("layer entry %s: mtime %v, uid %d, gid %d; want epoch and root", h.Name, h.ModTime, h.Uid, h.Gid)
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, bytes.Repeat([]byte("busybox"), 10000), 0o755); err != nil {
		t.Fatal(err)
	}
	files := []File{
		{Path: "/bin/busybox", Mode: 0o755, SourcePath: src},
		{Path: "/bin/sh", Symlink: "busybox"},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "/etc/group", Data: []byte("root:x:0:\n")},
	}
	cfg := Config{Cmd: []string{"/bin/sh"}, Labels: map[string]string{"x": "1", "y": "2", "z": "3"}}
	build := func(files []File) []byte {
		var buf bytes.Buffer
		if err := Build(&buf, "example.com/repro:1", cfg, files); err != nil {
			t.Fatalf("Build: %v", err)
		}
		return buf.Bytes()
	}
	first := build(files)
	if second := build(files); !bytes.Equal(first, second) {
		t.Error("two builds of the same input differ")
	}
	// The order of files does not matter, and neither do the host file's
	// times.
	if err := os.Chtimes(src, time.Now(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	reversed := make([]File, len(files))
	for i, f := range files {
		reversed[len(files)-1-i] = f
	}
	if third := build(reversed); !bytes.Equal(first, third) {
		t.Error("a build with files in another order differs")
	}
}

func TestBuildErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name    string
		ref     string
		cfg     Config
		files   []File
		wantErr string
	}{
		{name: "bad ref", ref: "Busybox", wantErr: "must be lowercase"},
		{name: "digest ref", ref: "busybox@sha256:" + strings.Repeat("0", 64), wantErr: "cannot be named by a digest"},
		{name: "tag and digest ref", ref: "busybox:1@sha256:" + strings.Repeat("0", 64), wantErr: "cannot be named by a digest"},
		{name: "bad env", cfg: Config{Env: []string{"PATH"}}, wantErr: "want KEY=VALUE"},
		{name: "relative path", files: []File{{Path: "bin/sh"}}, wantErr: "want an absolute, clean path"},
		{name: "unclean path", files: []File{{Path: "/bin/../sh"}}, wantErr: "want an absolute, clean path"},
		{name: "root", files: []File{{Path: "/", Mode: os.ModeDir}}, wantErr: "want an absolute, clean path"},
		{name: "duplicate", files: []File{{Path: "/a"}, {Path: "/a"}}, wantErr: "listed twice"},
		{name: "file parent", files: []File{{Path: "/a"}, {Path: "/a/b"}}, wantErr: "parent /a is not a directory"},
		{name: "symlink parent", files: []File{{Path: "/lib", Symlink: "usr/lib"}, {Path: "/lib/x/y"}}, wantErr: "parent /lib is not a directory"},
		{name: "data and source", files: []File{{Path: "/a", Data: []byte("x"), SourcePath: "/etc/hostname"}}, wantErr: "both Data and SourcePath"},
		{name: "directory with data", files: []File{{Path: "/a", Mode: os.ModeDir, Data: []byte("x")}}, wantErr: "a directory has no Data"},
		{name: "symlink with data", files: []File{{Path: "/a", Symlink: "b", Data: []byte("x")}}, wantErr: "a symlink has no content"},
		{name: "symlink mode", files: []File{{Path: "/a", Mode: os.ModeSymlink}}, wantErr: "without Symlink target"},
		{name: "device", files: []File{{Path: "/dev/null", Mode: os.ModeDevice | 0o666}}, wantErr: "unsupported file type"},
		{name: "raw sticky bit", files: []File{{Path: "/tmp", Mode: os.ModeDir | 0o1777}}, wantErr: "use os.ModeSetuid"},
		{name: "missing source", files: []File{{Path: "/a", SourcePath: missing}}, wantErr: "no such file"},
		{name: "directory source", files: []File{{Path: "/a", SourcePath: t.TempDir()}}, wantErr: "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref := tt.ref
			if ref == "" {
				ref = "testbox"
			}
			var buf bytes.Buffer
			err := Build(&buf, ref, tt.cfg, tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Build error = %v, want one containing %q", err, tt.wantErr)
			}
			if buf.Len() != 0 {
				t.Errorf("Build wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}
