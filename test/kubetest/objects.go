package kubetest

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
	"github.com/fast-sandbox/fast-sandbox/pkg/generated/clientset/versioned"
)

// Phase wants a Sandbox in phase p.
func Phase(p v1alpha1.SandboxPhase) Want[*v1alpha1.Sandbox] {
	return Where("phase "+string(p), func(s *v1alpha1.Sandbox) bool { return s.Status.Phase == p })
}

// Finished wants a Sandbox that succeeded or failed.
func Finished() Want[*v1alpha1.Sandbox] {
	return Where("phase Succeeded or Failed", IsFinished)
}

// Reason wants a Sandbox whose status has the reason r, in any phase.
func Reason(r string) Want[*v1alpha1.Sandbox] {
	return Where("reason "+r, func(s *v1alpha1.Sandbox) bool { return s.Status.Reason == r })
}

// IsFinished says whether a Sandbox succeeded or failed.
func IsFinished(s *v1alpha1.Sandbox) bool {
	return s.Status.Phase == v1alpha1.SandboxSucceeded || s.Status.Phase == v1alpha1.SandboxFailed
}

// WaitSandbox waits until want holds of the Sandbox ns/name and returns it.
// On timeout the test fails with the Sandbox's last status (phase, reason,
// message, conditions), or why it could not be read.
func WaitSandbox(tb testing.TB, c versioned.Interface, ns, name string, p Poll, want Want[*v1alpha1.Sandbox]) *v1alpha1.Sandbox {
	tb.Helper()
	return waitObject(tb, p, "Sandbox "+ns+"/"+name, sandboxGetter(c, ns, name), want, DescribeSandbox)
}

// WaitSandboxGone waits until the Sandbox ns/name is not found.
func WaitSandboxGone(tb testing.TB, c versioned.Interface, ns, name string, p Poll) {
	tb.Helper()
	waitGone(tb, p, "Sandbox "+ns+"/"+name, sandboxGetter(c, ns, name), apierrors.IsNotFound, DescribeSandbox)
}

func sandboxGetter(c versioned.Interface, ns, name string) func(context.Context) (*v1alpha1.Sandbox, error) {
	return func(ctx context.Context) (*v1alpha1.Sandbox, error) {
		return c.SandboxV1alpha1().Sandboxes(ns).Get(ctx, name, metav1.GetOptions{})
	}
}

// WaitPool waits until want holds of the SandboxPool name and returns it.
// On timeout the test fails with the pool's last status.
func WaitPool(tb testing.TB, c versioned.Interface, name string, p Poll, want Want[*v1alpha1.SandboxPool]) *v1alpha1.SandboxPool {
	tb.Helper()
	get := func(ctx context.Context) (*v1alpha1.SandboxPool, error) {
		return c.SandboxV1alpha1().SandboxPools().Get(ctx, name, metav1.GetOptions{})
	}
	return waitObject(tb, p, "SandboxPool "+name, get, want, DescribePool)
}

// PodReady wants a Pod whose Ready condition is True.
func PodReady() Want[*corev1.Pod] { return Where("condition Ready", IsPodReady) }

// PodPhase wants a Pod in phase p.
func PodPhase(p corev1.PodPhase) Want[*corev1.Pod] {
	return Where("phase "+string(p), func(pod *corev1.Pod) bool { return pod.Status.Phase == p })
}

// IsPodReady says whether a Pod's Ready condition is True.
func IsPodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitPod waits until want holds of the Pod ns/name and returns it. On
// timeout the test fails with the Pod's last status.
func WaitPod(tb testing.TB, kube kubernetes.Interface, ns, name string, p Poll, want Want[*corev1.Pod]) *corev1.Pod {
	tb.Helper()
	return waitObject(tb, p, "Pod "+ns+"/"+name, podGetter(kube, ns, name), want, DescribePod)
}

// WaitPodGone waits until the Pod ns/name is not found.
func WaitPodGone(tb testing.TB, kube kubernetes.Interface, ns, name string, p Poll) {
	tb.Helper()
	waitGone(tb, p, "Pod "+ns+"/"+name, podGetter(kube, ns, name), apierrors.IsNotFound, DescribePod)
}

