package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
	"github.com/fast-sandbox/fast-sandbox/test/e2e/framework"
	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// Interactive sandboxes (issue 13, docs/interactive.md) on the real
// cluster, through the real kubectl and the kubectl-sandbox plugin: exec
// (streams, exit status, stdin, a terminal), logs -f, cp, pause and resume,
// the idle timeout, RBAC through the aggregated API, and the errors a user
// meets.

// interactive is the tests' environment: a namespace of their own that
// their pool selects, and a PATH where "kubectl sandbox" is the plugin
// built from this tree.
type interactive struct {
	*system
	// env is the environment of every kubectl run: PATH with the plugin
	// and the cluster's kubectl first, KUBECONFIG the admin's.
	env []string
	// dir is a scratch directory on the node.
	dir string
}

// kubectlResult is what one kubectl run did, printed whole when a check
// on it fails.
type kubectlResult struct {
	args           []string
	stdout, stderr string
	code           int
	err            error // a run that could not start, or was cut short
	took           time.Duration
}

func (r kubectlResult) String() string {
	return fmt.Sprintf("`kubectl %s`: exit status %d after %s (error: %v)\n--- stdout ---\n%s\n--- stderr ---\n%s",
		strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), r.err, r.stdout, r.stderr)
}

// output is stdout and stderr together.
func (r kubectlResult) output() string { return r.stdout + r.stderr }

// run options: stdin, the kubeconfig (empty: the admin's) and a timeout.
type runOpts struct {
	stdin      io.Reader
	kubeconfig string
	timeout    time.Duration
}

// kubectl runs the cluster's kubectl (so "kubectl sandbox" is the plugin)
// and returns what it did; it never fails the test itself.
func (e *interactive) kubectl(o runOpts, args ...string) kubectlResult {
	if o.timeout == 0 {
		o.timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	cmd.Env = e.env
	if o.kubeconfig != "" {
		cmd.Env = append(cmd.Env[:len(cmd.Env):len(cmd.Env)], "KUBECONFIG="+o.kubeconfig)
	}
	cmd.Stdin = o.stdin
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := kubectlResult{args: args, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start), code: cmd.ProcessState.ExitCode()}
	var exitErr *exec.ExitError
	if err != nil && (!errors.As(err, &exitErr) || ctx.Err() != nil) {
		r.err = err
	}
	if ctx.Err() != nil {
		r.err = fmt.Errorf("cut short after %s: %w", o.timeout, ctx.Err())
	}
	return r
}

// sandbox runs "kubectl sandbox ARGS" as the admin in the tests' namespace.
func (e *interactive) sandbox(args ...string) kubectlResult {
	return e.kubectl(runOpts{}, append([]string{"sandbox", "-n", e.ns}, args...)...)
}

// ok runs "kubectl sandbox ARGS" and fails the test unless it exits 0.
func (e *interactive) ok(t *testing.T, args ...string) kubectlResult {
	t.Helper()
	r := e.sandbox(args...)
	if r.code != 0 || r.err != nil {
		t.Fatalf("want success:\n%s", r)
	}
	return r
}

