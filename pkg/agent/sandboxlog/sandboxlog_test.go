package sandboxlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func readAll(t *testing.T, path string) string {
	t.Helper()
	rc, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func fileSizes(t *testing.T, path string) map[string]int64 {
	t.Helper()
	files, err := Files(path)
	if err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		sizes[filepath.Base(f)] = fi.Size()
	}
	return sizes
}

func TestWriterRotates(t *testing.T) {
	for _, maxFiles := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("files=%d", maxFiles), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.log")
			w, err := NewWriter(path, 1024, maxFiles)
			if err != nil {
				t.Fatal(err)
			}
			var all strings.Builder
			for i := 0; i < 500; i++ {
				line := fmt.Sprintf("line %04d\n", i)
				all.WriteString(line)
				if _, err := w.Write([]byte(line)); err != nil {
					t.Fatal(err)
				}
			}
			w.Close()
			sizes := fileSizes(t, path)
			if len(sizes) != maxFiles {
				t.Errorf("files %v, want %d", sizes, maxFiles)
			}
			var total int64
			for name, size := range sizes {
				total += size
				if size > 1024 {
					t.Errorf("%s has %d bytes, above the bound", name, size)
				}
			}
			got := readAll(t, path)
			if int64(len(got)) != total || !strings.HasSuffix(all.String(), got) || !strings.HasPrefix(got, "line ") {
				t.Errorf("content (%d bytes) is not the newest whole lines of what was written", len(got))
			}
			if !strings.HasSuffix(got, "line 0499\n") {
				t.Errorf("the newest line is missing: %q", got[max(0, len(got)-40):])
			}
		})
	}
}

func TestWriterLongWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	w, err := NewWriter(path, 1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	// One write of many lines, and a line longer than a file.
	big := bytes.Repeat([]byte("y\n"), 5000)
	if n, err := w.Write(big); err != nil || n != len(big) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	long := bytes.Repeat([]byte("x"), 3000)
	if n, err := w.Write(append(long, '\n')); err != nil || n != len(long)+1 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	w.Close()
	for name, size := range fileSizes(t, path) {
		if size > 1024 {
			t.Errorf("%s has %d bytes", name, size)
		}
	}
	if got := readAll(t, path); !strings.HasSuffix(got, "xxx\n") || len(got) > 2048 {
		t.Errorf("content %d bytes ending %q", len(got), got[max(0, len(got)-10):])
	}
}

func TestWriterAppendsToExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	if err := os.WriteFile(path, []byte("before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(path, 1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("after\n"))
	w.Close()
	if got := readAll(t, path); got != "before\nafter\n" {
		t.Errorf("content %q", got)
	}
}

func TestFilesOpenSizeRemove(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.log")
	if _, err := Open(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of no log: %v, want ErrNotExist", err)
	}
	for name, data := range map[string]string{"c.log": "3", "c.log.1": "2", "c.log.2": "1", "c.log.x": "no",
		"c.log.01": "no", "c.logs": "no", "d.log": "no"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := Files(path)
	want := []string{path + ".2", path + ".1", path}
	if fmt.Sprint(files) != fmt.Sprint(want) {
		t.Errorf("Files = %v, want %v", files, want)
	}
	if got := readAll(t, path); got != "123" {
		t.Errorf("content %q, want 123", got)
	}
	if n, err := Size(path); err != nil || n != 3 {
		t.Errorf("Size = %d, %v", n, err)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 4 {
		t.Errorf("Remove left %d files, want the 4 of other names", len(left))
	}
	if err := Remove(path); err != nil {
		t.Errorf("removing again: %v", err)
	}
}

func TestArgs(t *testing.T) {
	var args []string
	for k, v := range Args("/var/log/c.log", 4096, 3) {
		args = append(args, k, v)
	}
	if !IsLogger(args) || IsLogger(nil) || IsLogger([]string{"x", ArgFile}) {
		t.Error("IsLogger")
	}
	c, err := parseArgs(args)
	if err != nil || c != (config{path: "/var/log/c.log", maxBytes: 4096, maxFiles: 3}) {
		t.Errorf("parseArgs = %+v, %v", c, err)
	}
	for _, bad := range [][]string{{ArgFile}, {ArgFile, "rel.log"}, {ArgFile, "/a", "--other", "1"}, {ArgFile, "/a", ArgMaxBytes, "x"}} {
		if _, err := parseArgs(bad); err == nil {
			t.Errorf("parseArgs(%q) succeeded", bad)
		}
	}
}

// The test binary runs Main when asked, so that it can be run as the shim
// runs a logging binary.
func TestMain(m *testing.M) {
	if os.Getenv("SANDBOXLOG_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// startLogger runs Main as the shim does: stdout and stderr pipes on
// descriptors 3 and 4, a readiness pipe on 5. It returns the write ends and
// waits until the logger is ready.
func startLogger(t *testing.T, path string) (*exec.Cmd, *os.File, *os.File) {
	t.Helper()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	readyR, readyW, _ := os.Pipe()
	var args []string
	for k, v := range Args(path, 1024, 2) {
		args = append(args, k, v)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = []string{"SANDBOXLOG_TEST_MAIN=1"}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	outR.Close()
	errR.Close()
	readyW.Close()
	if _, err := readyR.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("waiting for the logger: %v", err)
	}
	readyR.Close()
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the log file is not there once the logger is ready: %v", err)
	}
	return cmd, outW, errW
}

func TestMainCopiesBothStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	cmd, out, errw := startLogger(t, path)
	for i := 0; i < 300; i++ {
		fmt.Fprintf(out, "line %d\n", i)
	}
	fmt.Fprintln(out, "the end")
	// The two streams are read apart, in any order: stderr's line goes once
	// stdout's are in the log, so that rotation cannot have dropped it.
	deadline := time.Now().Add(10 * time.Second)
	for data, _ := os.ReadFile(path); !strings.Contains(string(data), "the end"); data, _ = os.ReadFile(path) {
		if time.Now().After(deadline) {
			t.Fatal("stdout never reached the log")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintln(errw, "to stderr")
	out.Close()
	errw.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("logger: %v", err)
	}
	got := readAll(t, path)
	stdout := strings.Replace(got, "to stderr\n", "", 1)
	if !strings.HasSuffix(stdout, "line 299\nthe end\n") || stdout == got || len(got) > 2048 {
		t.Errorf("content (%d bytes) ends %q", len(got), got[max(0, len(got)-30):])
	}
}

func TestMainDrainsOnSIGTERM(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.log")
	cmd, out, errw := startLogger(t, path)
	fmt.Fprintln(out, "last words")
	// As the shim does on delete: its ends closed, then SIGTERM.
	out.Close()
	errw.Close()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("logger: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the logger did not exit")
	}
	if got := readAll(t, path); got != "last words\n" {
		t.Errorf("content %q", got)
	}
}

func TestMainFailsWithoutItsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "c.log")
	cmd := exec.Command(os.Args[0], ArgFile, path)
	cmd.Env = []string{"SANDBOXLOG_TEST_MAIN=1"}
	if err := cmd.Run(); err == nil {
		t.Error("the logger succeeded without its file")
	}
}
