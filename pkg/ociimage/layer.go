package ociimage

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"
)

// epoch is the modification time of every archive entry, so that builds
// are reproducible.
var epoch = time.Unix(0, 0).UTC()

// File is one entry of the image's file system: a regular file, a
// directory or a symbolic link.
//
// Parent directories that Files do not list are created with mode 0755.
// Everything belongs to uid and gid 0 and has its modification time at the
// Unix epoch.
type File struct {
	// Path is the entry's absolute, clean path in the image, like
	// "/bin/busybox".
	Path string
	// Mode holds the permission bits, os.ModeSetuid, os.ModeSetgid and
	// os.ModeSticky, and os.ModeDir for a directory (a directory with
	// the sticky bit and mode 1777 is os.ModeDir|os.ModeSticky|0o777).
	// Zero permission bits mean 0644 for a regular file and 0755 for a
	// directory. Mode is ignored for symbolic links.
	Mode os.FileMode
	// Data is the content of a regular file.
	Data []byte
	// SourcePath, if not empty, names a regular host file that holds the
	// content of a regular file instead of Data. It is read when the
	// image is built; its own mode and times are not used.
	SourcePath string
	// Symlink, if not empty, makes the entry a symbolic link with this
	// target.
	Symlink string
}

// specialBits are the mode bits of File.Mode that may be set besides the
// permission bits and os.ModeDir.
const specialBits = os.ModeSetuid | os.ModeSetgid | os.ModeSticky

type entryKind int

const (
	kindRegular entryKind = iota
	kindDir
	kindSymlink
)

// entry is a validated File, or a parent directory that no File lists.
type entry struct {
	File
	kind entryKind
}

// tarName is the entry's name in the layer archive: relative, with a
// trailing slash for directories.
func (e *entry) tarName() string {
	name := e.Path[1:]
	if e.kind == kindDir {
		name += "/"
	}
	return name
}

// newEntry validates f.
func newEntry(f File) (*entry, error) {
	e := &entry{File: f}
	if f.Path == "" || f.Path[0] != '/' || path.Clean(f.Path) != f.Path || f.Path == "/" {
		return nil, fmt.Errorf("file path %q: want an absolute, clean path other than /", f.Path)
	}
	hasContent := f.Data != nil || f.SourcePath != ""
	switch {
	case f.Symlink != "":
		if hasContent || f.Mode.IsDir() {
			return nil, fmt.Errorf("file %s: a symlink has no content and is not a directory", f.Path)
		}
		e.kind = kindSymlink
		return e, nil
	case f.Mode&os.ModeSymlink != 0:
		return nil, fmt.Errorf("file %s: symlink mode without Symlink target", f.Path)
	case f.Mode.IsDir():
		if hasContent {
			return nil, fmt.Errorf("file %s: a directory has no Data or SourcePath", f.Path)
		}
		e.kind = kindDir
	case f.Mode.Type() != 0:
		return nil, fmt.Errorf("file %s: unsupported file type %v", f.Path, f.Mode.Type())
	default:
		if f.Data != nil && f.SourcePath != "" {
			return nil, fmt.Errorf("file %s: both Data and SourcePath set", f.Path)
		}
		e.kind = kindRegular
	}
	if extra := f.Mode &^ (os.ModePerm | os.ModeDir | specialBits); extra != 0 {
		return nil, fmt.Errorf("file %s: unsupported mode bits %#o (use os.ModeSetuid, os.ModeSetgid and os.ModeSticky for the special bits)", f.Path, uint32(extra))
	}
	if f.Mode.Perm() == 0 {
		if e.kind == kindDir {
			e.Mode |= 0o755
		} else {
			e.Mode |= 0o644
		}
	}
	return e, nil
}

// tarMode converts the permission and special bits of an os.FileMode to
// the Unix mode of a tar header.
func tarMode(m os.FileMode) int64 {
	mode := int64(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// layerEntries validates files, adds the parent directories they do not
// list, and sorts the result by path, which puts every directory before
// its contents.
func layerEntries(files []File) ([]*entry, error) {
	byPath := make(map[string]*entry, len(files))
	for _, f := range files {
		e, err := newEntry(f)
		if err != nil {
			return nil, err
		}
		if _, dup := byPath[f.Path]; dup {
			return nil, fmt.Errorf("file %s listed twice", f.Path)
		}
		byPath[f.Path] = e
	}
	for _, f := range files {
		for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
			parent, ok := byPath[dir]
			if !ok {
				byPath[dir] = &entry{File: File{Path: dir, Mode: os.ModeDir | 0o755}, kind: kindDir}
				continue
			}
			if parent.kind != kindDir {
				return nil, fmt.Errorf("file %s: parent %s is not a directory", f.Path, dir)
			}
		}
	}
	entries := make([]*entry, 0, len(byPath))
	for _, e := range byPath {
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
	return entries, nil
}

// writeLayer writes entries as an uncompressed layer tar archive to w.
func writeLayer(w io.Writer, entries []*entry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		if err := writeEntry(tw, e); err != nil {
			return fmt.Errorf("layer entry %s: %w", e.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finishing layer archive: %w", err)
	}
	return nil
}

func writeEntry(tw *tar.Writer, e *entry) error {
	hdr := &tar.Header{Name: e.tarName(), Mode: tarMode(e.Mode), ModTime: epoch}
	switch e.kind {
	case kindDir:
		hdr.Typeflag = tar.TypeDir
		return tw.WriteHeader(hdr)
	case kindSymlink:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = e.Symlink
		hdr.Mode = 0o777
		return tw.WriteHeader(hdr)
	}
	hdr.Typeflag = tar.TypeReg
	if e.SourcePath == "" {
		hdr.Size = int64(len(e.Data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(e.Data)
		return err
	}

	f, err := os.Open(e.SourcePath)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("source %s is not a regular file", e.SourcePath)
	}
	hdr.Size = fi.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
	if err != nil {
		return fmt.Errorf("copying %s: %w", e.SourcePath, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("source %s shrank from %d to %d bytes while it was read", e.SourcePath, hdr.Size, n)
	}
	return nil
}