// interactiveEnv deploys the components, makes the tests' namespace and a
// one-agent pool that selects it, and builds the plugin.
func interactiveEnv(t *testing.T) *interactive {
	t.Helper()
	deployComponents(t)
	ns := kubetest.CreateNamespace(t, cluster.Kube, "e2e-interactive")
	e := &interactive{system: &system{sbx: versioned.NewForConfigOrDie(cluster.Config), ns: ns, pool: "e2e-interactive"}, dir: t.TempDir()}
	pool := localPool(t, e.pool, 1, 12)
	pool.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}
	createPool(t, e.sbx, pool)
	t.Cleanup(func() {
		ctx := context.Background()
		_ = e.sbx.SandboxV1alpha1().Sandboxes(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = e.sbx.SandboxV1alpha1().SandboxPools().Delete(ctx, e.pool, metav1.DeleteOptions{})
		_ = cluster.Kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		// The next tests get the node's CPU back.
		kubetest.Eventually(t, poolPoll, "the interactive pool's agents gone", func(ctx context.Context) error {
			pods, err := cluster.Kube.CoreV1().Pods(v1alpha1.DefaultSystemNamespace).List(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelPoolName + "=" + e.pool})
			if err != nil {
				return err
			}
			if n := len(pods.Items); n > 0 {
				return fmt.Errorf("%d agent Pods left", n)
			}
			return nil
		})
	})

	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "kubectl-sandbox"), "./cmd/kubectl-sandbox")
	build.Dir = framework.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	e.env = append(os.Environ(),
		"PATH="+bin+string(os.PathListSeparator)+mustSetting(t, "BIN_DIR")+string(os.PathListSeparator)+os.Getenv("PATH"),
		"KUBECONFIG="+cluster.Kubeconfig,
		// kubectl's discovery cache of this cluster, not of an older one.
		"KUBECACHEDIR="+filepath.Join(mustSetting(t, "CLUSTER_DIR"), "kubectl-cache"))
	// kubectl finds the plugin, and it is this tree's.
	if r := e.kubectl(runOpts{}, "plugin", "list"); !strings.Contains(r.stdout, filepath.Join(bin, "kubectl-sandbox")) {
		t.Fatalf("kubectl does not see the plugin in %s:\n%s", bin, r)
	}
	kubetest.WaitPool(t, e.sbx, e.pool, poolPoll, readyAgents(1))
	return e
}

// sleeper is a sandbox that runs until deleted (an hour).
func (e *interactive) sleeper(t *testing.T, name string, mutate func(*v1alpha1.Sandbox)) *v1alpha1.Sandbox {
	t.Helper()
	e.create(t, name, mutate, "sleep", "3600")
	return e.waitSandbox(t, name, kubetest.Phase(v1alpha1.SandboxRunning))
}

func TestInteractive(t *testing.T) {
	e := interactiveEnv(t)

	// Independent sandboxes, in parallel; the lost agent comes last, alone.
	t.Run("sandboxes", func(t *testing.T) {
		t.Run("exec", func(t *testing.T) { t.Parallel(); testExec(t, e) })
		t.Run("logs -f", func(t *testing.T) { t.Parallel(); testLogsFollow(t, e) })
		t.Run("cp", func(t *testing.T) { t.Parallel(); testCopy(t, e) })
		t.Run("pause and resume", func(t *testing.T) { t.Parallel(); testPause(t, e) })
		t.Run("idle", func(t *testing.T) { t.Parallel(); testIdle(t, e) })
		t.Run("RBAC", func(t *testing.T) { t.Parallel(); testRBAC(t, e) })
		t.Run("exec into a finished sandbox", func(t *testing.T) { t.Parallel(); testExecFinished(t, e) })
	})
	t.Run("exec with a lost agent fails in bounded time", func(t *testing.T) { testLostAgent(t, e) })
}

