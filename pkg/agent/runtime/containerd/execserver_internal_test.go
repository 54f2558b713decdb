package containerd

import (
	"testing"
	"time"
)

// TestExecServersDoesNotWaitForASlot: the count the agent's status reports
// is read while a slot is locked (its server starting or stopping, which
// takes seconds), not after.
func TestExecServersDoesNotWaitForASlot(t *testing.T) {
	r := &Runtime{}
	sl := r.execSlot("fsbx-busy")
	sl.mu.Lock() // as startExecServer holds it
	defer sl.mu.Unlock()
	r.execServers.live.Add(1)
	got := make(chan int, 1)
	go func() { got <- r.ExecServers() }()
	select {
	case n := <-got:
		if n != 1 {
			t.Errorf("ExecServers() = %d, want 1", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ExecServers waited for a locked slot")
	}
}
