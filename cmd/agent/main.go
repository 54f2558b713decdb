// Command agent runs in each agent Pod of a SandboxPool and creates the
// Pod's sandbox containers through the node's containerd.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/api"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/runtime/containerd"
	"github.com/fast-sandbox/fast-sandbox/pkg/agentpki"
	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/cli"
	"k8s.io/component-base/version"
)

type options struct {
	listen              string
	probeListen         string
	tlsDir              string
	containerdSocket    string
	containerdNamespace string
	cgroupParent        string
	stateDir            string
	slots               int
	cpuMillis           int64
	memoryBytes         int64
	podName, podNS      string
	podUID, nodeName    string
	pool                string
	defaultHandler      string
	handlers            map[string]string
	sandboxInit         string
	warmPerImage        int
	warmImages          []string
	syncWait            time.Duration
	createTimeout       time.Duration
	imageRefresh        time.Duration
	livenessThreshold   time.Duration
	cleanupAgentPodUID  string
	defaultPidsLimit    int64
	logMaxBytes         int64
	logMaxFiles         int
	storageCheckPeriod  time.Duration
	execServerIdle      time.Duration
	readOnlyRootFS      bool
	runAsNonRoot        bool
	userNamespaces      string
	hostProc            string
	hostIPs             []string
	egressAllow         []string
	egressDeny          []string
	egressSubnet        string
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string) int64 { return envIntDefault(name, 0) }

func envIntDefault(name string, def int64) int64 {
	if v, err := strconv.ParseInt(os.Getenv(name), 10, 64); err == nil {
		return v
	}
	return def
}

func envBool(name string) bool {
	v, _ := strconv.ParseBool(os.Getenv(name))
	return v
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// besideExecutable is the path of name in the agent binary's directory, if
// it is there.
func besideExecutable(name string) string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' })
}

