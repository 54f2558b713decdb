package ociimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// hostBusybox is the busybox binary that the busybox tests use if it is
// there, as Debian's busybox-static installs it.
const hostBusybox = "/bin/busybox"

// writeTempFile writes data to a new file in a temporary directory and returns
// its path.
func writeTempFile(t *testing.T, name string, data []byte, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

// elfHeader returns a 64-bit ELF header for machine with no program or
// section headers: a well-formed ELF file without an interpreter, which the
// kernel refuses to execute.
func elfHeader(t *testing.T, machine elf.Machine) []byte {
	t.Helper()
	h := elf.Header64{
		Type:    uint16(elf.ET_EXEC),
		Machine: uint16(machine),
		Version: uint32(elf.EV_CURRENT),
		Ehsize:  64,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, h); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBaseFiles(t *testing.T) {
	byPath := map[string]File{}
	for _, f := range BaseFiles() {
		byPath[f.Path] = f
	}
	if len(byPath) != 3 {
		t.Fatalf("BaseFiles paths = %v, want /tmp, /etc/passwd and /etc/group", byPath)
	}
	if got, want := byPath["/tmp"].Mode, os.ModeDir|os.ModeSticky|0o777; got != want {
		t.Errorf("/tmp mode = %v, want %v", got, want)
	}
	for p, want := range map[string][]string{
		"/etc/passwd": {"root:x:0:0:", "nobody:x:65534:65534:"},
		"/etc/group":  {"root:x:0:", "nobody:x:65534:"},
	} {
		f := byPath[p]
		if f.Mode != 0o644 {
			t.Errorf("%s mode = %v, want 0644", p, f.Mode)
		}
		for _, line := range want {
			if !strings.Contains(string(f.Data), "\n"+line) && !strings.HasPrefix(string(f.Data), line) {
				t.Errorf("%s = %q, want a line starting %q", p, f.Data, line)
			}
		}
	}

	// Each call returns its own files.
	BaseFiles()[1].Data[0] = 'X'
	if got := BaseFiles()[1].Data[0]; got == 'X' {
		t.Error("changing the Data of a BaseFiles result changed later results")
	}
	if err := Build(io.Discard, "testbox", Config{}, BaseFiles()); err != nil {
		t.Errorf("Build(BaseFiles()) = %v", err)
	}
}

func TestBusyboxFiles(t *testing.T) {
	// otherMachine is an architecture that the image is not for.
	otherMachine := elf.EM_S390
	if hostMachines[runtime.GOARCH] == otherMachine {
		otherMachine = elf.EM_X86_64
	}
	hostMachine, knownHost := hostMachines[runtime.GOARCH]

	tests := []struct {
		name string
		// src returns the busybox path, or skips the test.
		src     func(t *testing.T) string
		wantErr string // empty for success
		// wantNotELF and wantBinaryError are the error's type, as
		// CheckStaticBinary reports it.
		wantNotELF, wantBinaryError bool
	}{
		{
			name: "static busybox",
			src: func(t *testing.T) string {
				if _, err := os.Stat(hostBusybox); err != nil {
					t.Skipf("no static busybox binary to test with (%v); on Debian, apt-get install busybox-static", err)
				}
				if err := CheckStaticBinary(hostBusybox); err != nil {
					t.Skipf("%s is not a usable static busybox (%v); on Debian, apt-get install busybox-static", hostBusybox, err)
				}
				return hostBusybox
			},
		},
		{
			name:            "dynamically linked",
			src:             func(*testing.T) string { return "/bin/ls" },
			wantErr:         "is dynamically linked (interpreter ",
			wantBinaryError: true,
		},
		{
			name: "not ELF",
			src: func(t *testing.T) string {
				return writeTempFile(t, "busybox", []byte("#!/bin/sh\necho sh\n"), 0o755)
			},
			wantErr:    "busybox is not an ELF binary",
			wantNotELF: true,
		},
		{
			name:       "empty",
			src:        func(t *testing.T) string { return writeTempFile(t, "busybox", nil, 0o755) },
			wantErr:    "is not an ELF binary",
			wantNotELF: true,
		},
		{
			name: "other architecture",
			src: func(t *testing.T) string {
				return writeTempFile(t, "busybox", elfHeader(t, otherMachine), 0o755)
			},
			wantErr:         "is for " + otherMachine.String() + ", but the image is for " + runtime.GOARCH,
			wantBinaryError: true,
		},
		{
			name: "malformed ELF",
			src: func(t *testing.T) string {
				return writeTempFile(t, "busybox", append([]byte(elf.ELFMAG), 0xff, 0xff, 0xff), 0o755)
			},
			wantErr: "reading ELF file",
		},
		{
			name: "cannot list applets",
			src: func(t *testing.T) string {
				if !knownHost {
					t.Skipf("no ELF machine known for %s", runtime.GOARCH)
				}
				return writeTempFile(t, "busybox", elfHeader(t, hostMachine), 0o755)
			},
			wantErr: "--list: ",
		},
		{
			name:    "missing",
			src:     func(t *testing.T) string { return filepath.Join(t.TempDir(), "busybox") },
			wantErr: "no such file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.src(t)
			files, err := BusyboxFiles(src)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("BusyboxFiles(%s) error = %v, want one containing %q", src, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), src) {
					t.Errorf("BusyboxFiles(%s) error = %v, want one naming the binary", src, err)
				}
				if got := errors.Is(err, ErrNotELF); got != tt.wantNotELF {
					t.Errorf("errors.Is(%v, ErrNotELF) = %v, want %v", err, got, tt.wantNotELF)
				}
				var be *BinaryError
				if got := errors.As(err, &be); got != tt.wantBinaryError {
					t.Errorf("errors.As(%v, *BinaryError) = %v, want %v", err, got, tt.wantBinaryError)
				} else if got && (be.Path != src || len(be.Problems) == 0) {
					t.Errorf("BinaryError = %+v, want Path %s and problems", be, src)
				}
				if files != nil {
					t.Errorf("BusyboxFiles returned %d files with its error", len(files))
				}
				return
			}
			if err != nil {
				t.Fatalf("BusyboxFiles(%s) = %v", src, err)
			}
			checkBusyboxFiles(t, src, files)
		})
	}
}

