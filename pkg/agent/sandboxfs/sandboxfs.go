// Package sandboxfs implements file operations inside a sandbox's root that
// cannot escape it.
//
// Every path is resolved by the kernel with openat2(2) relative to the
// root's file descriptor and RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS: the root
// acts as "/" for the lookup, so "..", absolute paths and absolute or
// relative symlinks are all clamped to it (chroot semantics, the meaning a
// path has for the sandbox's processes), and magic links such as
// /proc/<pid>/root or /proc/<pid>/fd/N, which would jump out of the root,
// are refused. Nothing is resolved in user space and there is no fallback:
// on a kernel without openat2 (before Linux 5.6) every call fails.
//
// Paths may be absolute ("/etc/hosts") or relative ("etc/hosts"); both
// mean the same file below the root. A path must not be empty nor contain a
// NUL byte.
//
// RESOLVE_NO_XDEV is deliberately not used: the sandbox's own mounts (e.g.
// a tmpfs on /tmp) are below its root and must be reachable.
package sandboxfs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime"
)

// Errors returned, wrapped with the operation and path; test them with
// errors.Is.
var (
	// ErrNotFound: the path, or for WriteFile its parent directory, does
	// not exist (or a parent element is not a directory).
	ErrNotFound = errors.New("no such file or directory")
	// ErrNotRegular: the file's type does not fit the operation. ReadFile
	// and WriteFile handle regular files only (never a directory, FIFO,
	// socket or device); List needs a directory.
	ErrNotRegular = errors.New("wrong file type")
	// ErrTooLarge: a file is larger than the caller's bound, content to be
	// written is, or a directory has more than MaxListEntries entries.
	ErrTooLarge = errors.New("too large")
	// ErrEscape: the path is invalid or cannot be resolved inside the root:
	// empty, containing NUL, too long, a symlink loop or a magic link.
	ErrEscape = errors.New("invalid path or path escapes the sandbox root")
)

// MaxListEntries bounds the entries List returns.
const MaxListEntries = 10000

// resolveFlags are used for every lookup below the root.
const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// maxRetries bounds the retries of an openat2 that answers EAGAIN (the
// kernel saw a concurrent rename or mount while resolving "..").
const maxRetries = 64

// errNoOpenat2 is returned when the kernel (or a seccomp filter) lacks
// openat2. There is deliberately no fallback to unchecked resolution.
var errNoOpenat2 = fmt.Errorf("sandboxfs: openat2(2) is not available (Linux 5.6 or later is needed); refusing to resolve paths without it: %w", errors.ErrUnsupported)

// checkPath validates a path before it reaches the kernel.
func checkPath(p string) error {
	if p == "" {
		return fmt.Errorf("empty path: %w", ErrEscape)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("path contains NUL: %w", ErrEscape)
	}
	if len(p) >= unix.PathMax {
		return fmt.Errorf("path longer than %d bytes: %w", unix.PathMax-1, ErrEscape)
	}
	return nil
}

// rootFd runs fn with the root's descriptor, keeping the *os.File alive
// (and not closed) while fn runs.
func rootFd(root *os.File, fn func(fd int) error) error {
	if root == nil {
		return errors.New("sandboxfs: nil root")
	}
	rc, err := root.SyscallConn()
	if err != nil {
		return fmt.Errorf("sandboxfs: root: %w", err)
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		return fmt.Errorf("sandboxfs: root: %w", err)
	}
	return fnErr
}

// openat2 opens p relative to dirfd with RESOLVE_IN_ROOT (dirfd acts as
// "/") and RESOLVE_NO_MAGICLINKS plus extra. O_CLOEXEC is always added.
func openat2(dirfd int, p string, flags uint64, mode uint32, extra uint64) (int, error) {
	how := unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Mode:    uint64(mode),
		Resolve: resolveFlags | extra,
	}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(dirfd, p, &how)
		if err == unix.EINTR || (err == unix.EAGAIN && i < maxRetries) {
			continue
		}
		return fd, err
	}
}

// resolve opens p below root with flags (O_PATH, O_DIRECTORY, O_NOFOLLOW
// …); it is the single entry point of every lookup.
func resolve(rootfd int, p string, flags uint64) (int, error) {
	if err := checkPath(p); err != nil {
		return -1, err
	}
	fd, err := openat2(rootfd, p, flags, 0, 0)
	if err != nil {
		return -1, mapErr(err)
	}
	return fd, nil
}

