package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
)

// fileSet collects the files of an image by path.
type fileSet map[string]ociimage.File

// add adds f, which replaces an earlier file at its path only when replace
// is true.
func (s fileSet) add(f ociimage.File, replace bool) error {
	if _, dup := s[f.Path]; dup && !replace {
		return fmt.Errorf("%s is given twice", f.Path)
	}
	s[f.Path] = f
	return nil
}

// files returns the image's files: the defaults, busybox, then the
// -symlink flags and the SRC:DST arguments, which replace the files before
// them but not each other.
func (o *options) files(stderr io.Writer) ([]ociimage.File, error) {
	defaults := ociimage.BaseFiles()
	if o.busybox != "" {
		bb, err := ociimage.BusyboxFiles(o.busybox) // includes BaseFiles
		if err != nil {
			return nil, fmt.Errorf("-busybox: %w", err)
		}
		defaults = bb
	}
	base := fileSet{}
	for _, f := range defaults {
		_ = base.add(f, true) // replacing: never an error
	}

	user := fileSet{}
	for _, s := range o.symlinks {
		dst, target, ok := strings.Cut(s, "=")
		if !ok || dst == "" || target == "" {
			return nil, fmt.Errorf("-symlink %q: want DST=TARGET", s)
		}
		if err := user.add(ociimage.File{Path: dst, Symlink: target}, false); err != nil {
			return nil, fmt.Errorf("-symlink %q: %w", s, err)
		}
	}
	for _, spec := range o.specs {
		f, err := hostFile(spec, stderr)
		if err != nil {
			return nil, err
		}
		if err := user.add(f, false); err != nil {
			return nil, fmt.Errorf("%s: %w", spec, err)
		}
	}

	for p, f := range user {
		base[p] = f
	}
	files := make([]ociimage.File, 0, len(base))
	for _, f := range base {
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// hostFile returns the image file of a SRC:DST argument, and warns on
// stderr about binaries that will not run in the image.
func hostFile(spec string, stderr io.Writer) (ociimage.File, error) {
	if strings.HasPrefix(spec, "-") {
		return ociimage.File{}, fmt.Errorf("file argument %q: flags must come before the SRC:DST arguments", spec)
	}
	i := strings.LastIndexByte(spec, ':')
	if i <= 0 || i == len(spec)-1 {
		return ociimage.File{}, fmt.Errorf("file argument %q: want SRC:DST", spec)
	}
	src, dst := spec[:i], spec[i+1:]
	if !path.IsAbs(dst) {
		return ociimage.File{}, fmt.Errorf("file argument %q: DST must be an absolute path", spec)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return ociimage.File{}, fmt.Errorf("file argument %q: %w", spec, err)
	}
	if !fi.Mode().IsRegular() {
		return ociimage.File{}, fmt.Errorf("file argument %q: %s is not a regular file", spec, src)
	}
	var binErr *ociimage.BinaryError
	switch err := ociimage.CheckStaticBinary(src); {
	case err == nil, errors.Is(err, ociimage.ErrNotELF):
	case errors.As(err, &binErr):
		for _, problem := range binErr.Problems {
			_, _ = fmt.Fprintf(stderr, "imagebuild: warning: %s %s\n", src, problem)
		}
	default:
		return ociimage.File{}, fmt.Errorf("file argument %q: %w", spec, err)
	}
	mode := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	return ociimage.File{Path: dst, Mode: mode, SourcePath: src}, nil
}
