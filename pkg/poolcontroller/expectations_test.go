package poolcontroller

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestExpectations(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(t0)
	e := newExpectations(clk, time.Minute)
	const key = "ns/pool"
	if !e.satisfied(key) {
		t.Fatal("a pool with no expectations must be satisfied")
	}
	e.expectCreations(key, 2)
	e.creationObserved(key)
	if e.satisfied(key) {
		t.Fatal("satisfied with one creation outstanding")
	}
	e.creationObserved(key)
	if !e.satisfied(key) {
		t.Fatal("not satisfied after both creations were seen")
	}
	e.expectDeletion(key, "u1")
	e.deletionObserved(key, "other")
	if e.satisfied(key) {
		t.Fatal("satisfied by the deletion of another Pod")
	}
	e.deletionObserved(key, "u1")
	if !e.satisfied(key) {
		t.Fatal("not satisfied after the deletion was seen")
	}
	e.expectCreations(key, 1)
	clk.SetTime(t0.Add(2 * time.Minute))
	if !e.satisfied(key) {
		t.Fatal("expectations must expire")
	}
	e.expectCreations(key, 1)
	if e.satisfied(key) {
		t.Fatal("new expectations after expiry must count afresh")
	}
	e.forget(key)
	if !e.satisfied(key) {
		t.Fatal("forget must clear")
	}
}
