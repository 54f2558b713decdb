// Package e2e holds the end-to-end tests: they bring up a real single-node
// Kubernetes cluster with kubelet and containerd on this machine, run against
// it, and remove it.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/fast-sandbox/fast-sandbox/test/e2e/framework"
)

var cluster *framework.Cluster

func TestMain(m *testing.M) {
	if ok, why := framework.CanRun(); !ok {
		fmt.Printf("skipping the end-to-end tests: %s\n", why)
		os.Exit(m.Run()) // each test skips with the same reason
	}
	logf := func(s string) { fmt.Fprint(os.Stderr, s) }
	var err error
	cluster, err = framework.Up(logf)
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "bringing up the cluster: %v\n", err)
	} else {
		code = m.Run()
	}
	if os.Getenv("FAST_SANDBOX_E2E_KEEP") != "" && cluster != nil {
		fmt.Fprintf(os.Stderr, "FAST_SANDBOX_E2E_KEEP set: leaving the cluster up (kubeconfig %s)\n", cluster.Kubeconfig)
		os.Exit(code)
	}
	if err := framework.Down(logf); err != nil {
		fmt.Fprintf(os.Stderr, "tearing down the cluster: %v\n", err)
		code = 1
	}
	left, err := framework.Leftovers()
	if err != nil || len(left) > 0 {
		fmt.Fprintf(os.Stderr, "the cluster left traces behind (err %v):\n", err)
		for _, l := range left {
			fmt.Fprintf(os.Stderr, "  %s\n", l)
		}
		code = 1
	}
	os.Exit(code)
}

func requireCluster(t *testing.T) {
	t.Helper()
	if ok, why := framework.CanRun(); !ok {
		t.Skip(why)
	}
	if cluster == nil {
		t.Fatal("the cluster is not up")
	}
}
