// Package sandboxinit is the first process of a warm sandbox container and
// the protocol the agent speaks with it.
//
// A warm container is created and started ahead of any sandbox, with the
// image's root filesystem, its own namespaces, cgroup, seccomp profile and
// capability bounding set already in place; what runs in it is this init,
// waiting on a Unix socket that the agent listens on. Starting a sandbox in
// it is one message: the init sets the hostname, drops the one extra
// capability it held to do so, takes the sandbox's user, changes to its
// working directory and execs its command. The command becomes the
// container's process, so the container's exit status is the sandbox's.
//
// The connection is close-on-exec: the agent reads end-of-file when the exec
// succeeded, and a Result with the error when it failed. An init whose agent
// went away before sending a command connects again, so a restarted agent
// can tell a container that never started its sandbox from one that did.
//
// The same binary is the logging binary of sandbox containers (see package
// sandboxlog): containerd's shim runs it with that package's arguments, and
// Main then writes the container's output to its bounded log instead.
//
// The init imports nothing beyond the standard library, x/sys and the
// standard-library-only sandboxlog, to stay small and start fast.
package sandboxinit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/sandboxlog"
)

// Paths inside a warm container.
const (
	// Dir is where the agent mounts the init and its socket's directory.
	Dir = "/.fast-sandbox"
	// Binary is the init's path inside the container.
	Binary = Dir + "/init"
	// SocketDir is the mount point of the agent's per-container directory.
	SocketDir = Dir + "/ctl"
	// SocketName is the agent's socket in SocketDir.
	SocketName = "ctl.sock"
)

// ProbeArg makes the init exit 0 at once when it is its only argument: the
// agent runs it so in a container to check that the node runs containers as the
// agent makes them (e.g. with user namespaces).
const ProbeArg = "--probe"

// ExitStartFailed is the init's exit code when the command could not be
// started (like a shell's "command not found").
const ExitStartFailed = 127

// Start is the agent's one message: what to run.
type Start struct {
	Args     []string `json:"args"`
	Env      []string `json:"env,omitempty"`
	Cwd      string   `json:"cwd,omitempty"`
	UID      uint32   `json:"uid,omitempty"`
	GID      uint32   `json:"gid,omitempty"`
	Hostname string   `json:"hostname,omitempty"`
}

// Result is the init's answer when the command could not be started. A
// successful start closes the connection without an answer.
type Result struct {
	Error string `json:"error"`
}

// Main runs the init: it waits for the agent's Start and execs it. It
// returns only when the start failed, with the exit code to use. Started
// with the arguments of a logging binary (sandboxlog.IsLogger), it runs the
// logger instead and returns its exit code; with ProbeArg, it returns 0;
// with ExecServerArg, it is the exec server (ServeExec) on the socket
// beside socket.
func Main(socket string, retry time.Duration) int {
	if sandboxlog.IsLogger(os.Args[1:]) {
		return sandboxlog.Main(os.Args[1:])
	}
	if len(os.Args) == 2 && os.Args[1] == ProbeArg {
		return 0
	}
	if len(os.Args) == 2 && os.Args[1] == ExecServerArg {
		return ServeExec(filepath.Join(filepath.Dir(socket), ExecSocketName))
	}
	for {
		conn, err := net.Dial("unix", socket)
		if err != nil {
			time.Sleep(retry)
			continue
		}
		var s Start
		if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&s); err != nil {
			// The agent went away before sending a command: wait for the next.
			_ = conn.Close()
			time.Sleep(retry)
			continue
		}
		err = Exec(s)
		_ = json.NewEncoder(conn).Encode(Result{Error: err.Error()})
		fmt.Fprintf(os.Stderr, "fast-sandbox: %v\n", err)
		_ = conn.Close()
		return ExitStartFailed
	}
}

// Exec becomes the process that s describes. It returns only on failure.
func Exec(s Start) error {
	if len(s.Args) == 0 || s.Args[0] == "" {
		return errors.New("no command to run")
	}
	// The capability bounding set and the exec are per thread.
	runtime.LockOSThread()
	if s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
	}
	// CAP_SYS_ADMIN was there only to set the hostname; after this the
	// command's capabilities are exactly the container's others.
	if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_SYS_ADMIN, 0, 0, 0); err != nil {
		return fmt.Errorf("dropping CAP_SYS_ADMIN: %w", err)
	}
	env := withHome(s.Env, s.UID)
	if s.UID != 0 || s.GID != 0 {
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("clearing supplementary groups: %w", err)
		}
		if err := syscall.Setgid(int(s.GID)); err != nil {
			return fmt.Errorf("setting group %d: %w", s.GID, err)
		}
		if err := syscall.Setuid(int(s.UID)); err != nil {
			return fmt.Errorf("setting user %d: %w", s.UID, err)
		}
	}
	cwd := s.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if err := os.Chdir(cwd); err != nil {
		return fmt.Errorf("changing to the working directory: %w", err)
	}
	path, err := lookPath(s.Args[0], env)
	if err != nil {
		return err
	}
	err = syscall.Exec(path, s.Args, env)
	return fmt.Errorf("exec %q: %w", path, err)
}

// lookPath finds a command the way the OCI runtimes do: names with a slash
// as they are, others in the PATH of the command's environment.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", fmt.Errorf("exec %q: %w", name, err)
		}
		return name, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %q: %w", name, errNotFound)
}

// errNotFound is lookPath's error for a name not found in the PATH.
var errNotFound = errors.New("executable file not found in $PATH")

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return &fs.PathError{Op: "exec", Path: p, Err: syscall.EACCES}
	}
	return nil
}

// withHome adds HOME, as the OCI runtimes do, when the environment has none:
// the user's home from the image's /etc/passwd, or "/".
func withHome(env []string, uid uint32) []string {
	for _, e := range env {
		if strings.HasPrefix(e, "HOME=") {
			return env
		}
	}
	home := "/"
	if f, err := os.Open("/etc/passwd"); err == nil {
		home = homeOf(f, uid)
		_ = f.Close()
	}
	return append(env, "HOME="+home)
}

func homeOf(passwd io.Reader, uid uint32) string {
	s := bufio.NewScanner(passwd)
	want := strconv.FormatUint(uint64(uid), 10)
	for s.Scan() {
		f := strings.Split(s.Text(), ":")
		if len(f) >= 6 && f[2] == want && f[5] != "" {
			return f[5]
		}
	}
	return "/"
}
