package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// onLockedThread runs fn on an OS thread of its own, locked for fn's whole
// run. The thread's network namespace is restored before the thread goes
// back to the Go scheduler; if it cannot be, the thread stays locked and is
// thrown away when its goroutine ends, so no other goroutine ever runs in a
// namespace it did not ask for.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the thread's network namespace: %w", err)
			return
		}
		defer func() { _ = orig.Close() }()
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime ends it with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore the thread's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// inNS runs fn on a locked OS thread switched into the network namespace ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter network namespace: %w", err)
		}
		return fn()
	})
}

// writeSysctl writes a sysctl of the calling thread's network namespace;
// key is its path under /proc/sys, e.g. "net/ipv4/ip_forward". With
// optional set, a sysctl that does not exist (IPv6 disabled at boot) is no
// error.
func writeSysctl(key, value string, optional bool) error {
	err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	if err != nil && (!optional || !errors.Is(err, os.ErrNotExist)) {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}