func testExec(t *testing.T, e *interactive) {
	e.sleeper(t, "exec", nil)

	t.Run("stdout, stderr and the exit status are the command's", func(t *testing.T) {
		r := e.sandbox("exec", "exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if r.code != 7 || r.err != nil || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Errorf("want stdout \"out\\n\", stderr \"err\\n\", exit status 7:\n%s", r)
		}
	})
	t.Run("through the sandbox's exec server", func(t *testing.T) {
		// Its parent is the exec server, not runc (whose exec'd process
		// has no parent in the sandbox's pid namespace): the agent's
		// socket was reachable from its Pod, the server started.
		r := e.sandbox("exec", "exec", "--", "sh", "-c", `tr '\0' ' ' < /proc/$PPID/cmdline`)
		if r.code != 0 || r.err != nil || r.stdout != "/.fast-sandbox/init --exec-server " {
			t.Errorf("want the exec server as the command's parent:\n%s", r)
		}
	})
	t.Run("-i passes stdin", func(t *testing.T) {
		r := e.kubectl(runOpts{stdin: strings.NewReader("a line through stdin\n")}, "sandbox", "-n", e.ns, "exec", "-i", "exec", "--", "cat")
		if r.code != 0 || r.err != nil || r.stdout != "a line through stdin\n" {
			t.Errorf("want cat to echo stdin:\n%s", r)
		}
	})
	t.Run("without -i the command reads no stdin", func(t *testing.T) {
		// A stdin that never ends (the plugin's own, no copy in between):
		// were it passed, cat would never exit.
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		if _, err := pw.Write([]byte("must not reach the sandbox\n")); err != nil {
			t.Fatal(err)
		}
		r := e.kubectl(runOpts{stdin: pr, timeout: 30 * time.Second}, "sandbox", "-n", e.ns, "exec", "exec", "--", "cat")
		if r.code != 0 || r.err != nil || r.stdout != "" {
			t.Errorf("want cat to read EOF at once and print nothing:\n%s", r)
		}
	})
	t.Run("a missing command fails clearly", func(t *testing.T) {
		r := e.sandbox("exec", "exec", "--", "/no/such/command")
		// One line, as a shell's: exit 127, the command and the sandbox
		// named, then runc's (or the exec server's) words.
		want := `exec "/no/such/command" in sandbox ` + e.ns + `/exec: the command was not found: `
		if r.code != 127 || r.err != nil || !strings.HasPrefix(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 ||
			strings.Contains(r.stderr, "Internal error") {
			t.Errorf("want exit status 127 and one line starting %q:\n%s", want, r)
		}
		t.Logf("exit status %d: %s", r.code, strings.TrimSpace(r.stderr))
	})
	t.Run("-it gives a terminal of the local size", func(t *testing.T) {
		const rows, cols = 37, 113
		cmd := exec.Command("kubectl", "sandbox", "-n", e.ns, "exec", "-it", "exec", "--", "sh")
		cmd.Env = e.env
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: rows, Cols: cols})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		screen := &syncBuffer{}
		copied := make(chan struct{})
		go func() { _, _ = io.Copy(screen, tty); close(copied) }()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		defer func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
			}
		}()

		if _, err := tty.Write([]byte("tty; stty size\n")); err != nil {
			t.Fatal(err)
		}
		size := fmt.Sprintf("%d %d", rows, cols)
		kubetest.Eventually(t, kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 30 * time.Second}, "tty and stty size on the screen",
			func(context.Context) error {
				s := screen.String()
				if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, size) {
					return fmt.Errorf("want /dev/pts/N and %q; the screen:\n%q", size, s)
				}
				return nil
			})
		if _, err := tty.Write([]byte("exit 4\n")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 4 {
				t.Errorf("kubectl sandbox exec -it: %v, want exit status 4; the screen:\n%q", err, screen.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("kubectl sandbox exec -it did not exit after \"exit 4\"; the screen:\n%q", screen.String())
		}
	})
}

// syncBuffer is a bytes.Buffer for one writer and other readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogsFollow(t *testing.T, e *interactive) {
	e.create(t, "ticker", nil, "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")
	e.waitSandbox(t, "ticker", kubetest.Phase(v1alpha1.SandboxRunning))
	// What is in the log already.
	var before int
	kubetest.Eventually(t, kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: 30 * time.Second}, "a first line in the log", func(context.Context) error {
		r := e.sandbox("logs", "ticker")
		if r.code != 0 {
			return errors.New(r.String())
		}
		before = strings.Count(r.stdout, "\n")
		if before == 0 || !strings.HasPrefix(r.stdout, "tick 1\n") {
			return fmt.Errorf("want tick 1 first:\n%s", r)
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", "sandbox", "-n", e.ns, "logs", "-f", "ticker")
	cmd.Env = e.env
	var stderr syncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// The stream starts with the log so far, then gets lines as the
	// sandbox prints them: one printed well after the follow began.
	later := before + 10
	var got []string
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("logs -f ended after %q; stderr: %s", got, stderr.String())
			}
			got = append(got, l)
			if want := fmt.Sprintf("tick %d", len(got)); l != want {
				t.Fatalf("line %d of logs -f is %q, want %q (lines so far %q)", len(got), l, want, got)
			}
		case <-deadline:
			t.Fatalf("logs -f never showed tick %d within 30s; it showed %q; stderr: %s", later, got, stderr.String())
		}
		if len(got) >= later {
			return
		}
	}
}