// mapErr turns an errno of a lookup into one of the package's errors, and
// leaves other errors (EACCES, EROFS, EIO …) as they are.
func mapErr(err error) error {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case unix.ENOSYS:
		return errNoOpenat2
	case unix.ENOENT:
		return ErrNotFound
	case unix.ENOTDIR:
		// A parent element is not a directory: the path does not exist.
		return fmt.Errorf("%w (a parent is not a directory)", ErrNotFound)
	case unix.ELOOP:
		return fmt.Errorf("%w (symlink loop or magic link)", ErrEscape)
	case unix.EXDEV:
		return fmt.Errorf("%w (crosses the root)", ErrEscape)
	case unix.ENAMETOOLONG:
		return fmt.Errorf("%w (name too long)", ErrEscape)
	case unix.EAGAIN:
		return fmt.Errorf("path kept changing during resolution: %w", errno)
	}
	return err
}

func opErr(op, p string, err error) error {
	if errors.Is(err, errNoOpenat2) {
		return err
	}
	return fmt.Errorf("%s %q: %w", op, p, err)
}

// ReadFile copies the regular file at path below root to w. maxBytes ≤ 0
// means no bound; otherwise a file larger than maxBytes gives ErrTooLarge
// (before anything is written to w when its size says so; a file that grows
// while it is read is cut after maxBytes bytes and also gives ErrTooLarge).
// A final symlink is followed, inside the root. Opening never blocks
// (FIFOs and devices are refused before they are opened), but a read can:
// a few regular files of pseudo filesystems wait for data (/proc/kmsg,
// tracefs's trace_pipe), and ReadFile cannot be interrupted then.
// Container runtimes mask /proc/kmsg.
func ReadFile(root *os.File, path string, w io.Writer, maxBytes int64) error {
	err := rootFd(root, func(rootfd int) error {
		f, err := openRegular(rootfd, path, maxBytes)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }() // read-only: nothing to flush
		src := io.Reader(f)
		if maxBytes > 0 {
			src = io.LimitReader(f, maxBytes)
		}
		if _, err := io.Copy(w, src); err != nil {
			return err
		}
		if maxBytes > 0 {
			var one [1]byte
			if n, _ := f.Read(one[:]); n > 0 {
				return fmt.Errorf("file grew beyond %d bytes: %w", maxBytes, ErrTooLarge)
			}
		}
		return nil
	})
	if err != nil {
		return opErr("read", path, err)
	}
	return nil
}

// openRegular opens the regular file at p for reading without ever opening
// anything else.
//
// Opening a FIFO for reading blocks until a writer comes, and opening a
// device can have side effects, so the file is first opened with O_PATH
// (which opens nothing: no open(2) of the inode happens) and checked with
// fstat. Only a regular file is then reopened for reading, through the
// agent's own /proc/self/fd/N. That reopen is race free: it does not look
// the path up again, the magic link names exactly the inode already
// checked, so the sandbox swapping the path (for a FIFO or a symlink) in
// between changes nothing. /proc/self is the agent's procfs, never the
// sandbox's. The reopened descriptor is compared (device, inode) with the
// checked one all the same.
func openRegular(rootfd int, p string, maxBytes int64) (*os.File, error) {
	pfd, err := resolve(rootfd, p, unix.O_PATH)
	if err != nil {
		return nil, err
	}
	defer func() { _ = unix.Close(pfd) }()
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s: %w", typeName(st.Mode), ErrNotRegular)
	}
	if maxBytes > 0 && st.Size > maxBytes {
		return nil, fmt.Errorf("%d bytes, more than %d: %w", st.Size, maxBytes, ErrTooLarge)
	}
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	for err == unix.EINTR {
		fd, err = unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("reopen through /proc/self/fd (is /proc mounted?): %w", err)
	}
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
		_ = unix.Close(fd)
		if err == nil {
			err = errors.New("reopened file is not the one checked")
		}
		return nil, err
	}
	return os.NewFile(uintptr(fd), p), nil
}