// checkBusyboxFiles checks the BusyboxFiles of the busybox binary at src.
func checkBusyboxFiles(t *testing.T, src string, files []File) {
	t.Helper()
	byPath := map[string]File{}
	for _, f := range files {
		if _, dup := byPath[f.Path]; dup {
			t.Errorf("%s listed twice", f.Path)
		}
		byPath[f.Path] = f
	}
	for _, want := range BaseFiles() {
		got, ok := byPath[want.Path]
		if !ok || got.Mode != want.Mode || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("base file %s = %+v (present %v), want %+v", want.Path, got, ok, want)
		}
	}
	bb, ok := byPath["/bin/busybox"]
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || bb.SourcePath != src || bb.Symlink != "" || bb.Mode != fi.Mode().Perm() {
		t.Errorf("/bin/busybox = %+v (present %v), want a copy of %s with mode %v", bb, ok, src, fi.Mode().Perm())
	}
	// Every applet, and only those, are symlinks to busybox.
	applets := 0
	for _, f := range files {
		if f.Symlink == "" {
			continue
		}
		applets++
		if f.Symlink != "busybox" || filepath.Dir(f.Path) != "/bin" {
			t.Errorf("%s -> %s, want a symlink /bin/APPLET -> busybox", f.Path, f.Symlink)
		}
	}
	if want := len(files) - len(BaseFiles()) - 1; applets != want {
		t.Errorf("%d applet symlinks among %d other files, want %d", applets, len(files), want)
	}
	for _, applet := range []string{"sh", "ls", "cat", "echo"} {
		if f, ok := byPath["/bin/"+applet]; !ok || f.Symlink != "busybox" {
			t.Errorf("/bin/%s = %+v (present %v), want a symlink to busybox", applet, f, ok)
		}
	}
	if err := Build(io.Discard, "testbox", Config{}, files); err != nil {
		t.Errorf("Build(BusyboxFiles(%s)) = %v", src, err)
	}
}
