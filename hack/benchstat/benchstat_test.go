package benchstat

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

func TestPercentile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tc := range []struct {
		p    int
		want time.Duration
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {0, 1}, {1, 1}} {
		if got := Percentile(d, tc.p); got != tc.want {
			t.Errorf("p%d = %v, want %v", tc.p, got, tc.want)
		}
	}
	if d[0] != 5 {
		t.Error("Percentile sorted its argument")
	}
	if Percentile(nil, 50) != 0 {
		t.Error("no samples: want 0")
	}
	if got := Millis(12345 * time.Microsecond); got != "12.3 ms" {
		t.Errorf("Millis = %q", got)
	}
}

func TestWaitEvent(t *testing.T) {
	w := watch.NewFake()
	go func() {
		w.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a"}})
		w.Delete(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "b"}})
		w.Modify(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "b"}})
	}()
	if err := WaitEvent(w, 5*time.Second, func(o any) bool { return o.(*corev1.Pod).Name == "b" }); err != nil {
		t.Fatal(err)
	}
	if err := WaitEvent(watch.NewFake(), 10*time.Millisecond, func(any) bool { return true }); err == nil {
		t.Fatal("no event: want a timeout")
	}
	closed := watch.NewFake()
	closed.Stop()
	if err := WaitEvent(closed, 5*time.Second, func(any) bool { return true }); err == nil {
		t.Fatal("closed watch: want an error")
	}
}
