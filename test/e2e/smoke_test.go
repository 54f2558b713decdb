package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fast-sandbox/fast-sandbox/test/kubetest"
)

// TestPodRuns checks that the local cluster runs Pods from the test image:
// a long-running one reaches Running and Ready, a short one Succeeded with
// its output in the logs.
func TestPodRuns(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pods := cluster.Kube.CoreV1().Pods("default")

	pod := func(name string, cmd ...string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{
				RestartPolicy:                 corev1.RestartPolicyNever,
				TerminationGracePeriodSeconds: new(int64),
				Containers: []corev1.Container{{
					Name: "main", Image: cluster.TestImage, ImagePullPolicy: corev1.PullNever, Command: cmd,
				}},
			},
		}
	}
	if _, err := pods.Create(ctx, pod("sleeper", "sleep", "3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, pod("greeter", "sh", "-c", "echo hello from $(hostname)"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll := kubetest.Poll{Interval: 100 * time.Millisecond, Timeout: 2 * time.Minute}
	ready := kubetest.WaitPod(t, cluster.Kube, "default", "sleeper", poll, kubetest.PodReady())
	if ready.Status.Phase != corev1.PodRunning || ready.Status.PodIP == "" {
		t.Errorf("sleeper: phase %s, pod IP %q; want Running with an IP from the CNI bridge", ready.Status.Phase, ready.Status.PodIP)
	}
	kubetest.WaitPod(t, cluster.Kube, "default", "greeter", poll, kubetest.PodPhase(corev1.PodSucceeded))
	logs, err := pods.GetLogs("greeter", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("reading logs of greeter: %v", err)
	}
	if !strings.Contains(string(logs), "hello from greeter") {
		t.Errorf("greeter logs %q, want %q", logs, "hello from greeter")
	}
	for _, name := range []string{"sleeper", "greeter"} {
		if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("deleting %s: %v", name, err)
		}
	}
}