func main() {
	o := &options{}
	cli.Main(cli.Component{
		Name:  "agent",
		Short: "Runs sandbox containers of one agent Pod through the node's containerd.",
		AddFlags: func(fs *pflag.FlagSet) {
			fs.StringVar(&o.listen, "listen", env("AGENT_LISTEN", ":"+strconv.Itoa(v1alpha1.AgentAPIPort)), "address of the agent API")
			fs.StringVar(&o.probeListen, "probe-listen", env("AGENT_PROBE_LISTEN", ":"+strconv.Itoa(v1alpha1.AgentProbePort)), "address of /healthz, /readyz and /metrics in plain HTTP (for kubelet's probes); empty: none")
			fs.StringVar(&o.tlsDir, "tls-dir", env("AGENT_TLS_DIR", "/var/run/fast-sandbox/agent-tls"),
				"directory of the agent's certificate (tls.crt, tls.key) and of the CA (ca.crt) that issued the scheduler's: the API takes only mutual TLS with the scheduler's certificate")
			fs.StringVar(&o.containerdSocket, "containerd-socket", env("CONTAINERD_SOCKET", "/run/containerd/containerd.sock"), "containerd's socket")
			fs.StringVar(&o.containerdNamespace, "containerd-namespace", env("CONTAINERD_NAMESPACE", "k8s.io"), "containerd namespace of the node's images (kubelet's is k8s.io)")
			fs.StringVar(&o.cgroupParent, "cgroup-parent", os.Getenv("CGROUP_PARENT"), "cgroup for sandboxes; default: the agent Pod's, found through containerd")
			fs.StringVar(&o.stateDir, "state-dir", env("AGENT_STATE_DIR", "/var/lib/fast-sandbox/agent"), "directory for sandbox logs; in a Pod, a hostPath mounted at the same path")
			fs.IntVar(&o.slots, "slots", int(envInt("AGENT_SLOTS")), "sandboxes this agent runs at once (0: unbounded)")
			fs.Int64Var(&o.cpuMillis, "cpu-millis", envInt("CPU_LIMIT_MILLIS"), "the agent Pod's CPU limit in millicores (downward API), 0: unbounded")
			fs.Int64Var(&o.memoryBytes, "memory-bytes", envInt("MEMORY_LIMIT_BYTES"), "the agent Pod's memory limit in bytes (downward API), 0: unbounded")
			fs.StringVar(&o.podName, "pod-name", os.Getenv("POD_NAME"), "the agent Pod's name (downward API)")
			fs.StringVar(&o.podNS, "pod-namespace", os.Getenv("POD_NAMESPACE"), "the agent Pod's namespace (downward API)")
			fs.StringVar(&o.podUID, "pod-uid", os.Getenv("POD_UID"), "the agent Pod's UID (downward API), to find its cgroup and network")
			fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "the node's name (downward API)")
			fs.StringVar(&o.pool, "pool", os.Getenv("POOL_NAME"), "the SandboxPool of this agent")
			fs.StringVar(&o.defaultHandler, "default-runtime-handler", env("DEFAULT_RUNTIME_HANDLER", "runc"), "runtime handler of sandboxes that name none")
			fs.StringToStringVar(&o.handlers, "runtime-handlers", map[string]string{"runc": "runc", "crun": "crun"}, "runtime handler name to OCI runtime binary")
			fs.StringVar(&o.sandboxInit, "sandbox-init", env("SANDBOX_INIT", besideExecutable("sandbox-init")), "the sandbox-init binary that warm containers run; empty disables warm containers")
			fs.IntVar(&o.warmPerImage, "warm-per-image", int(envIntDefault("WARM_PER_IMAGE", 2)), "warm containers kept for each image in recent use (0 disables them)")
			fs.StringSliceVar(&o.warmImages, "warm-images", splitList(os.Getenv("WARM_IMAGES")), "images kept warm from the start")
			fs.Int64Var(&o.defaultPidsLimit, "default-pids-limit", envIntDefault("SANDBOX_DEFAULT_PIDS_LIMIT", containerd.DefaultPidsLimit),
				"processes and threads of a sandbox that sets no pids limit of its own")
			fs.Int64Var(&o.logMaxBytes, "log-max-bytes", envIntDefault("SANDBOX_LOG_MAX_BYTES", containerd.DefaultLogMaxBytes),
				"size at which a sandbox's log (stdout and stderr) is rotated")
			fs.IntVar(&o.logMaxFiles, "log-max-files", int(envIntDefault("SANDBOX_LOG_MAX_FILES", containerd.DefaultLogMaxFiles)),
				"files a sandbox's log keeps, the current one included: at most log-max-bytes times this on disk")
			fs.DurationVar(&o.storageCheckPeriod, "storage-check-period", envDuration("SANDBOX_STORAGE_CHECK_PERIOD", containerd.DefaultStorageCheckPeriod),
				"how often the ephemeral storage (writable layer and logs) of sandboxes with a limit is measured; one above its limit is stopped")
			fs.DurationVar(&o.execServerIdle, "exec-server-idle-timeout", envDuration("SANDBOX_EXEC_SERVER_IDLE_TIMEOUT", containerd.DefaultExecServerIdleTimeout),
				"how long a sandbox's exec server (which runs its execs without runc exec) stays after its last exec; negative runs every exec through runc exec")
			fs.BoolVar(&o.readOnlyRootFS, "read-only-rootfs", envBool("SANDBOX_READ_ONLY_ROOTFS"),
				fmt.Sprintf("mount every sandbox's root filesystem read-only, with a %d MiB tmpfs at /tmp", containerd.TmpSizeBytes>>20))
			fs.BoolVar(&o.runAsNonRoot, "run-as-non-root", envBool("SANDBOX_RUN_AS_NON_ROOT"),
				"fail (RunAsNonRootViolation) every sandbox whose image's user is root, before its command runs")
			fs.StringVar(&o.userNamespaces, "user-namespaces", env("SANDBOX_USER_NAMESPACES", containerd.UserNamespacesAuto),
				"whether each sandbox gets a user namespace of its own (root inside is an unprivileged host user): "+
					"Auto (when the node allows), Required (the agent does not start otherwise) or Disabled")
			fs.StringVar(&o.hostProc, "host-proc", env("HOST_PROC", "/proc"),
				"where the node's /proc is visible to the agent (the pool controller mounts it at /host/proc): an Egress sandbox's network namespace is <host-proc>/<pid>/ns/net")
			fs.StringSliceVar(&o.hostIPs, "host-ip", splitList(os.Getenv("HOST_IP")),
				"the node's addresses (downward API status.hostIP), denied to Egress sandboxes unless --egress-allow-cidrs lists them")
			fs.StringSliceVar(&o.egressAllow, "egress-allow-cidrs", splitList(os.Getenv("EGRESS_ALLOW_CIDRS")),
				"destinations Egress sandboxes may reach although default-denied (private, link-local, the node's...); a resolver a sandbox uses, e.g. the cluster DNS Service, must be listed")
			fs.StringSliceVar(&o.egressDeny, "egress-deny-cidrs", splitList(os.Getenv("EGRESS_DENY_CIDRS")),
				"destinations Egress sandboxes may not reach; win over --egress-allow-cidrs")
			fs.StringVar(&o.egressSubnet, "egress-subnet", env("EGRESS_SUBNET", network.DefaultSubnet.String()),
				"IPv4 range of the Egress sandboxes' veth addresses, a /30 per sandbox, inside the agent Pod's network namespace")
			fs.DurationVar(&o.syncWait, "sync-wait", 5*time.Second, "how long a sync waits for its creations before answering Creating for those still under way")
			fs.DurationVar(&o.createTimeout, "create-timeout", 10*time.Minute, "bound on one sandbox's creation, image pull included")
			fs.DurationVar(&o.livenessThreshold, "liveness-threshold", agent.DefaultLivenessThreshold,
				"/healthz fails once containerd has not answered for this long, so that kubelet restarts the agent; /readyz fails while it does not answer")
			fs.DurationVar(&o.imageRefresh, "image-refresh-period", 5*time.Second, "how often the image list that status reports is refreshed")
			fs.StringVar(&o.cleanupAgentPodUID, "cleanup-agent-pod-uid", "", "cleanup mode: remove every container of the agent Pod with this UID "+
				"(sandboxes and warm containers, with their tasks, snapshots, logs and warm directories) through --containerd-socket, "+
				"--containerd-namespace and --state-dir, then exit: 0 once nothing of it is left, non-zero otherwise. "+
				"Needs no API token or Kubernetes API access; the pool controller runs it in a cleanup Pod on the node of an agent Pod that stopped")
		},
		Run: func(ctx context.Context, logger logr.Logger) error { return run(ctx, logger, o) },
	})
}

