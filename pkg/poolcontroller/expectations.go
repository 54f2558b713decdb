package poolcontroller

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/utils/clock"
)

// expectations remember, per pool, the Pod creations and deletions the
// controller made that its Pod informer has not shown yet, in the manner of
// the ReplicaSet controller's ControllerExpectations. While a pool has any,
// its Pods are not managed: a slow informer must never make the controller
// create or delete twice. Expectations older than ttl are dropped, so a lost
// watch event delays the pool but does not wedge it.
type expectations struct {
	clock clock.PassiveClock
	ttl   time.Duration

	mu    sync.Mutex
	pools map[string]*poolExpectations
}

type poolExpectations struct {
	adds     int
	deletes  sets.Set[string] // UIDs of Pods whose deletion was asked
	releases sets.Set[string] // UIDs of Pods whose cleanup finalizer was removed
	since    time.Time
}

func (p *poolExpectations) empty() bool {
	return p.adds <= 0 && p.deletes.Len() == 0 && p.releases.Len() == 0
}

func newExpectations(c clock.PassiveClock, ttl time.Duration) *expectations {
	return &expectations{clock: c, ttl: ttl, pools: map[string]*poolExpectations{}}
}

// satisfied says the pool's Pods may be managed: nothing is outstanding, or
// what is has waited longer than ttl.
func (e *expectations) satisfied(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pools[key]
	if !ok {
		return true
	}
	if p.empty() {
		return true
	}
	return e.clock.Since(p.since) > e.ttl
}

func (e *expectations) get(key string) *poolExpectations {
	p, ok := e.pools[key]
	if !ok || p.empty() || e.clock.Since(p.since) > e.ttl {
		p = &poolExpectations{deletes: sets.New[string](), releases: sets.New[string](), since: e.clock.Now()}
		e.pools[key] = p
	}
	return p
}

// expectCreations records that n Pods are about to be created.
func (e *expectations) expectCreations(key string, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.get(key).adds += n
}

// creationObserved lowers the creations outstanding: the informer showed a
// new Pod, or a create failed and will never show.
func (e *expectations) creationObserved(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.pools[key]; ok && p.adds > 0 {
		p.adds--
	}
}

// expectDeletion records that the Pod with uid is about to be deleted.
func (e *expectations) expectDeletion(key, uid string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.get(key).deletes.Insert(uid)
}

// deletionObserved clears one deletion: the informer showed the Pod going
// (deletionTimestamp set, or gone), or the delete failed.
func (e *expectations) deletionObserved(key, uid string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.pools[key]; ok {
		p.deletes.Delete(uid)
	}
}

// expectRelease records that the cleanup finalizer of the Pod with uid is
// being removed.
func (e *expectations) expectRelease(key, uid string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.get(key).releases.Insert(uid)
}

// releaseObserved clears one release: the informer showed the Pod without
// the finalizer, or gone, or the removal failed.
func (e *expectations) releaseObserved(key, uid string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.pools[key]; ok {
		p.releases.Delete(uid)
	}
}

// forget drops a pool's expectations (the pool is gone).
func (e *expectations) forget(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.pools, key)
}