func testCopy(t *testing.T, e *interactive) {
	e.sleeper(t, "files", nil)
	local := t.TempDir()
	roundTrip := func(t *testing.T, name string, content []byte) {
		in := filepath.Join(local, name)
		if err := os.WriteFile(in, content, 0o640); err != nil {
			t.Fatal(err)
		}
		e.ok(t, "cp", in, "files:/tmp/"+name)
		// The sandbox sees the same bytes.
		sum := sha256.Sum256(content)
		if r := e.ok(t, "exec", "files", "--", "sha256sum", "/tmp/"+name); !strings.HasPrefix(r.stdout, hex.EncodeToString(sum[:])) {
			t.Errorf("the sandbox's copy differs (want sha256 %x):\n%s", sum, r)
		}
		out := filepath.Join(local, name+".back")
		e.ok(t, "cp", "files:/tmp/"+name, out)
		back, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, content) {
			t.Errorf("copied out %d bytes (sha256 %x), want the %d copied in (sha256 %x)", len(back), sha256.Sum256(back), len(content), sum)
		}
	}
	t.Run("a binary file with zero bytes, both ways, byte for byte", func(t *testing.T) {
		content := make([]byte, 1<<20)
		_, _ = rand.Read(content)
		for i := 0; i < len(content); i += 4096 {
			clear(content[i : i+512])
		}
		roundTrip(t, "binary", content)
	})
	t.Run("a 32 MiB file, both ways", func(t *testing.T) {
		content := make([]byte, 32<<20)
		r := mathrand.NewChaCha8([32]byte{13})
		_, _ = r.Read(content)
		roundTrip(t, "large", content)
	})

	t.Run("paths and symlinks never leave the sandbox", func(t *testing.T) {
		// A secret on the node, and a file of the sandbox's own at the
		// same absolute path.
		secretDir := filepath.Join(e.dir, "node-secret")
		if err := os.MkdirAll(secretDir, 0o755); err != nil {
			t.Fatal(err)
		}
		secret := filepath.Join(secretDir, "sentinel")
		nodeContent := "NODE-SENTINEL-" + strconv.FormatUint(mathrand.Uint64(), 36)
		if err := os.WriteFile(secret, []byte(nodeContent), 0o644); err != nil {
			t.Fatal(err)
		}
		const sandboxContent = "the sandbox's own file"
		e.ok(t, "exec", "files", "--", "sh", "-c", fmt.Sprintf(
			"mkdir -p %[1]s && printf %%s %[2]q > %[1]s/sentinel && "+
				"ln -s %[3]s /tmp/abs-link && ln -s /../../../../..%[3]s /tmp/dotdot-link && "+
				"ln -s /proc/1/root%[3]s /tmp/proc-link && ln -s /proc/self/root%[3]s /tmp/self-link && "+
				"ln -s %[1]s /tmp/dir-link && ln -s ../../../../../../.. /tmp/up-link",
			secretDir, sandboxContent, secret))

		for _, p := range []string{
			"/../../../../.." + secret,
			"/tmp/../../../../.." + secret,
			"/tmp/abs-link", "/tmp/dotdot-link", "/tmp/proc-link", "/tmp/self-link",
			"/tmp/dir-link/sentinel",
			"/tmp/up-link" + secret,
			"/proc/1/root" + secret,
		} {
			r := e.sandbox("cp", "files:"+p, "-")
			switch {
			case strings.Contains(r.output(), nodeContent):
				t.Errorf("reading %s returned the node's file:\n%s", p, r)
			case r.code == 0 && r.stdout != sandboxContent:
				t.Errorf("reading %s succeeded with neither the sandbox's file nor an error:\n%s", p, r)
			case r.err != nil:
				t.Errorf("reading %s:\n%s", p, r)
			}
			t.Logf("read %s: exit status %d, %q", p, r.code, strings.TrimSpace(r.output()))
		}

		// Writes through .. or a symlink land in the sandbox, or nowhere.
		in := filepath.Join(local, "payload")
		if err := os.WriteFile(in, []byte("written by a tenant"), 0o644); err != nil {
			t.Fatal(err)
		}
		for i, p := range []string{
			"/../../../../.." + secretDir + "/written-0",
			"/tmp/dir-link/written-1",
			"/tmp/up-link" + secretDir + "/written-2",
		} {
			r := e.sandbox("cp", in, "files:"+p)
			if r.err != nil {
				t.Errorf("writing %s:\n%s", p, r)
			}
			t.Logf("write %s: exit status %d, %q", p, r.code, strings.TrimSpace(r.output()))
			if _, err := os.Stat(filepath.Join(secretDir, fmt.Sprintf("written-%d", i))); err == nil {
				t.Errorf("writing %s in the sandbox made a file on the node:\n%s", p, r)
			}
		}
		if got, _ := os.ReadFile(secret); string(got) != nodeContent {
			t.Errorf("the node's file now holds %q", got)
		}
	})
}