func run(ctx context.Context, log logr.Logger, o *options) error {
	if o.cleanupAgentPodUID != "" {
		return cleanup(ctx, log, o)
	}
	tlsConfig, err := agentpki.ServerConfig(filepath.Join(o.tlsDir, agentpki.KeyCert), filepath.Join(o.tlsDir, agentpki.KeyKey),
		filepath.Join(o.tlsDir, agentpki.KeyCACert))
	if err != nil {
		return fmt.Errorf("loading the agent API's credentials: %w", err)
	}
	name := o.podName
	if name == "" {
		name, _ = os.Hostname()
	}
	egress, egressErr := egressConfig(o)
	rt := containerd.New(containerd.Config{
		Address: o.containerdSocket, Namespace: o.containerdNamespace, CgroupParent: o.cgroupParent,
		PodUID: o.podUID, Agent: name, StateDir: o.stateDir,
		DefaultRuntimeHandler: o.defaultHandler, RuntimeHandlers: o.handlers,
		InitBinary: o.sandboxInit, WarmPerImage: o.warmPerImage, WarmImages: o.warmImages,
		DefaultPidsLimit: o.defaultPidsLimit, LogMaxBytes: o.logMaxBytes, LogMaxFiles: o.logMaxFiles,
		StorageCheckPeriod: o.storageCheckPeriod, ReadOnlyRootFilesystem: o.readOnlyRootFS, RunAsNonRoot: o.runAsNonRoot,
		UserNamespaces: o.userNamespaces, ExecServerIdleTimeout: o.execServerIdle,
		// The Manager works in the agent's own network namespace, the Pod's.
		Egress: &egress, EgressError: egressErr, HostProc: o.hostProc,
	}, log.WithName("containerd"))
	defer func() { _ = rt.Close() }()
	a := agent.New(agent.Config{
		Info: api.AgentInfo{PodName: name, Namespace: o.podNS, PodUID: o.podUID, NodeName: o.nodeName,
			Pool: o.pool, Version: version.Get().GitVersion},
		Capacity: api.Resources{Slots: o.slots, CPUMillis: o.cpuMillis, MemoryBytes: o.memoryBytes},
		SyncWait: o.syncWait, CreateTimeout: o.createTimeout, ImageRefreshPeriod: o.imageRefresh,
	}, rt, log)

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.listen, err)
	}
	// Kubelet restarts an agent that lost containerd for good (its liveness
	// probe); one that cannot reach it for now is not ready.
	health := agent.NewHealth(rt, agent.HealthConfig{LivenessThreshold: o.livenessThreshold}, log.WithName("health"))
	srv := &http.Server{Handler: a.Handler(agent.WithHealth(health)), ReadHeaderTimeout: 10 * time.Second, TLSConfig: tlsConfig}
	errCh := make(chan error, 2)
	go func() { errCh <- srv.Serve(tls.NewListener(ln, tlsConfig)) }()
	log.Info("agent API listening (mutual TLS)", "address", ln.Addr().String())
	servers := []*http.Server{srv}
	if o.probeListen != "" {
		pln, err := net.Listen("tcp", o.probeListen)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", o.probeListen, err)
		}
		probes := &http.Server{Handler: a.ProbeHandler(agent.WithHealth(health)), ReadHeaderTimeout: 10 * time.Second}
		go func() { errCh <- probes.Serve(pln) }()
		servers = append(servers, probes)
		log.Info("probes listening", "address", pln.Addr().String())
	}
	// Serve /healthz while starting; /readyz turns ready once sandboxes are adopted.
	if err := a.Start(ctx); err != nil {
		return err
	}
	go health.Run(ctx)
	select {
	case <-ctx.Done():
	case err := <-errCh:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving the agent API: %w", err)
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Shutdown(shutdownCtx))
	}
	return errors.Join(errs...)
}

