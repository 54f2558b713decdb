// Package sandboxlog writes and reads the bounded log of a sandbox: its
// stdout and stderr in one file, rotated when it reaches a size, keeping a
// fixed number of files.
//
// Writing: the process that writes the log is containerd's shim logging
// binary (a "binary://" log URI, cio.BinaryIO). The shim starts it when it
// creates the container's task, with the container's stdout and stderr as
// file descriptors 3 and 4 and a pipe on file descriptor 5 that it closes
// once it is ready to write; the shim SIGTERMs it when the task is deleted.
// It is the shim's child, not the agent's, so it lives as long as the
// container, through agent restarts. The agent installs the sandbox-init
// binary on the node and names it as the logging binary, with Args; that
// binary runs Main when its arguments say so (IsLogger). This package
// imports only the standard library, to keep sandbox-init small.
//
// Format: the logger stores the output as records, one per line of the
// file, each with the time it was read and its stream (see record.go); the
// readers give back the output itself, and read lines that are not records
// (files written before, or by the shim) as they are.
//
// Files: the current file is the log's path; when writing would take it past
// the size bound, it is renamed to path.1 (path.1 to path.2, and so on, the
// oldest beyond the bound removed) and a new current file begins. Rotation
// happens at a line boundary when the part that fits holds one (the logger's
// records always fit a file); a line longer than the bound is split. So the
// log never holds more than maxBytes*maxFiles bytes. With one file, the
// current file is emptied instead.
//
// Reading: Open returns the output in the files, oldest first, so the
// content reads in order. A rotation while the files are being opened may
// leave out the one file rotated meanwhile; the current file is always
// there. Copy selects and follows it (see follow.go).
package sandboxlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Arguments of the logging binary, as pairs in any order (the shim passes
// the log URI's query parameters as "key value" pairs, in map order).
const (
	ArgFile     = "--sandbox-log"
	ArgMaxBytes = "--sandbox-log-max-bytes"
	ArgMaxFiles = "--sandbox-log-max-files"
)

// Descriptors the shim gives its logging binary.
const (
	fdStdout = 3
	fdStderr = 4
	fdReady  = 5
)

// drainTimeout bounds how long the logger goes on reading after SIGTERM
// (the shim waits 12 s before it kills it). The shim closes its ends of the
// pipes first, so the end of the output comes at once.
const drainTimeout = 5 * time.Second

// Args are the logging binary's arguments for a log at path.
func Args(path string, maxBytes int64, maxFiles int) map[string]string {
	return map[string]string{
		ArgFile:     path,
		ArgMaxBytes: strconv.FormatInt(maxBytes, 10),
		ArgMaxFiles: strconv.Itoa(maxFiles),
	}
}

// IsLogger says whether a process's arguments (without the program name)
// are those of the logging binary.
func IsLogger(args []string) bool {
	for i := 0; i+1 < len(args); i += 2 {
		if args[i] == ArgFile {
			return true
		}
	}
	return false
}

// config is what the logging binary's arguments say.
type config struct {
	path     string
	maxBytes int64
	maxFiles int
}

func parseArgs(args []string) (config, error) {
	if len(args)%2 != 0 {
		return config{}, fmt.Errorf("arguments %q are not key-value pairs", args)
	}
	var c config
	for i := 0; i < len(args); i += 2 {
		k, v := args[i], args[i+1]
		var err error
		switch k {
		case ArgFile:
			c.path = v
		case ArgMaxBytes:
			c.maxBytes, err = strconv.ParseInt(v, 10, 64)
		case ArgMaxFiles:
			c.maxFiles, err = strconv.Atoi(v)
		default:
			err = errors.New("unknown argument")
		}
		if err != nil {
			return config{}, fmt.Errorf("%s %q: %w", k, v, err)
		}
	}
	if !filepath.IsAbs(c.path) {
		return config{}, fmt.Errorf("%s %q: not an absolute path", ArgFile, c.path)
	}
	return c, nil
}

// Main is the logging binary: it copies descriptors 3 and 4 (stdout and
// stderr) into the log its arguments name, as records of their stream,
// until both end (or a while after SIGTERM), and returns
// the exit code. It signals the shim that it is ready by closing descriptor
// 5 once the log file is open; if it cannot open it, it exits without
// creating the file (the agent checks that the file exists).
func Main(args []string) int {
	terminated := make(chan os.Signal, 1)
	signal.Notify(terminated, syscall.SIGTERM, syscall.SIGINT)
	c, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sandbox logger: %v\n", err)
		return 2
	}
	w, err := NewWriter(c.path, c.maxBytes, c.maxFiles)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sandbox logger: %v\n", err)
		return 1
	}
	defer func() { _ = w.Close() }()
	if ready := os.NewFile(fdReady, "ready"); ready != nil {
		_ = ready.Close()
	}
	var wg sync.WaitGroup
	for _, s := range []struct {
		fd     uintptr
		stream string
	}{{fdStdout, Stdout}, {fdStderr, Stderr}} {
		f := os.NewFile(s.fd, s.stream)
		if f == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { _ = f.Close() }()
			copyRecords(w, s.stream, f)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-terminated:
		select {
		case <-done:
		case <-time.After(drainTimeout):
		}
	}
	return 0
}