// sandboxTask is the node's view of a running sandbox: its main process.
func sandboxPid(t *testing.T, containerID string) int {
	t.Helper()
	out, err := exec.Command("ctr", "-a", mustSetting(t, "CONTAINERD_SOCK"), "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr tasks ls: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == containerID {
			pid, err := strconv.Atoi(f[1])
			if err == nil && pid > 0 {
				return pid
			}
		}
	}
	t.Fatalf("no task of container %s:\n%s", containerID, out)
	return 0
}

// frozen says whether the freezer of the cgroup of process pid is frozen
// (cgroup v1 freezer.state, or v2 cgroup.freeze), with what it read.
func frozen(pid int) (bool, string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false, "", err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		switch {
		case f[1] == "freezer" || strings.Contains(","+f[1]+",", ",freezer,"):
			file := filepath.Join("/sys/fs/cgroup/freezer", f[2], "freezer.state")
			state, err := os.ReadFile(file)
			s := strings.TrimSpace(string(state))
			return s == "FROZEN", file + ": " + s, err
		case f[0] == "0" && f[1] == "":
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
				continue // the v1 hierarchy's empty v2 line
			}
			file := filepath.Join("/sys/fs/cgroup", f[2], "cgroup.freeze")
			state, err := os.ReadFile(file)
			s := strings.TrimSpace(string(state))
			return s == "1", file + ": " + s, err
		}
	}
	return false, "", fmt.Errorf("no freezer cgroup in /proc/%d/cgroup:\n%s", pid, raw)
}

// counter reads the number the counter sandbox keeps writing, through the
// node's view of its root (exec and files are refused while paused).
func counter(pid int) (int, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/tmp/counter", pid))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(raw)))
}

func setPaused(t *testing.T, e *interactive, name string, paused bool) kubectlResult {
	t.Helper()
	verb := "resume"
	if paused {
		verb = "pause"
	}
	r := e.ok(t, verb, name)
	if want := "sandbox/" + name + " " + verb + "d"; !strings.Contains(r.stdout, want) {
		t.Errorf("want %q:\n%s", want, r)
	}
	return r
}

