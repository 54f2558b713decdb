package main

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"

	"github.com/fast-sandbox/fast-sandbox/pkg/ociimage"
)

const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
	group = "root:x:0:\n" +
		"nobody:x:65534:\n"
)

// defaultFiles are in every image unless the command line replaces them.
func defaultFiles() []ociimage.File {
	return []ociimage.File{
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(group)},
	}
}

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
	base := fileSet{}
	for _, f := range defaultFiles() {
		base.add(f, true)
	}
	if o.busybox != "" {
		bb, err := busyboxFiles(o.busybox)
		if err != nil {
			return nil, err
		}
		for _, f := range bb {
			base.add(f, true)
		}
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
	bin, isELF, err := readELF(src)
	if err != nil {
		return ociimage.File{}, fmt.Errorf("file argument %q: %w", spec, err)
	}
	if isELF {
		for _, problem := range bin.problems() {
			fmt.Fprintf(stderr, "imagebuild: warning: %s %s\n", src, problem)
		}
	}
	mode := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	return ociimage.File{Path: dst, Mode: mode, SourcePath: src}, nil
}

// busyboxFiles returns /bin/busybox, copied from the static binary at src,
// and a symlink to it in /bin for each applet that it lists.
func busyboxFiles(src string) ([]ociimage.File, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("-busybox: %w", err)
	}
	bin, isELF, err := readELF(src)
	if err != nil {
		return nil, fmt.Errorf("-busybox: %w", err)
	}
	if !isELF {
		return nil, fmt.Errorf("-busybox: %s is not an ELF binary", src)
	}
	if problems := bin.problems(); len(problems) > 0 {
		return nil, fmt.Errorf("-busybox: %s %s (on Debian, the static binary is /bin/busybox of package busybox-static)", src, strings.Join(problems, "; "))
	}

	var stderr bytes.Buffer
	cmd := exec.Command(src, "--list")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("-busybox: listing applets with %s --list: %w: %s", src, err, bytes.TrimSpace(stderr.Bytes()))
	}
	files := []ociimage.File{{Path: "/bin/busybox", Mode: fi.Mode().Perm(), SourcePath: src}}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		files = append(files, ociimage.File{Path: "/bin/" + applet, Symlink: "busybox"})
	}
	if len(files) == 1 {
		return nil, fmt.Errorf("-busybox: %s --list printed no applets", src)
	}
	return files, nil
}

// elfBinary is what imagebuild checks of an ELF file.
type elfBinary struct {
	interp  string // dynamic loader; empty for a static binary
	machine elf.Machine
}

// hostMachines are the ELF machines of the architectures Go runs on, for
// the image's architecture, runtime.GOARCH.
var hostMachines = map[string]elf.Machine{
	"386":     elf.EM_386,
	"amd64":   elf.EM_X86_64,
	"arm":     elf.EM_ARM,
	"arm64":   elf.EM_AARCH64,
	"loong64": elf.EM_LOONGARCH,
	"ppc64le": elf.EM_PPC64,
	"riscv64": elf.EM_RISCV,
	"s390x":   elf.EM_S390,
}

// problems returns why the binary may not run in an image that has no
// shared libraries and the host's architecture.
func (b elfBinary) problems() []string {
	var p []string
	if b.interp != "" {
		p = append(p, fmt.Sprintf("is dynamically linked (interpreter %s), but the image has no shared libraries", b.interp))
	}
	if want, known := hostMachines[runtime.GOARCH]; known && b.machine != want {
		p = append(p, fmt.Sprintf("is for %v, but the image is for %s (%v)", b.machine, runtime.GOARCH, want))
	}
	return p
}

// readELF reports whether the file at path is an ELF file and, if so, its
// properties.
func readELF(path string) (bin elfBinary, isELF bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return bin, false, err
	}
	defer f.Close()
	magic := make([]byte, len(elf.ELFMAG))
	if _, err := io.ReadFull(f, magic); errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return bin, false, nil // shorter than the magic number
	} else if err != nil {
		return bin, false, fmt.Errorf("reading %s: %w", path, err)
	}
	if string(magic) != elf.ELFMAG {
		return bin, false, nil
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return bin, true, fmt.Errorf("reading ELF file %s: %w", path, err)
	}
	bin.machine = ef.Machine
	for _, prog := range ef.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		interp, err := io.ReadAll(prog.Open())
		if err != nil {
			return bin, true, fmt.Errorf("reading ELF interpreter of %s: %w", path, err)
		}
		bin.interp = strings.TrimRight(string(interp), "\x00")
		break
	}
	return bin, true, nil
}
