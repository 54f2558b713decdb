package containerd_test

// Throwaway network namespaces for the Egress tests, after those of package
// network's tests: the runtime's network Manager works in an "agent"
// namespace (standing in for the agent Pod's) connected by a veth to a
// "world" namespace; the test process itself stays in the host's, and
// nothing of the host's network is touched.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
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

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
)

const (
	blockedTimeout = 300 * time.Millisecond
	reachTimeout   = 3 * time.Second
)

// netEnv is a throwaway agent netns connected to a throwaway world netns:
//
//	agent eth0 192.0.2.1/24 ── world eth0 192.0.2.2/24 + 10.99.0.1/32
//
// The agent routes by default, and to 10.99.0.1 (a default-denied
// address), through the world; the world routes the sandbox subnet back
// through the agent, so that only the firewall keeps it from the sandboxes.
// Listeners answer each connection with the address they saw it from: the
// world on 8080 (all its addresses), the agent on 8081 (the agent API's
// stand-in, on all of its addresses, the sandboxes' gateways included).
type netEnv struct {
	agent, world string
}

// The addresses of a netEnv.
const (
	worldAddr  = "192.0.2.2:8080"
	deniedAddr = "10.99.0.1:8080"
	agentAPI   = "192.0.2.1:8081"
	agentIP    = "192.0.2.1"
)

func newNetEnv(t testing.TB) *netEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and nftables tables")
	}
	dir := t.TempDir()
	e := &netEnv{agent: filepath.Join(dir, "agent"), world: filepath.Join(dir, "world")}
	t.Cleanup(func() { // before TempDir's removal
		_ = removeNamedNS(e.agent)
		_ = removeNamedNS(e.world)
	})
	for _, p := range []string{e.agent, e.world} {
		must(t, createNamedNS(p))
	}
	ah, wh := nlHandle(t, e.agent), nlHandle(t, e.world)
	wns, err := netns.GetFromPath(e.world)
	must(t, err)
	defer wns.Close()
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(wns))}))
	for _, side := range []struct {
		h     *netlink.Handle
		addrs []string
	}{{ah, []string{"192.0.2.1/24"}}, {wh, []string{"192.0.2.2/24", "10.99.0.1/32"}}} {
		lo, err := side.h.LinkByName("lo")
		must(t, err)
		must(t, side.h.LinkSetUp(lo))
		eth, err := side.h.LinkByName("eth0")
		must(t, err)
		for _, a := range side.addrs {
			addr, err := netlink.ParseAddr(a)
			must(t, err)
			must(t, side.h.AddrAdd(eth, addr))
		}
		must(t, side.h.LinkSetUp(eth))
	}
	eth, err := ah.LinkByName("eth0")
	must(t, err)
	must(t, ah.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet("10.99.0.1/32"), Gw: net.ParseIP("192.0.2.2")}))
	must(t, ah.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet("0.0.0.0/0"), Gw: net.ParseIP("192.0.2.2")}))
	weth, err := wh.LinkByName("eth0")
	must(t, err)
	must(t, wh.RouteAdd(&netlink.Route{LinkIndex: weth.Attrs().Index, Dst: ipNet("198.18.0.0/15"), Gw: net.ParseIP("192.0.2.1")}))
	serve(t, e.world, "0.0.0.0:8080")
	serve(t, e.agent, "0.0.0.0:8081")
	return e
}

// config is the network configuration of a runtime whose Manager works in
// the agent netns.
func (e *netEnv) config() *network.Config {
	return &network.Config{HostNetNS: e.agent}
}

// veth is the agent-side veth of the network id (a container ID), found by
// its alias, or nil.
func (e *netEnv) veth(t testing.TB, id string) netlink.Link {
	t.Helper()
	links, err := nlHandle(t, e.agent).LinkList()
	must(t, err)
	for _, l := range links {
		if l.Attrs().Alias == network.AliasPrefix+id {
			return l
		}
	}
	return nil
}

// vethGone waits until the agent netns has no veth of id.
func (e *netEnv) vethGone(t testing.TB, id string) bool {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if e.veth(t, id) == nil {
			return true
		}
	}
	return false
}

// createNamedNS creates a new network namespace and keeps it alive by
// bind-mounting it onto path, a new file, as `ip netns add` does.
func createNamedNS(path string) (err error) {
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
	return onLockedThread(func() error {
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

// removeNamedNS unmounts and removes a file made by createNamedNS.
func removeNamedNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns file %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file: %w", err)
	}
	return nil
}

// onLockedThread runs fn on an OS thread of its own, locked for fn's whole
// run; a thread whose network namespace cannot be restored is thrown away.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
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

// inNS runs fn in the network namespace at path.
func inNS(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return onLockedThread(func() error {
		if err := netns.Set(ns); err != nil {
			return err
		}
		return fn()
	})
}

func nlHandle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	must(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	t.Cleanup(h.Close)
	return h
}

// serve listens on addr in the namespace at path and answers every
// connection with the address it came from.
func serve(t testing.TB, path, addr string) {
	t.Helper()
	var l net.Listener
	must(t, inNS(path, func() (err error) {
		l, err = net.Listen("tcp4", addr)
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

// dial connects from the namespace at path and returns what the listener
// answered: the address it saw.
func dial(path, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	d := net.Dialer{Timeout: timeout}
	if err := inNS(path, func() (err error) {
		c, err = d.Dial("tcp4", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(reachTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// reach checks that a connection from the namespace at path to addr is
// answered, and seen from wantSeen.
func reach(t testing.TB, path, addr, wantSeen string) {
	t.Helper()
	seen, err := dial(path, addr, reachTimeout)
	if err != nil {
		t.Errorf("%s -> %s: %v, want a connection", path, addr, err)
		return
	}
	if seen != wantSeen {
		t.Errorf("%s -> %s: listener saw %s, want %s", path, addr, seen, wantSeen)
	}
}

// blocked checks that connections from the namespace at path to each of
// addrs time out (their packets are dropped); they run side by side.
func blocked(t testing.TB, path string, addrs ...string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(addrs))
	for i, addr := range addrs {
		wg.Go(func() { _, errs[i] = dial(path, addr, blockedTimeout) })
	}
	wg.Wait()
	for i, err := range errs {
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s -> %s: %v, want a timeout", path, addrs[i], err)
		}
	}
}

// links lists the interfaces of the namespace at path, and the IPv4
// address of eth0 if it has one.
func links(t testing.TB, path string) ([]string, netip.Addr) {
	t.Helper()
	h := nlHandle(t, path)
	ls, err := h.LinkList()
	must(t, err)
	var names []string
	var addr netip.Addr
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
		if l.Attrs().Name != network.SandboxInterface {
			continue
		}
		as, err := h.AddrList(l, netlink.FAMILY_V4)
		must(t, err)
		if len(as) == 1 {
			addr, _ = netip.AddrFromSlice(as[0].IP)
			addr = addr.Unmap()
		}
	}
	return names, addr
}

func ipNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func hasPrefix(ss []string, p string) bool {
	for _, s := range ss {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