// egressConfig is the network configuration of Egress sandboxes from the
// flags. A malformed setting does not stop the agent: it is returned as the
// error that Egress sandboxes then fail with, and None sandboxes run.
func egressConfig(o *options) (network.Config, error) {
	var cfg network.Config
	var errs []error
	if s := strings.TrimSpace(o.egressSubnet); s != "" {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("--egress-subnet: %w", err))
		}
		cfg.Subnet = p
	}
	prefixes := func(flag string, ss []string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			p, err := parsePrefix(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("--%s: %w", flag, err))
				continue
			}
			out = append(out, p)
		}
		return out
	}
	cfg.Policy.AllowCIDRs = prefixes("egress-allow-cidrs", o.egressAllow)
	cfg.Policy.DenyCIDRs = prefixes("egress-deny-cidrs", o.egressDeny)
	for _, s := range o.hostIPs {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("--host-ip: %w", err))
			continue
		}
		cfg.Policy.HostIPs = append(cfg.Policy.HostIPs, a)
	}
	if len(errs) == 0 {
		return cfg, nil
	}
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return cfg, errors.New(strings.Join(msgs, "; "))
}

// parsePrefix parses a CIDR, or a single address as its host prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.ParsePrefix(s)
}

// cleanup is the cleanup mode: it removes what the agent Pod
// o.cleanupAgentPodUID left on the node and exits.
func cleanup(ctx context.Context, log logr.Logger, o *options) error {
	log = log.WithValues("agentPodUID", o.cleanupAgentPodUID)
	n, err := containerd.CleanupAgentPod(ctx, containerd.Config{
		Address: o.containerdSocket, Namespace: o.containerdNamespace, StateDir: o.stateDir,
	}, o.cleanupAgentPodUID, log.WithName("containerd"))
	if err != nil {
		return fmt.Errorf("cleaning up after agent Pod %s (%d containers removed): %w", o.cleanupAgentPodUID, n, err)
	}
	log.Info("cleaned up after the agent Pod", "removed", n)
	return nil
}
