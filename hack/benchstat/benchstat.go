// Package benchstat holds what the cluster benchmarks (hack/bench-e2e,
// hack/bench-interactive) share: percentiles of measured durations, their
// printing, and waiting on a watch for the event a measurement ends at.
package benchstat

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/watch"
)

// Percentile returns the p-th percentile (nearest rank) of d, or 0 for no
// samples. d is not modified.
func Percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1]
}

// Millis formats d in milliseconds with one decimal, e.g. "12.3 ms".
func Millis(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// WaitEvent reads w until an Added or Modified event whose object done
// accepts. It fails when the watch closes or timeout passes first.
func WaitEvent(w watch.Interface, timeout time.Duration, done func(any) bool) error {
	deadline := time.After(timeout)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return errors.New("watch closed")
			}
			if (ev.Type == watch.Added || ev.Type == watch.Modified) && done(ev.Object) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("timed out after %v waiting on a watch", timeout)
		}
	}
}