// copyRecords copies r, the output of stream, into w as records until r
// ends: what one read returns is written at once, in one Write. A failed
// write (a full disk) drops that output and goes on: the container must
// never block on its log, nor get EPIPE because its logger stopped reading.
func copyRecords(w *Writer, stream string, r io.Reader) {
	buf := make([]byte, 32<<10)
	var out []byte
	maxContent := w.maxContent()
	for {
		n, err := r.Read(buf)
		if n > 0 {
			out = appendRecords(out[:0], time.Now(), stream, buf[:n], maxContent)
			_, _ = w.Write(out)
		}
		if err != nil {
			return
		}
	}
}

// Writer writes a log at a path, rotated at maxBytes, keeping maxFiles files
// (the current one included). It is safe for concurrent use; each Write
// lands in the files as one piece, but for rotation.
type Writer struct {
	path     string
	maxBytes int64
	maxFiles int

	mu   sync.Mutex
	f    *os.File // nil after a failed reopen: the next write retries
	size int64
}

// NewWriter opens (creating or appending to) the log at path. A maxBytes
// below 1 KiB is taken as 1 KiB, a maxFiles below 1 as 1.
func NewWriter(path string, maxBytes int64, maxFiles int) (*Writer, error) {
	w := &Writer{path: path, maxBytes: max(maxBytes, 1024), maxFiles: max(maxFiles, 1)}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return err
	}
	w.f, w.size = f, fi.Size()
	return nil
}

// Write appends p, rotating first whenever p would take the current file
// past maxBytes (at the last line boundary of the part that fits, if any).
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	n := 0
	for len(p) > 0 {
		room := w.maxBytes - w.size
		if int64(len(p)) <= room {
			m, err := w.f.Write(p)
			w.size += int64(m)
			return n + m, err
		}
		cut := 0
		if room > 0 {
			if i := bytes.LastIndexByte(p[:room], '\n'); i >= 0 {
				cut = i + 1
			} else if w.size == 0 {
				cut = int(room) // a line longer than a whole file
			}
		}
		if cut > 0 {
			m, err := w.f.Write(p[:cut])
			w.size += int64(m)
			n += m
			p = p[m:]
			if err != nil {
				return n, err
			}
		}
		if err := w.rotate(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// rotate starts a new current file, shifting the others.
func (w *Writer) rotate() error {
	if w.maxFiles == 1 {
		if err := w.f.Truncate(0); err != nil {
			return err
		}
		w.size = 0
		return nil
	}
	for i := w.maxFiles - 1; i > 1; i-- {
		if err := os.Rename(rotated(w.path, i-1), rotated(w.path, i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(w.path, rotated(w.path, 1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	_ = w.f.Close()
	w.f = nil
	return w.open()
}

// maxContent is the most content a record may have to fit a file whole.
func (w *Writer) maxContent() int {
	return int(min(maxRecordContent, w.maxBytes-recordOverhead))
}

// Close closes the current file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

func rotated(path string, i int) string { return path + "." + strconv.Itoa(i) }

// Files are the files of the log at path that exist, oldest first: the
// rotated ones (path.N, highest N first), then path.
func Files(path string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Dir(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	base := filepath.Base(path)
	var nums []int
	current := false
	for _, e := range entries {
		name := e.Name()
		if name == base {
			current = true
			continue
		}
		if rest, ok := strings.CutPrefix(name, base+"."); ok {
			if n, err := strconv.Atoi(rest); err == nil && n > 0 && strconv.Itoa(n) == rest {
				nums = append(nums, n)
			}
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(nums)))
	files := make([]string, 0, len(nums)+1)
	for _, n := range nums {
		files = append(files, rotated(path, n))
	}
	if current {
		files = append(files, path)
	}
	return files, nil
}

// Size is the bytes the log at path holds on disk, all its files together.
func Size(path string) (int64, error) {
	files, err := Files(path)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, p := range files {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		total += fi.Size()
	}
	return total, nil
}

// Remove removes every file of the log at path; a log that is not there is
// no error.
func Remove(path string) error {
	files, err := Files(path)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range files {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