func testPause(t *testing.T, e *interactive) {
	e.create(t, "counter", nil, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done")
	sbx := e.waitSandbox(t, "counter", kubetest.Phase(v1alpha1.SandboxRunning))
	pid := sandboxPid(t, sbx.Status.ContainerID)
	fast := kubetest.Poll{Interval: 50 * time.Millisecond, Timeout: 30 * time.Second}
	advances := func(what string) {
		t.Helper()
		first := -1
		kubetest.Eventually(t, fast, what, func(context.Context) error {
			n, err := counter(pid)
			if err != nil {
				return err
			}
			if first < 0 {
				first = n
			}
			if n < first+3 {
				return fmt.Errorf("counter at %d, first seen %d", n, first)
			}
			return nil
		})
	}
	advances("the counter counting")

	setPaused(t, e, "counter", true)
	paused := e.waitSandbox(t, "counter", kubetest.Phase(v1alpha1.SandboxPaused))
	if c := meta.FindStatusCondition(paused.Status.Conditions, v1alpha1.SandboxConditionPaused); c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonPausedBySpec {
		t.Errorf("want condition Paused True (PausedBySpec): %s", kubetest.DescribeSandbox(paused))
	}
	if ok, state, err := frozen(pid); !ok || err != nil {
		t.Errorf("the sandbox's cgroup is not frozen: %s (%v)", state, err)
	} else {
		t.Logf("paused: %s", state)
	}
	at, err := counter(pid)
	if err != nil {
		t.Fatal(err)
	}
	kubetest.Consistently(t, kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 2 * time.Second}, "the counter stopped at "+strconv.Itoa(at),
		func(context.Context) error {
			if n, err := counter(pid); err != nil || n != at {
				return fmt.Errorf("counter at %d (%v)", n, err)
			}
			return nil
		})

	r := e.sandbox("exec", "counter", "--", "true")
	if r.code == 0 || !strings.Contains(r.stderr, "Error from server (Conflict)") || !strings.Contains(r.stderr, "sandbox is paused (spec.paused); resume it first") {
		t.Errorf("want exec into a paused sandbox refused (Conflict) with \"sandbox is paused (spec.paused); resume it first\":\n%s", r)
	}
	t.Logf("exec while paused: %s", strings.TrimSpace(r.stderr))
	r = e.sandbox("cp", "counter:/tmp/counter", "-")
	if r.code == 0 || !strings.Contains(r.stderr, "sandbox is paused (spec.paused); resume it first") {
		t.Errorf("want cp from a paused sandbox refused with \"sandbox is paused (spec.paused); resume it first\":\n%s", r)
	}

	setPaused(t, e, "counter", false)
	e.waitSandbox(t, "counter", kubetest.Phase(v1alpha1.SandboxRunning))
	advances("the counter counting again after resume")
	if ok, state, err := frozen(pid); ok || err != nil {
		t.Errorf("the sandbox's cgroup is still frozen: %s (%v)", state, err)
	}
	e.ok(t, "exec", "counter", "--", "true")
}

func testIdle(t *testing.T, e *interactive) {
	t.Run("Pause", func(t *testing.T) {
		t.Parallel()
		e.create(t, "idle-pause", func(x *v1alpha1.Sandbox) {
			x.Spec.IdleTimeoutSeconds = ptr.To[int32](3)
			x.Spec.IdlePolicy = v1alpha1.IdlePolicyPause
		}, "sleep", "3600")
		e.waitSandbox(t, "idle-pause", kubetest.Phase(v1alpha1.SandboxRunning))
		e.waitSandbox(t, "idle-pause", kubetest.Where("phase Paused, condition Paused reason Idle", func(s *v1alpha1.Sandbox) bool {
			c := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.SandboxConditionPaused)
			return s.Status.Phase == v1alpha1.SandboxPaused && c != nil && c.Status == metav1.ConditionTrue && c.Reason == v1alpha1.ReasonIdle
		}))
		// The next exec thaws it and runs.
		r := e.ok(t, "exec", "idle-pause", "--", "echo", "awake")
		if r.stdout != "awake\n" {
			t.Errorf("want \"awake\":\n%s", r)
		}
		e.waitSandbox(t, "idle-pause", kubetest.Phase(v1alpha1.SandboxRunning))
	})
	t.Run("Delete", func(t *testing.T) {
		t.Parallel()
		e.create(t, "idle-delete", func(x *v1alpha1.Sandbox) {
			x.Spec.IdleTimeoutSeconds = ptr.To[int32](3)
			x.Spec.IdlePolicy = v1alpha1.IdlePolicyDelete
		}, "sleep", "3600")
		e.waitSandbox(t, "idle-delete", kubetest.Phase(v1alpha1.SandboxRunning))
		kubetest.WaitSandboxGone(t, e.sbx, e.ns, "idle-delete", kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: time.Minute})
	})
}

