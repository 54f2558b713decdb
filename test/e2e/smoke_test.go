package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
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
	waitPod := func(name string, done func(*corev1.Pod) bool) *corev1.Pod {
		var last *corev1.Pod
		err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			p, err := pods.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			last = p
			return done(p), nil
		})
		if err != nil {
			t.Fatalf("pod %s: %v; last status %+v", name, err, last.Status)
		}
		return last
	}
	ready := waitPod("sleeper", func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
	if ready.Status.Phase != corev1.PodRunning || ready.Status.PodIP == "" {
		t.Errorf("sleeper: phase %s, pod IP %q; want Running with an IP from the CNI bridge", ready.Status.Phase, ready.Status.PodIP)
	}
	waitPod("greeter", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
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
