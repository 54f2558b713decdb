// Package framework runs the end-to-end tests' cluster: it brings up the
// project's local single-node cluster (hack/cluster/up.sh), imports the test
// images, hands out clients, and tears everything down afterwards, checking
// that nothing is left behind.
package framework

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is the running local cluster.
type Cluster struct {
	Kubeconfig string
	Config     *rest.Config
	Kube       kubernetes.Interface
	// TestImage is the busybox-based image imported on the node.
	TestImage string
}

// RepoRoot is the root of this repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// CanRun says whether this machine can run the cluster, and why not.
func CanRun() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "the local cluster needs root (kubelet and containerd manage cgroups, mounts and network namespaces)"
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "iptables", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false, fmt.Sprintf("%s is not installed (apt-get install containerd runc iptables openssl containernetworking-plugins busybox-static)", tool)
		}
	}
	return true, ""
}

// Setting returns one of the cluster scripts' settings (hack/cluster/lib.sh).
func Setting(name string) (string, error) {
	out, err := exec.Command("bash", "-c", fmt.Sprintf("source %s/hack/cluster/lib.sh && echo \"$%s\"", RepoRoot(), name)).Output()
	if err != nil {
		return "", fmt.Errorf("reading %s from hack/cluster/lib.sh: %w", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Script runs a script of the repository with output to the test log writer.
func Script(log func(string), name string, args ...string) error {
	cmd := exec.Command(filepath.Join(RepoRoot(), name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	log(out.String())
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// Up brings the cluster up and imports the images.
func Up(log func(string)) (*Cluster, error) {
	for _, s := range []string{"hack/cluster/build-binaries.sh", "hack/cluster/up.sh", "hack/images.sh"} {
		if err := Script(log, s); err != nil {
			return nil, err
		}
	}
	kubeconfig, err := Setting("KUBECONFIG_FILE")
	if err != nil {
		return nil, err
	}
	image, err := Setting("TEST_IMAGE")
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Cluster{Kubeconfig: kubeconfig, Config: cfg, Kube: kube, TestImage: image}, nil
}

// Down tears the cluster down.
func Down(log func(string)) error {
	return Script(log, "hack/cluster/down.sh")
}

// Leftovers lists what the cluster left on the machine after Down: processes,
// mounts, directories, cgroups, the bridge, iptables chains.
func Leftovers() ([]string, error) {
	var found []string
	dirs := map[string]string{}
	for _, s := range []string{"CLUSTER_DIR", "RUN_DIR", "CNI_BRIDGE", "CONTAINERD_SOCK"} {
		v, err := Setting(s)
		if err != nil {
			return nil, err
		}
		dirs[s] = v
	}
	for _, d := range []string{dirs["CLUSTER_DIR"], dirs["RUN_DIR"]} {
		if _, err := os.Stat(d); err == nil {
			found = append(found, "directory "+d)
		}
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (strings.HasPrefix(f[1], dirs["CLUSTER_DIR"]) || strings.HasPrefix(f[1], dirs["RUN_DIR"])) {
			found = append(found, "mount "+f[1])
		}
	}
	if out, _ := exec.Command("pgrep", "-af", "containerd-shim-runc-v2 .*"+dirs["CONTAINERD_SOCK"]).Output(); len(out) > 0 {
		found = append(found, "shim processes: "+strings.TrimSpace(string(out)))
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"} {
		if out, _ := exec.Command("pgrep", "-x", b).Output(); len(out) > 0 {
			found = append(found, "process "+b)
		}
	}
	if err := exec.Command("ip", "link", "show", dirs["CNI_BRIDGE"]).Run(); err == nil {
		found = append(found, "bridge "+dirs["CNI_BRIDGE"])
	}
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	for _, c := range cg {
		found = append(found, "cgroup "+c)
	}
	for _, table := range []string{"filter", "nat", "mangle"} {
		out, _ := exec.Command("iptables", "-t", table, "-S").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "KUBE-") {
				found = append(found, "iptables "+table+": "+l)
			}
		}
	}
	return found, nil
}