// WriteFile replaces the file at path below root with the content of r,
// atomically: a reader sees the old content or the new, never a part.
//
// The parent directory must exist (ErrNotFound otherwise); it is resolved
// inside the root and opened once, and everything else happens relative
// to that descriptor. The content goes to a new temporary file in it
// (O_CREAT|O_EXCL, so never an existing file or symlink), which gets owner
// and mode (permission bits plus os.ModeSetuid, os.ModeSetgid and
// os.ModeSticky), is synced, and is renamed over the final name. A rename
// replaces the directory entry itself: when path names a symlink, the link
// is replaced by a regular file and what it pointed to is left alone (as
// sed -i or an editor's atomic save do), so a symlink pointing anywhere
// cannot redirect the write. A directory, FIFO, socket or device at path
// gives ErrNotRegular.
//
// More than maxBytes bytes of content (maxBytes > 0) give ErrTooLarge; as
// on any error, nothing is left behind and the old file is untouched.
func WriteFile(root *os.File, path string, r io.Reader, mode os.FileMode, owner runtime.Owner, maxBytes int64) error {
	err := rootFd(root, func(rootfd int) error {
		return writeFile(rootfd, path, r, mode, owner, maxBytes)
	})
	if err != nil {
		return opErr("write", path, err)
	}
	return nil
}

func writeFile(rootfd int, p string, r io.Reader, mode os.FileMode, owner runtime.Owner, maxBytes int64) error {
	if err := checkPath(p); err != nil {
		return err
	}
	perm, err := unixMode(mode)
	if err != nil {
		return err
	}
	dir, name := splitPath(p)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("names a directory: %w", ErrNotRegular)
	}
	// The parent is opened for reading (a directory: O_DIRECTORY refuses
	// anything else before opening it, so this cannot block), so that it
	// can be synced after the rename.
	dirfd, err := resolve(rootfd, dir, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("parent directory: %w", err)
	}
	defer func() { _ = unix.Close(dirfd) }()

	var st unix.Stat_t
	switch err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil:
		if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFLNK {
			return fmt.Errorf("%s: %w", typeName(st.Mode), ErrNotRegular)
		}
	case err != unix.ENOENT:
		return mapErr(err)
	}

	tmp, f, err := createTemp(dirfd)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			// Being discarded: best effort, and it is ours.
			_ = f.Close()
			_ = unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	src := r
	if maxBytes > 0 {
		src = io.LimitReader(r, maxBytes+1)
	}
	n, err := io.Copy(f, src)
	if err != nil {
		return err
	}
	if maxBytes > 0 && n > maxBytes {
		return fmt.Errorf("content larger than %d bytes: %w", maxBytes, ErrTooLarge)
	}
	// chown first: it clears setuid and setgid, which chmod then sets.
	if err := f.Chown(owner.UID, owner.GID); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Both names are single elements relative to the parent's descriptor:
	// nothing is followed, not even a symlink at name.
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		if err == unix.EISDIR || err == unix.ENOTEMPTY || err == unix.EEXIST {
			return fmt.Errorf("directory: %w", ErrNotRegular)
		}
		return err
	}
	done = true
	if err := unix.Fsync(dirfd); err != nil {
		return fmt.Errorf("written, but syncing the directory: %w", err)
	}
	return nil
}

// createTemp creates a new empty file with a random name in dirfd.
func createTemp(dirfd int) (string, *os.File, error) {
	for i := 0; ; i++ {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", nil, err
		}
		name := ".sandboxfs-" + hex.EncodeToString(b[:])
		// A single element relative to the parent; O_EXCL never follows
		// or reuses anything, RESOLVE_NO_SYMLINKS says so once more.
		fd, err := openat2(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, 0o600, unix.RESOLVE_NO_SYMLINKS)
		if err == unix.EEXIST && i < 10 {
			continue
		}
		if err != nil {
			return "", nil, mapErr(err)
		}
		return name, os.NewFile(uintptr(fd), name), nil
	}
}

// unixMode converts Go's mode to the one chmod takes.
func unixMode(m os.FileMode) (os.FileMode, error) {
	const allowed = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky
	if m&^allowed != 0 {
		return 0, fmt.Errorf("mode %v: only permission bits, setuid, setgid and sticky may be set", m)
	}
	// (*os.File).Chmod converts os.ModeSetuid … to the Unix bits.
	return m, nil
}

// splitPath splits p into its parent and its last element, without
// cleaning it (".." after a symlink means the link's target's parent, not
// what a lexical clean would make of it).
func splitPath(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	switch {
	case i < 0:
		return ".", p
	case i == 0:
		return "/", p[1:]
	}
	return p[:i], p[i+1:]
}