// kubeconfigFor writes a kubeconfig of the admin's cluster that
// authenticates with token alone.
func kubeconfigFor(t *testing.T, dir, name, token string) string {
	t.Helper()
	admin, err := clientcmd.LoadFromFile(cluster.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx := admin.Contexts[admin.CurrentContext]
	if ctx == nil {
		t.Fatalf("%s has no current context", cluster.Kubeconfig)
	}
	c := clientcmdapi.NewConfig()
	c.Clusters["c"] = admin.Clusters[ctx.Cluster]
	c.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	c.Contexts[name] = &clientcmdapi.Context{Cluster: "c", AuthInfo: name}
	c.CurrentContext = name
	file := filepath.Join(dir, name+".kubeconfig")
	if err := clientcmd.WriteToFile(*c, file); err != nil {
		t.Fatal(err)
	}
	return file
}

// serviceAccount makes a ServiceAccount in ns bound there to clusterRole.
func serviceAccount(t *testing.T, ns, name, clusterRole string) {
	t.Helper()
	ctx := context.Background()
	if _, err := cluster.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
	}
	if _, err := cluster.Kube.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The binding takes effect a moment later; both roles give get on
	// sandboxes.
	user, groups := kubetest.ServiceAccountUser(ns, name)
	kubetest.WaitAllowed(t, cluster.Kube, user, groups, authorizationv1.ResourceAttributes{Namespace: ns,
		Verb: "get", Group: v1alpha1.GroupName, Resource: "sandboxes"})
}