func podGetter(kube kubernetes.Interface, ns, name string) func(context.Context) (*corev1.Pod, error) {
	return func(ctx context.Context) (*corev1.Pod, error) {
		return kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	}
}

// WaitSecret waits until the Secret ns/name exists and returns it.
func WaitSecret(tb testing.TB, kube kubernetes.Interface, ns, name string, p Poll) *corev1.Secret {
	tb.Helper()
	get := func(ctx context.Context) (*corev1.Secret, error) {
		return kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	}
	return waitObject(tb, p, "Secret "+ns+"/"+name, get, Exists[*corev1.Secret](), func(*corev1.Secret) string { return "" })
}

// DescribeSandbox says, in one line, what a failed check needs to know of a
// Sandbox's state.
func DescribeSandbox(s *v1alpha1.Sandbox) string {
	if s == nil {
		return "<no Sandbox>"
	}
	st := s.Status
	var b strings.Builder
	fmt.Fprintf(&b, "phase %q reason %q message %q", st.Phase, st.Reason, st.Message)
	if st.Agent != "" || st.ContainerID != "" {
		fmt.Fprintf(&b, " agent %q container %q", st.Agent, st.ContainerID)
	}
	if st.ExitCode != nil {
		fmt.Fprintf(&b, " exit code %d", *st.ExitCode)
	}
	b.WriteString(conditions(st.Conditions))
	b.WriteString(deletion(&s.ObjectMeta))
	return b.String()
}

// DescribePool says, in one line, what a failed check needs to know of a
// SandboxPool's state.
func DescribePool(p *v1alpha1.SandboxPool) string {
	if p == nil {
		return "<no SandboxPool>"
	}
	st := p.Status
	s := fmt.Sprintf("agents %d ready %d, slots used %d free %d, observed generation %d of %d",
		st.Agents, st.ReadyAgents, st.UsedSlots, st.FreeSlots, st.ObservedGeneration, p.Generation)
	return s + conditions(st.Conditions) + deletion(&p.ObjectMeta)
}

// DescribePod says, in one line, what a failed check needs to know of a
// Pod's state.
func DescribePod(p *corev1.Pod) string {
	if p == nil {
		return "<no Pod>"
	}
	st := p.Status
	var b strings.Builder
	fmt.Fprintf(&b, "phase %q reason %q message %q node %q IP %q", st.Phase, st.Reason, st.Message, p.Spec.NodeName, st.PodIP)
	if len(st.Conditions) > 0 {
		b.WriteString(", conditions:")
		for _, c := range st.Conditions {
			fmt.Fprintf(&b, " %s=%s", c.Type, c.Status)
			if c.Reason != "" || c.Message != "" {
				fmt.Fprintf(&b, " (%s: %s)", c.Reason, c.Message)
			}
		}
	}
	for _, c := range st.ContainerStatuses {
		fmt.Fprintf(&b, ", container %s (restarts %d)", c.Name, c.RestartCount)
		switch s := c.State; {
		case s.Running != nil:
			b.WriteString(" running")
		case s.Waiting != nil:
			fmt.Fprintf(&b, " waiting: %s %s", s.Waiting.Reason, s.Waiting.Message)
		case s.Terminated != nil:
			fmt.Fprintf(&b, " terminated: exit %d %s %s", s.Terminated.ExitCode, s.Terminated.Reason, s.Terminated.Message)
		}
	}
	b.WriteString(deletion(&p.ObjectMeta))
	return b.String()
}

func conditions(cs []metav1.Condition) string {
	if len(cs) == 0 {
		return ", no conditions"
	}
	var b strings.Builder
	b.WriteString(", conditions:")
	for _, c := range cs {
		fmt.Fprintf(&b, " %s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message)
	}
	return b.String()
}

func deletion(m *metav1.ObjectMeta) string {
	s := ""
	if m.DeletionTimestamp != nil {
		s += fmt.Sprintf(", deleted at %s", m.DeletionTimestamp.UTC().Format("15:04:05.000"))
	}
	if len(m.Finalizers) > 0 {
		s += fmt.Sprintf(", finalizers %v", m.Finalizers)
	}
	return s
}
