package framework

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// RestartContainerd kills the cluster's containerd with SIGKILL, as a crash
// would, and starts it again with the same command line, appending to the
// same log file. The new process replaces the old one in CLUSTER_DIR/pids,
// so hack/cluster/down.sh stops it as it would the first. Shims, and the
// containers they run, survive; kubelet and every other client of the
// socket must reconnect. It returns once the new containerd answers.
func RestartContainerd(log func(string)) error {
	clusterDir, err := Setting("CLUSTER_DIR")
	if err != nil {
		return err
	}
	sock, err := Setting("CONTAINERD_SOCK")
	if err != nil {
		return err
	}
	pidsFile := filepath.Join(clusterDir, "pids")
	pids, err := os.ReadFile(pidsFile)
	if err != nil {
		return err
	}
	pid := 0
	for _, line := range strings.Split(string(pids), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == "containerd" {
			pid, _ = strconv.Atoi(f[0])
		}
	}
	if pid == 0 {
		return fmt.Errorf("no containerd in %s", pidsFile)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("containerd (pid %d) is not running: %w", pid, err)
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "containerd" {
		return fmt.Errorf("pid %d is %q, not containerd", pid, args)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing containerd (pid %d): %w", pid, err)
	}
	// It is not our child: init reaps it.
	err = kubetest.Poll{Interval: 20 * time.Millisecond, Timeout: 30 * time.Second}.Until(context.Background(), func(context.Context) error {
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("containerd (pid %d) did not die", pid)
		}
		return nil
	})
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(clusterDir, "logs", "containerd.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own session: it outlives this process when the cluster is kept.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting containerd: %w", err)
	}
	go cmd.Wait() //nolint:errcheck // reaps it when down.sh stops it
	newPids := strings.Replace(string(pids), fmt.Sprintf("%d containerd\n", pid), fmt.Sprintf("%d containerd\n", cmd.Process.Pid), 1)
	if err := os.WriteFile(pidsFile, []byte(newPids), 0o644); err != nil {
		return err
	}
	log(fmt.Sprintf("containerd restarted: pid %d killed, pid %d started\n", pid, cmd.Process.Pid))
	return kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: time.Minute}.Until(context.Background(), func(context.Context) error {
		if out, err := exec.Command("ctr", "-a", sock, "version").CombinedOutput(); err != nil {
			return fmt.Errorf("containerd does not answer after its restart: %v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	})
}
