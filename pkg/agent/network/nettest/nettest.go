// Package nettest holds test helpers for throwaway network namespaces: it
// creates and removes named namespaces, runs code in them on locked OS
// threads, opens netlink handles in them, serves and dials TCP from them,
// and joins an "agent" namespace to a "world" namespace by a veth. It is
// imported only by tests, and never touches the host's own network.
package nettest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Timeouts of Dial: ReachTimeout for a connection that must be answered
// (and for reading its answer), BlockedTimeout for one that must not be.
const (
	BlockedTimeout = 300 * time.Millisecond
	ReachTimeout   = 3 * time.Second
)

// labels are the names of namespace paths in test messages.
var labels sync.Map

// SetLabel names the namespace at path in test messages.
func SetLabel(path, label string) { labels.Store(path, label) }

// Label is the name of the namespace at path in test messages: its label,
// else the path itself.
func Label(path string) string {
	if l, ok := labels.Load(path); ok {
		return l.(string)
	}
	return path
}

// Pair is a throwaway agent netns connected to a throwaway world netns:
//
//	agent eth0 192.0.2.1/24 ── world eth0 192.0.2.2/24 + 10.99.0.1/32 (+ PairOptions.WorldAddrs)
//
// The agent routes by default, and to 10.99.0.1, through the world; the
// world routes the sandbox subnet (198.18.0.0/15, network.DefaultSubnet)
// back through the agent, so that only a firewall keeps it from the
// sandboxes. Agent and World are the namespaces' paths, labelled "agent"
// and "world".
type Pair struct {
	Agent, World string
}

// PairOptions are the variations of a Pair.
type PairOptions struct {
	// MTU is the veth's MTU; 0 leaves the kernel's default.
	MTU int
	// WorldAddrs are further addresses (CIDR) of the world's eth0.
	WorldAddrs []string
}

// NewPair makes a Pair, removed when the test ends; it skips the test when
// not run as root.
func NewPair(t testing.TB, o PairOptions) *Pair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and nftables tables")
	}
	dir := t.TempDir()
	p := &Pair{Agent: filepath.Join(dir, "agent"), World: filepath.Join(dir, "world")}
	SetLabel(p.Agent, "agent")
	SetLabel(p.World, "world")
	t.Cleanup(func() { // before TempDir's removal
		_ = RemoveNamedNS(p.Agent)
		_ = RemoveNamedNS(p.World)
	})
	for _, path := range []string{p.Agent, p.World} {
		Must(t, CreateNamedNS(path))
	}
	ah, wh := Handle(t, p.Agent), Handle(t, p.World)
	wns, err := netns.GetFromPath(p.World)
	Must(t, err)
	defer func() { _ = wns.Close() }()
	Must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: o.MTU}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(wns))}))
	for _, side := range []struct {
		h     *netlink.Handle
		addrs []string
	}{{ah, []string{"192.0.2.1/24"}}, {wh, append([]string{"192.0.2.2/24", "10.99.0.1/32"}, o.WorldAddrs...)}} {
		lo, err := side.h.LinkByName("lo")
		Must(t, err)
		Must(t, side.h.LinkSetUp(lo))
		eth, err := side.h.LinkByName("eth0")
		Must(t, err)
		for _, a := range side.addrs {
			addr, err := netlink.ParseAddr(a)
			Must(t, err)
			Must(t, side.h.AddrAdd(eth, addr))
		}
		Must(t, side.h.LinkSetUp(eth))
	}
	eth, err := ah.LinkByName("eth0")
	Must(t, err)
	Must(t, ah.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: CIDR("10.99.0.1/32"), Gw: net.ParseIP("192.0.2.2")}))
	Must(t, ah.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: CIDR("0.0.0.0/0"), Gw: net.ParseIP("192.0.2.2")}))
	weth, err := wh.LinkByName("eth0")
	Must(t, err)
	Must(t, wh.RouteAdd(&netlink.Route{LinkIndex: weth.Attrs().Index, Dst: CIDR("198.18.0.0/15"), Gw: net.ParseIP("192.0.2.1")}))
	return p
}

// CreateNamedNS creates a new network namespace and keeps it alive by
// bind-mounting it onto path, a new file, as `ip netns add` does in
// /run/netns. The file is removed again if that fails.
func CreateNamedNS(path string) (err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	return OnLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount network namespace onto %s: %w", path, err)
		}
		return nil
	})
}

// RemoveNamedNS unmounts and removes a file made by CreateNamedNS.
func RemoveNamedNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns file %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file: %w", err)
	}
	return nil
}

// OnLockedThread runs fn on an OS thread of its own, locked for fn's whole
// run; a thread whose network namespace cannot be restored is thrown away.
func OnLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer func() { _ = orig.Close() }()
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// InNS runs fn on a locked OS thread in the network namespace at path.
func InNS(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer func() { _ = ns.Close() }()
	return OnLockedThread(func() error {
		if err := netns.Set(ns); err != nil {
			return err
		}
		return fn()
	})
}

// Handle is a netlink handle of the namespace at path, closed when the
// test ends.
func Handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	Must(t, err)
	defer func() { _ = ns.Close() }()
	h, err := netlink.NewHandleAt(ns)
	Must(t, err)
	t.Cleanup(h.Close)
	return h
}

// TCPNet is "tcp6" for an address in brackets, else "tcp4".
func TCPNet(addr string) string {
	if strings.HasPrefix(addr, "[") {
		return "tcp6"
	}
	return "tcp4"
}

// Serve listens on addr in the namespace at path, until the test ends, and
// answers every connection with the address it came from.
func Serve(t testing.TB, path, addr string) {
	t.Helper()
	var l net.Listener
	Must(t, InNS(path, func() (err error) {
		l, err = net.Listen(TCPNet(addr), addr)
		return err
	}))
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = io.WriteString(c, host)
			_ = c.Close()
		}
	}()
}

// Dial connects from the namespace at path (from source address src if not
// "") to addr and returns what the listener answered: the address it saw.
func Dial(path, src, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	d := net.Dialer{Timeout: timeout}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	if err := InNS(path, func() (err error) {
		c, err = d.Dial(TCPNet(addr), addr)
		return err
	}); err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(ReachTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// Reach checks that a connection from the namespace at path to addr is
// answered, and, unless wantSeen is "", seen from wantSeen.
func Reach(t testing.TB, path, addr, wantSeen string) {
	t.Helper()
	seen, err := Dial(path, "", addr, ReachTimeout)
	if err != nil {
		t.Errorf("%s -> %s: %v, want a connection", Label(path), addr, err)
		return
	}
	if wantSeen != "" && seen != wantSeen {
		t.Errorf("%s -> %s: listener saw %s, want %s", Label(path), addr, seen, wantSeen)
	}
}

// Blocked checks that connections from the namespace at path (from source
// address src if not "") to each of addrs time out: their packets are
// dropped. They run side by side.
func Blocked(t testing.TB, path, src string, addrs ...string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(addrs))
	for i, addr := range addrs {
		wg.Go(func() { _, errs[i] = Dial(path, src, addr, BlockedTimeout) })
	}
	wg.Wait()
	for i, err := range errs {
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s -> %s (source %q): %v, want a timeout", Label(path), addrs[i], src, err)
		}
	}
}

// CIDR parses s, an address and prefix length, into its network; it
// panics if s is invalid.
func CIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// Must fails the test at once if err is not nil.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