func testRBAC(t *testing.T, e *interactive) {
	e.create(t, "guarded", nil, "sh", "-c", "echo guarded log line; sleep 3600")
	e.waitSandbox(t, "guarded", kubetest.Phase(v1alpha1.SandboxRunning))
	other := kubetest.CreateNamespace(t, cluster.Kube, "e2e-interactive-other")
	t.Cleanup(func() {
		_ = cluster.Kube.CoreV1().Namespaces().Delete(context.Background(), other, metav1.DeleteOptions{})
	})
	serviceAccount(t, e.ns, "viewer", "fast-sandbox-view")
	serviceAccount(t, other, "editor", "fast-sandbox-edit")
	dir := t.TempDir()
	token := func(ns, sa string) string {
		r := e.kubectl(runOpts{}, "-n", ns, "create", "token", sa)
		if r.code != 0 {
			t.Fatalf("%s", r)
		}
		return strings.TrimSpace(r.stdout)
	}
	viewer := kubeconfigFor(t, dir, "viewer", token(e.ns, "viewer"))
	editor := kubeconfigFor(t, dir, "editor", token(other, "editor"))
	payload := filepath.Join(dir, "payload")
	if err := os.WriteFile(payload, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	as := func(kubeconfig string, args ...string) kubectlResult {
		return e.kubectl(runOpts{kubeconfig: kubeconfig, timeout: 60 * time.Second}, append([]string{"sandbox", "-n", e.ns}, args...)...)
	}
	forbidden := func(t *testing.T, who string, r kubectlResult, subresource string) {
		t.Helper()
		if r.code == 0 || r.err != nil || !strings.Contains(strings.ToLower(r.stderr), "forbidden") || !strings.Contains(r.stderr, subresource) {
			t.Errorf("%s: want Forbidden on %s:\n%s", who, subresource, r)
		}
		// exec's refused upgrade (WebSocket, then SPDY) is printed as
		// kubectl prints a Pod's: "Error from server (Forbidden): ... is
		// forbidden: User ... cannot create resource ...".
		if subresource == "sandboxes/exec" && (!strings.HasPrefix(r.stderr, "Error from server (Forbidden): ") ||
			!strings.Contains(r.stderr, `cannot create resource "sandboxes/exec"`)) {
			t.Errorf("%s: want exec's Forbidden printed as kubectl prints it:\n%s", who, r)
		}
	}
	// The RoleBindings take effect at once, but the token's first use may
	// race the ServiceAccount's cache: wait for logs to work.
	kubetest.Eventually(t, kubetest.Poll{Interval: 200 * time.Millisecond, Timeout: 30 * time.Second}, "the viewer reads the log", func(context.Context) error {
		if r := as(viewer, "logs", "guarded"); r.code != 0 || !strings.Contains(r.stdout, "guarded log line") {
			return errors.New(r.String())
		}
		return nil
	})

	t.Run("a viewer reads the log but may not exec or copy", func(t *testing.T) {
		forbidden(t, "viewer", as(viewer, "exec", "guarded", "--", "true"), "sandboxes/exec")
		forbidden(t, "viewer", as(viewer, "cp", "guarded:/etc/hostname", "-"), "sandboxes/files")
		forbidden(t, "viewer", as(viewer, "cp", payload, "guarded:/tmp/payload"), "sandboxes/files")
	})
	t.Run("an editor of another namespace may do nothing here", func(t *testing.T) {
		forbidden(t, "editor", as(editor, "exec", "guarded", "--", "true"), "sandboxes/exec")
		forbidden(t, "editor", as(editor, "logs", "guarded"), "sandboxes/log")
		forbidden(t, "editor", as(editor, "cp", "guarded:/etc/hostname", "-"), "sandboxes/files")
		forbidden(t, "editor", as(editor, "cp", payload, "guarded:/tmp/payload"), "sandboxes/files")
		// In its own namespace it may exec, and finds no such sandbox.
		r := e.kubectl(runOpts{kubeconfig: editor}, "sandbox", "-n", other, "exec", "guarded", "--", "true")
		if r.code == 0 || !strings.HasPrefix(r.stderr, "Error from server (NotFound): ") {
			t.Errorf("editor in its own namespace: want NotFound:\n%s", r)
		}
	})
	t.Run("impersonation goes through the aggregator", func(t *testing.T) {
		asViewer := "--as=system:serviceaccount:" + e.ns + ":viewer"
		if r := e.sandbox(asViewer, "logs", "guarded"); r.code != 0 || !strings.Contains(r.stdout, "guarded log line") {
			t.Errorf("impersonated viewer: want the log:\n%s", r)
		}
		forbidden(t, "impersonated viewer", e.sandbox(asViewer, "exec", "guarded", "--", "true"), "sandboxes/exec")
		asEditor := "--as=system:serviceaccount:" + other + ":editor"
		forbidden(t, "impersonated editor", e.sandbox(asEditor, "exec", "guarded", "--", "true"), "sandboxes/exec")
	})
}

func testExecFinished(t *testing.T, e *interactive) {
	e.create(t, "finished", nil, "sh", "-c", "echo done")
	e.waitSandbox(t, "finished", kubetest.Phase(v1alpha1.SandboxSucceeded))
	r := e.kubectl(runOpts{timeout: 30 * time.Second}, "sandbox", "-n", e.ns, "exec", "finished", "--", "true")
	said := strings.Contains(r.stderr, "Error from server (Conflict)") && strings.Contains(r.stderr, "sandbox has finished")
	if r.code == 0 || r.err != nil || !said || r.took > 10*time.Second {
		t.Errorf("want a quick refusal that says the sandbox finished:\n%s", r)
	}
	t.Logf("after %s: %s", r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
}

func testLostAgent(t *testing.T, e *interactive) {
	sbx := e.sleeper(t, "orphan", nil)
	e.ok(t, "exec", "orphan", "--", "true")
	kubectl(t, "-n", v1alpha1.DefaultSystemNamespace, "delete", "pod", sbx.Status.Agent, "--grace-period=0", "--force")
	r := e.kubectl(runOpts{timeout: 60 * time.Second}, "sandbox", "-n", e.ns, "exec", "orphan", "--", "true")
	if r.code == 0 || r.err != nil || r.took > 30*time.Second || !strings.Contains(r.stderr, sbx.Status.Agent) {
		t.Errorf("want exec to fail within 30s naming the lost agent %s:\n%s", sbx.Status.Agent, r)
	}
	t.Logf("agent lost, after %s: %s", r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	// The sandbox fails, and the pool gets its agent back.
	done := e.waitSandbox(t, "orphan", kubetest.Phase(v1alpha1.SandboxFailed))
	if done.Status.Reason != v1alpha1.ReasonAgentLost {
		t.Errorf("want reason AgentLost: %s", kubetest.DescribeSandbox(done))
	}
	r = e.kubectl(runOpts{timeout: 30 * time.Second}, "sandbox", "-n", e.ns, "exec", "orphan", "--", "true")
	if r.code == 0 || r.err != nil || r.took > 10*time.Second || !strings.Contains(r.stderr, "has finished") {
		t.Errorf("want exec into the failed sandbox refused at once, saying it has finished:\n%s", r)
	}
	t.Logf("sandbox failed, after %s: %s", r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
}
