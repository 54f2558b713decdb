package scheduler

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"

	v1alpha1 "github.com/fast-sandbox/fast-sandbox/pkg/apis/sandbox/v1alpha1"
)

// TestFindProfile: a profile is found by name; an unknown one is refused
// naming it and, sorted, the profiles there are.
func TestFindProfile(t *testing.T) {
	cfg := &config.KubeSchedulerConfiguration{Profiles: []config.KubeSchedulerProfile{
		{SchedulerName: "fast-sandbox"}, {SchedulerName: "bin-pack"},
	}}
	if p, err := findProfile(cfg, "p", "bin-pack"); err != nil || p != &cfg.Profiles[1] {
		t.Errorf("bin-pack: %v, %v", p, err)
	}
	_, err := findProfile(cfg, "p", "spread")
	if _, ok := err.(*unknownProfileError); !ok {
		t.Fatalf("spread: %v (%T), want an unknownProfileError", err, err)
	}
	want := `SandboxPool p: spec.scheduling.schedulerName "spread" names no profile of the scheduler's configuration (its profiles: "bin-pack", "fast-sandbox")`
	if err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}
}

// TestPoolNamingUnknownProfileIsShown: the sandboxes of a pool whose
// spec.scheduling.schedulerName names no profile stay Pending with reason
// UnknownSchedulerProfile, a message naming the profile asked for and the
// known ones, and a Warning event (events.k8s.io/v1); they are placed once
// the pool names a profile that exists.
func TestPoolNamingUnknownProfileIsShown(t *testing.T) {
	e := newEnv(t)
	e.updatePool(func(p *v1alpha1.SandboxPool) { p.Spec.Scheduling.SchedulerName = "no-such-profile" })
	a := e.addAgent("agent-a")
	e.start(testOptions())
	e.createSandbox("s1")
	s := e.wait("s1", "refused", 5*time.Second, func(s *v1alpha1.Sandbox) bool {
		return s.Status.Reason == v1alpha1.ReasonUnknownSchedulerProfile
	})
	if s.Status.Phase != v1alpha1.SandboxPending ||
		!strings.Contains(s.Status.Message, `"no-such-profile"`) ||
		!strings.Contains(s.Status.Message, `its profiles: "fast-sandbox"`) {
		t.Errorf("status %+v", s.Status)
	}
	cond := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.SandboxConditionScheduled)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != v1alpha1.ReasonUnknownSchedulerProfile || cond.Message != s.Status.Message {
		t.Errorf("Scheduled condition %+v", cond)
	}
	var event *eventsv1.Event
	waitUntil(t, "a FailedScheduling event", 5*time.Second, func() bool {
		list, err := e.kube.EventsV1().Events(testNS).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for i, ev := range list.Items {
			if ev.Regarding.Name == "s1" && ev.Reason == "FailedScheduling" && strings.Contains(ev.Note, "no-such-profile") {
				event = &list.Items[i]
				return true
			}
		}
		return false
	})
	if event.Type != v1.EventTypeWarning || event.Action != "Schedule" || event.ReportingController != fieldManager ||
		event.Regarding.Kind != "Sandbox" || event.Note != s.Status.Message {
		t.Errorf("event %+v", event)
	}
	if n := a.createsOf("sbx-s1"); n != 0 {
		t.Errorf("created %d times", n)
	}

	e.updatePool(func(p *v1alpha1.SandboxPool) { p.Spec.Scheduling.SchedulerName = v1alpha1.DefaultSchedulerName })
	e.wait("s1", "Running once the pool is fixed", 5*time.Second, running)
}