// Stat describes the file at path below root without following a final
// symlink (lstat): a symlink is reported with its target as stored.
// Symlinks of parent elements are followed, inside the root.
func Stat(root *os.File, path string) (api.FileInfo, error) {
	var fi api.FileInfo
	err := rootFd(root, func(rootfd int) error {
		fd, err := resolve(rootfd, path, unix.O_PATH|unix.O_NOFOLLOW)
		if err != nil {
			return err
		}
		defer func() { _ = unix.Close(fd) }()
		var st unix.Stat_t
		if err := unix.Fstatat(fd, "", &st, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		target := ""
		if st.Mode&unix.S_IFMT == unix.S_IFLNK && !onProcfs(fd) {
			if target, err = readlink(fd, ""); err != nil {
				return err
			}
		}
		fi = fileInfo(baseName(path), &st, target)
		return nil
	})
	if err != nil {
		return api.FileInfo{}, opErr("stat", path, err)
	}
	return fi, nil
}

// List describes the entries of the directory at path below root (a final
// symlink is followed, inside the root), sorted by name, each as Stat
// would; "." and ".." are left out. A directory with more than
// MaxListEntries entries gives ErrTooLarge.
func List(root *os.File, path string) ([]api.FileInfo, error) {
	var out []api.FileInfo
	err := rootFd(root, func(rootfd int) error {
		// O_DIRECTORY refuses a non-directory before opening it, so a FIFO
		// or device is never opened here.
		fd, err := resolve(rootfd, path, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return notDir(rootfd, path, err)
			}
			return err
		}
		dir := os.NewFile(uintptr(fd), path)
		defer func() { _ = dir.Close() }()
		names, err := dir.Readdirnames(MaxListEntries + 1)
		if err != nil && err != io.EOF {
			return err
		}
		if len(names) > MaxListEntries {
			return fmt.Errorf("more than %d entries: %w", MaxListEntries, ErrTooLarge)
		}
		sort.Strings(names)
		proc := onProcfs(fd)
		out = make([]api.FileInfo, 0, len(names))
		for _, name := range names {
			// name is a single element read from the directory: fstatat
			// and readlinkat look it up in this directory only and do not
			// follow it.
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if err == unix.ENOENT {
					continue // removed since it was read
				}
				return err
			}
			target := ""
			if st.Mode&unix.S_IFMT == unix.S_IFLNK && !proc {
				if target, err = readlink(fd, name); err != nil {
					if err == unix.ENOENT {
						continue
					}
					return err
				}
			}
			out = append(out, fileInfo(name, &st, target))
		}
		return nil
	})
	if err != nil {
		return nil, opErr("list", path, err)
	}
	return out, nil
}

// notDir tells ENOTDIR of the final element (the path exists but is not a
// directory: ErrNotRegular) from a missing path (ErrNotFound), since the
// kernel answers ENOTDIR for both.
func notDir(rootfd int, p string, notFound error) error {
	fd, err := resolve(rootfd, p, unix.O_PATH)
	if err != nil {
		return notFound
	}
	defer func() { _ = unix.Close(fd) }()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return notFound
	}
	return fmt.Errorf("%s, not a directory: %w", typeName(st.Mode), ErrNotRegular)
}

// onProcfs reports whether fd is on a procfs. Symlink targets there are
// not reported: the targets of magic links (/proc/<pid>/root, exe, fd/N)
// are paths as the agent sees them, which would tell the host's layout.
func onProcfs(fd int) bool {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return true // unknown: do not risk it
	}
	return sfs.Type == unix.PROC_SUPER_MAGIC
}

func readlink(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
		if size >= unix.PathMax*2 {
			return string(buf[:n]), nil
		}
	}
}

// baseName is the last element of p as the caller wrote it ("/" for the
// root).
func baseName(p string) string {
	b := path.Base(path.Clean("/" + p))
	return b
}

func fileInfo(name string, st *unix.Stat_t, target string) api.FileInfo {
	fi := api.FileInfo{
		Name:       name,
		Size:       st.Size,
		Mode:       st.Mode & 0o7777,
		ModTime:    time.Unix(st.Mtim.Unix()).UTC(),
		LinkTarget: target,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fi.Type = api.FileTypeFile
	case unix.S_IFDIR:
		fi.Type = api.FileTypeDir
	case unix.S_IFLNK:
		fi.Type = api.FileTypeSymlink
	default:
		fi.Type = api.FileTypeOther
	}
	return fi
}

func typeName(m uint32) string {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "special file"
}
