package ociimage

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

const (
	passwd = "root:x:0:0:root:/root:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
	group = "root:x:0:\n" +
		"nobody:x:65534:\n"
)

// BaseFiles returns the files that every image needs: /tmp (mode 1777), and
// /etc/passwd and /etc/group with root (0) and nobody (65534) entries.
// Each call returns new slices, which the caller may modify.
func BaseFiles() []File {
	return []File{
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(group)},
	}
}

// BusyboxFiles returns the files of a busybox shell image: BaseFiles, then
// /bin/busybox, copied from the static busybox binary at src when the image
// is built, and a symbolic link /bin/APPLET to it for each applet that
// src --list prints. It runs src --list.
//
// It fails if src is not an ELF binary, is dynamically linked or is for
// another architecture than runtime.GOARCH (see CheckStaticBinary), or
// lists no applets. The result has no duplicate paths, so it can be passed
// to New or Build as it is, or extended with files at other paths.
func BusyboxFiles(src string) ([]File, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if err := CheckStaticBinary(src); err != nil {
		var be *BinaryError
		if errors.As(err, &be) {
			return nil, fmt.Errorf("%w (on Debian, the static binary is /bin/busybox of package busybox-static)", err)
		}
		return nil, err
	}

	var stderr bytes.Buffer
	cmd := exec.Command(src, "--list")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("listing applets with %s --list: %w: %s", src, err, bytes.TrimSpace(stderr.Bytes()))
	}
	files := append(BaseFiles(), File{Path: "/bin/busybox", Mode: fi.Mode().Perm(), SourcePath: src})
	seen := map[string]bool{"busybox": true}
	for _, applet := range strings.Fields(string(out)) {
		if seen[applet] || applet == "." || applet == ".." || strings.Contains(applet, "/") {
			continue
		}
		seen[applet] = true
		files = append(files, File{Path: "/bin/" + applet, Symlink: "busybox"})
	}
	if len(seen) == 1 {
		return nil, fmt.Errorf("%s --list printed no applets", src)
	}
	return files, nil
}

// ErrNotELF is returned, wrapped, by CheckStaticBinary for a file that is
// not an ELF binary (its error reads "PATH is not an ELF binary").
var ErrNotELF = errors.New("not an ELF binary")

// BinaryError is returned by CheckStaticBinary for an ELF binary that may
// not run in an image: one that has no shared libraries and is for
// runtime.GOARCH.
type BinaryError struct {
	// Path is the binary's path, as given to CheckStaticBinary.
	Path string
	// Problems says why the binary may not run, each starting with "is",
	// like "is dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2),
	// but the image has no shared libraries".
	Problems []string
}

func (e *BinaryError) Error() string {
	return e.Path + " " + strings.Join(e.Problems, "; ")
}

// CheckStaticBinary checks that the file at path is a statically linked
// ELF binary for runtime.GOARCH, which is what images without shared
// libraries can run. It returns nil if so, an error wrapping ErrNotELF if
// the file is not an ELF file, a *BinaryError if the binary is dynamically
// linked or for another architecture, and another error if the file
// cannot be read or is a malformed ELF file.
func CheckStaticBinary(path string) error {
	bin, isELF, err := readELF(path)
	if err != nil {
		return err
	}
	if !isELF {
		return fmt.Errorf("%s is %w", path, ErrNotELF)
	}
	if problems := bin.problems(); len(problems) > 0 {
		return &BinaryError{Path: path, Problems: problems}
	}
	return nil
}

// elfBinary is what CheckStaticBinary checks of an ELF file.
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
	defer func() { _ = f.Close() }()
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
