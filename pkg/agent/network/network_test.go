package network

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	blockedTimeout = 300 * time.Millisecond
	reachTimeout   = 3 * time.Second
)

func TestNewValidates(t *testing.T) {
	good := Config{Dir: "/tmp/x"}
	for name, mutate := range map[string]func(*Config){
		"relative dir":  func(c *Config) { c.Dir = "netns" },
		"empty dir":     func(c *Config) { c.Dir = "" },
		"ipv6 subnet":   func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") },
		"tiny subnet":   func(c *Config) { c.Subnet = netip.MustParsePrefix("198.18.0.0/31") },
		"host bits":     func(c *Config) { c.Subnet = netip.MustParsePrefix("198.18.0.1/16") },
		"invalid allow": func(c *Config) { c.Policy.AllowCIDRs = []netip.Prefix{{}} },
		"invalid deny":  func(c *Config) { c.Policy.DenyCIDRs = []netip.Prefix{{}} },
		"invalid host":  func(c *Config) { c.Policy.HostIPs = []netip.Addr{{}} },
	} {
		c := good
		mutate(&c)
		if _, err := New(c, logr.Discard()); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	m, err := New(Config{Dir: "/tmp/x/", Policy: Policy{
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.10/16"), netip.MustParsePrefix("fc00::/7")},
		HostIPs:    []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.9"), netip.MustParseAddr("2001:db8::1")},
	}}, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if m.cfg.Dir != "/tmp/x" || m.cfg.Subnet != DefaultSubnet {
		t.Errorf("defaults: %+v", m.cfg)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}; !slices.Equal(m.cfg.Policy.AllowCIDRs, want) {
		t.Errorf("AllowCIDRs = %v, want %v (masked, IPv6 ignored)", m.cfg.Policy.AllowCIDRs, want)
	}
	if want := []netip.Addr{netip.MustParseAddr("192.0.2.9")}; !slices.Equal(m.cfg.Policy.HostIPs, want) {
		t.Errorf("HostIPs = %v, want %v", m.cfg.Policy.HostIPs, want)
	}
	if err := m.Release("a"); err == nil {
		t.Error("Release before Init succeeded")
	}
	if _, err := m.Prepare("../etc"); err == nil {
		t.Error("Prepare accepted an id that is a path")
	}
}

func TestIntervalElements(t *testing.T) {
	ps := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	r := func(lo, hi string) ipRange {
		return ipRange{u32(netip.MustParseAddr(lo)), u32(netip.MustParseAddr(hi))}
	}
	got := mergeRanges(ps("198.18.0.0/16", "10.0.0.0/8", "198.18.0.0/15", "11.0.0.0/8", "240.0.0.0/4", "1.2.3.4/32"))
	want := []ipRange{r("1.2.3.4", "1.2.3.4"), r("10.0.0.0", "11.255.255.255"), r("198.18.0.0", "198.19.255.255"), r("240.0.0.0", "255.255.255.255")}
	if !slices.Equal(got, want) {
		t.Errorf("mergeRanges = %v, want %v", got, want)
	}
	els := intervalElements(ps("240.0.0.0/4", "10.0.0.0/8"))
	if len(els) != 3 || els[1].IntervalEnd != true || netip.AddrFrom4([4]byte(els[1].Key)) != netip.MustParseAddr("11.0.0.0") || els[2].IntervalEnd {
		t.Errorf("intervalElements = %+v", els)
	}
}

func TestVethName(t *testing.T) {
	a, b := vethName("sandbox-a"), vethName("sandbox-b")
	if a == b || len(a) != 13 || !strings.HasPrefix(a, VethPrefix) || a != vethName("sandbox-a") {
		t.Errorf("vethName: %q %q", a, b)
	}
}

// outsideSubnet is an address of the sandbox Subnet that is no sandbox's but
// the world's: a sandbox must not reach it, whatever AllowCIDRs says.
const outsideSubnet = "198.18.200.2"

// env is a throwaway agent Pod netns connected to a throwaway world netns:
//
//	agent eth0 192.0.2.1/24 (MTU 1400) ── world eth0 192.0.2.2/24 + 10.99.0.1/32 + 198.18.200.2/32
//
// with the agent routing by default, and to 10.99.0.1, through the world,
// and the world routing the sandbox subnet back through the agent (so that
// only the firewall keeps it out of the sandboxes).
type env struct {
	top                         *testing.T // owns the managers, which outlive subtests
	dir, agent, world, netnsDir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and nftables tables")
	}
	dir := t.TempDir()
	e := &env{top: t, dir: dir, agent: filepath.Join(dir, "agent"), world: filepath.Join(dir, "world"), netnsDir: filepath.Join(dir, "netns")}
	t.Cleanup(func() { // before TempDir's removal
		entries, _ := os.ReadDir(e.netnsDir)
		for _, en := range entries {
			_ = removeNamedNS(filepath.Join(e.netnsDir, en.Name()))
		}
		_ = removeNamedNS(e.agent)
		_ = removeNamedNS(e.world)
	})
	for _, p := range []string{e.agent, e.world} {
		if err := createNamedNS(p); err != nil {
			t.Fatal(err)
		}
	}
	ah, wh := handle(t, e.agent), handle(t, e.world)
	wns := nsHandle(t, e.world)
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1400}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(wns))}))
	for _, side := range []struct {
		h     *netlink.Handle
		addrs []string
	}{{ah, []string{"192.0.2.1/24"}}, {wh, []string{"192.0.2.2/24", "10.99.0.1/32", outsideSubnet + "/32"}}} {
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
	must(t, ah.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: cidr("10.99.0.1/32"), Gw: net.ParseIP("192.0.2.2")}))
	must(t, ah.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: cidr("0.0.0.0/0"), Gw: net.ParseIP("192.0.2.2")}))
	weth, err := wh.LinkByName("eth0")
	must(t, err)
	must(t, wh.RouteAdd(&netlink.Route{LinkIndex: weth.Attrs().Index, Dst: cidr("198.18.0.0/15"), Gw: net.ParseIP("192.0.2.1")}))
	return e
}

func (e *env) manager(t *testing.T, p Policy) *Manager {
	t.Helper()
	m, err := New(Config{Dir: e.netnsDir, HostNetNS: e.agent, Policy: p}, testr.New(e.top))
	must(t, err)
	must(t, m.Init())
	e.top.Cleanup(func() { _ = m.Close() })
	return m
}

func cidr(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func nsHandle(t *testing.T, path string) netns.NsHandle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	must(t, err)
	t.Cleanup(func() { _ = ns.Close() })
	return ns
}

func handle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	must(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	t.Cleanup(h.Close)
	return h
}

// serve listens on addr in the namespace at nsPath and answers every
// connection with the address it came from.
func serve(t *testing.T, nsPath, addr string) {
	t.Helper()
	ns := nsHandle(t, nsPath)
	var l net.Listener
	must(t, inNS(ns, func() (err error) {
		l, err = net.Listen(tcpNet(addr), addr)
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

// tcpNet is "tcp6" for an address in brackets, else "tcp4".
func tcpNet(addr string) string {
	if strings.HasPrefix(addr, "[") {
		return "tcp6"
	}
	return "tcp4"
}

// udpSink receives datagrams on addr in the namespace at nsPath and sends
// "<payload> from <source address>" for each.
func udpSink(t *testing.T, nsPath, addr string) <-chan string {
	t.Helper()
	var c net.PacketConn
	must(t, inNS(nsHandle(t, nsPath), func() (err error) {
		c, err = net.ListenPacket("udp4", addr)
		return err
	}))
	t.Cleanup(func() { _ = c.Close() })
	got := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			got <- string(buf[:n]) + " from " + host
		}
	}()
	return got
}

// sendUDP sends one datagram from the namespace at nsPath, from source
// address src if not "".
func sendUDP(t *testing.T, nsPath, src, addr, payload string) {
	t.Helper()
	d := net.Dialer{}
	if src != "" {
		d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src)}
	}
	must(t, inNS(nsHandle(t, nsPath), func() error {
		c, err := d.Dial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.WriteString(c, payload)
		return err
	}))
}

// dial connects from the namespace at nsPath (optionally from source
// address src) and returns what the listener answered: the address it saw.
func dial(nsPath, src, addr string, timeout time.Duration) (string, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	var c net.Conn
	d := net.Dialer{Timeout: timeout}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	if err := inNS(ns, func() (err error) {
		c, err = d.Dial(tcpNet(addr), addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(reachTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

func reach(t *testing.T, nsPath, addr, wantSeen string) {
	t.Helper()
	seen, err := dial(nsPath, "", addr, reachTimeout)
	if err != nil {
		t.Errorf("%s -> %s: %v, want a connection", filepath.Base(nsPath), addr, err)
		return
	}
	if wantSeen != "" && seen != wantSeen {
		t.Errorf("%s -> %s: listener saw %s, want %s", filepath.Base(nsPath), addr, seen, wantSeen)
	}
}

// blocked checks that a connection times out: its packets are dropped.
func blocked(t *testing.T, nsPath, src, addr string) {
	t.Helper()
	_, err := dial(nsPath, src, addr, blockedTimeout)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("%s -> %s (source %q): %v, want a timeout", filepath.Base(nsPath), addr, src, err)
	}
}

// parallel runs fns concurrently and waits for them.
func parallel(fns ...func()) {
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Go(fn)
	}
	wg.Wait()
}

// sandboxAddr is the address of eth0 in a sandbox namespace, and its MTU.
func sandboxAddr(t *testing.T, nsPath string) (netip.Addr, int) {
	t.Helper()
	h := handle(t, nsPath)
	l, err := h.LinkByName(SandboxInterface)
	must(t, err)
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	must(t, err)
	if len(addrs) != 1 {
		t.Fatalf("%s: eth0 addresses %v", nsPath, addrs)
	}
	a, _ := netip.AddrFromSlice(addrs[0].IP)
	return a.Unmap(), l.Attrs().MTU
}

func gateway(a netip.Addr) string { return a.Prev().String() }

func (e *env) tables(t *testing.T) int {
	t.Helper()
	ns := nsHandle(t, e.agent)
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	must(t, err)
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	must(t, err)
	n := 0
	for _, tb := range ts {
		if tb.Name == TableName {
			n++
		}
	}
	return n
}

func (e *env) printRuleset(t *testing.T) {
	out, err := exec.Command("nsenter", "--net="+e.agent, "nft", "list", "table", "inet", TableName).CombinedOutput()
	if err != nil {
		t.Logf("nft list (optional): %v: %s", err, out)
		return
	}
	t.Logf("ruleset in the agent netns:\n%s", out)
}

func TestEgress(t *testing.T) {
	e := newEnv(t)
	serve(t, e.world, "0.0.0.0:8080")
	serve(t, e.agent, "0.0.0.0:8081") // the agent API
	world, denied, agentAPI := "192.0.2.2:8080", "10.99.0.1:8080", "192.0.2.1:8081"

	m := e.manager(t, Policy{})
	pathA, err := m.Prepare("sandbox-a")
	must(t, err)
	pathB, err := m.Prepare("sandbox-b")
	must(t, err)
	if pathA != filepath.Join(e.netnsDir, "sandbox-a") {
		t.Errorf("Prepare path %s", pathA)
	}
	addrA, mtu := sandboxAddr(t, pathA)
	addrB, _ := sandboxAddr(t, pathB)
	if !DefaultSubnet.Contains(addrA) || !DefaultSubnet.Contains(addrB) || addrA == addrB {
		t.Fatalf("sandbox addresses %s, %s", addrA, addrB)
	}
	if mtu != 1400 {
		t.Errorf("sandbox MTU %d, want the agent's default-route MTU 1400", mtu)
	}
	serve(t, pathB, "0.0.0.0:9000")
	e.printRuleset(t)

	t.Run("default policy", func(t *testing.T) {
		reach(t, e.agent, "127.0.0.1:8081", "") // the agent API listens
		reach(t, pathB, "127.0.0.1:9000", "")   // sandbox B listens
		reach(t, pathA, world, "192.0.2.1")     // NAT to the agent's address
		// The timeouts run side by side.
		parallel(
			func() { blocked(t, pathA, "", denied) },                   // default deny
			func() { blocked(t, pathA, "", gateway(addrA)+":8081") },   // agent API on the gateway
			func() { blocked(t, pathA, "", agentAPI) },                 // agent API on the Pod address
			func() { blocked(t, pathA, "", gateway(addrB)+":8081") },   // or on another sandbox's gateway
			func() { blocked(t, pathA, "", addrB.String()+":9000") },   // another sandbox
			func() { blocked(t, e.world, "", addrB.String()+":9000") }, // nothing connects into a sandbox
			func() { blocked(t, e.agent, "", addrB.String()+":9000") }, // not even the agent
		)
	})
	t.Run("spoofed source", func(t *testing.T) {
		// UDP, so that a spoofed datagram shows at the listener although
		// no answer could come back.
		got := udpSink(t, e.world, "0.0.0.0:8082")
		h := handle(t, pathA)
		eth, err := h.LinkByName(SandboxInterface)
		must(t, err)
		for _, src := range []string{"203.0.113.7", addrB.String()} {
			a, _ := netlink.ParseAddr(src + "/32")
			must(t, h.AddrAdd(eth, a))
			sendUDP(t, pathA, src, "192.0.2.2:8082", "spoofed from "+src)
			must(t, h.AddrDel(eth, a))
		}
		sendUDP(t, pathA, "", "192.0.2.2:8082", "genuine")
		select {
		case msg := <-got:
			if msg != "genuine from 192.0.2.1" {
				t.Errorf("world got %q, want only the genuine datagram", msg)
			}
		case <-time.After(reachTimeout):
			t.Error("the genuine datagram never arrived")
		}
		select {
		case msg := <-got:
			t.Errorf("world also got %q", msg)
		case <-time.After(100 * time.Millisecond):
		}
		reach(t, pathA, world, "192.0.2.1")
	})
	t.Run("IPv6 dropped", func(t *testing.T) {
		// A sandbox (and its Pod-side veth) with IPv6 enabled again, as if
		// all else failed: the table still drops its IPv6.
		path, err := m.Prepare("sandbox-v6")
		must(t, err)
		defer func() { must(t, m.Release("sandbox-v6")) }()
		must(t, inNS(nsHandle(t, e.agent), func() error {
			return errors.Join(writeSysctl("net/ipv6/conf/all/forwarding", "1", false),
				writeSysctl("net/ipv6/conf/"+vethName("sandbox-v6")+"/disable_ipv6", "0", false))
		}))
		must(t, inNS(nsHandle(t, path), func() error {
			return writeSysctl("net/ipv6/conf/"+SandboxInterface+"/disable_ipv6", "0", false)
		}))
		addr6 := func(h *netlink.Handle, link, a string) {
			l, err := h.LinkByName(link)
			must(t, err)
			ad, err := netlink.ParseAddr(a)
			must(t, err)
			ad.Flags = unix.IFA_F_NODAD
			must(t, h.AddrAdd(l, ad))
		}
		ah, wh, sh := handle(t, e.agent), handle(t, e.world), handle(t, path)
		addr6(ah, "eth0", "2001:db8:1::1/64")
		addr6(wh, "eth0", "2001:db8:1::2/64")
		addr6(ah, vethName("sandbox-v6"), "2001:db8:2::1/64")
		addr6(sh, SandboxInterface, "2001:db8:2::2/64")
		weth, err := wh.LinkByName("eth0")
		must(t, err)
		must(t, wh.RouteAdd(&netlink.Route{LinkIndex: weth.Attrs().Index, Dst: cidr("2001:db8:2::/64"), Gw: net.ParseIP("2001:db8:1::1")}))
		seth, err := sh.LinkByName(SandboxInterface)
		must(t, err)
		must(t, sh.RouteAdd(&netlink.Route{LinkIndex: seth.Attrs().Index, Dst: cidr("::/0"), Gw: net.ParseIP("2001:db8:2::1")}))
		// Static neighbours: the input chain drops the sandbox's neighbour
		// discovery, which would hide whether forwarding is dropped.
		hveth, err := ah.LinkByName(vethName("sandbox-v6"))
		must(t, err)
		must(t, sh.NeighAdd(&netlink.Neigh{LinkIndex: seth.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("2001:db8:2::1"), HardwareAddr: hveth.Attrs().HardwareAddr}))
		must(t, ah.NeighAdd(&netlink.Neigh{LinkIndex: hveth.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("2001:db8:2::2"), HardwareAddr: seth.Attrs().HardwareAddr}))
		serve(t, e.world, "[::]:8083")
		serve(t, e.agent, "[::]:8084")
		reach(t, e.agent, "[2001:db8:1::2]:8083", "2001:db8:1::1") // the IPv6 path works
		parallel(
			func() { blocked(t, path, "", "[2001:db8:1::2]:8083") }, // forwarded
			func() { blocked(t, path, "", "[2001:db8:2::1]:8084") }, // to the agent
		)
	})
	t.Run("no IPv6 in the sandbox", func(t *testing.T) {
		for _, p := range []string{"all", "default", SandboxInterface} {
			var v []byte
			must(t, inNS(nsHandle(t, pathA), func() (err error) {
				v, err = os.ReadFile("/proc/sys/net/ipv6/conf/" + p + "/disable_ipv6")
				return err
			}))
			if strings.TrimSpace(string(v)) != "1" {
				t.Errorf("%s disable_ipv6 = %q", p, v)
			}
		}
	})

	// The agent restarts, with a policy that allows 10.99/16 and, in vain,
	// the sandbox range. Meanwhile: a namespace file whose veth is gone, an
	// empty file left by a crash and a veth whose namespace file is gone.
	must(t, m.Close())
	must(t, createNamedNS(filepath.Join(e.netnsDir, "unwired")))
	must(t, os.WriteFile(filepath.Join(e.netnsDir, "halfmade"), nil, 0o444))
	ah := handle(t, e.agent)
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: VethPrefix + "0000000000"}, PeerName: "orphanpeer"}))
	m = e.manager(t, Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("198.18.0.0/15")}})

	var ctC netip.Addr // sandbox C's address, which leaves conntrack entries
	t.Run("restart", func(t *testing.T) {
		if n := e.tables(t); n != 1 {
			t.Errorf("%d tables inet %s after a second Init, want 1", n, TableName)
		}
		if got, want := m.List(), []string{"sandbox-a", "sandbox-b", "unwired"}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
		if _, err := os.Stat(filepath.Join(e.netnsDir, "halfmade")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("half-made namespace file: %v", err)
		}
		if _, err := ah.LinkByName(VethPrefix + "0000000000"); err == nil {
			t.Error("orphan veth survived Init")
		}
		if a, _ := sandboxAddr(t, pathA); a != addrA {
			t.Errorf("sandbox A's address changed over a restart: %s -> %s", addrA, a)
		}
		addrU, _ := sandboxAddr(t, filepath.Join(e.netnsDir, "unwired"))
		pathC, err := m.Prepare("sandbox-c")
		must(t, err)
		addrC, _ := sandboxAddr(t, pathC)
		ctC = addrC
		if seen := []netip.Addr{addrA, addrB, addrU, addrC}; len(slices.Compact(slices.SortedFunc(slices.Values(seen), netip.Addr.Compare))) != 4 {
			t.Errorf("an address handed out twice: %v", seen)
		}
		reach(t, pathA, world, "192.0.2.1")
		reach(t, pathC, world, "192.0.2.1")
		reach(t, filepath.Join(e.netnsDir, "unwired"), world, "192.0.2.1")
		reach(t, pathA, denied, "192.0.2.1") // allowed now
		parallel(
			func() { blocked(t, pathA, "", addrB.String()+":9000") }, // allow never covers sandboxes
			func() { blocked(t, pathA, "", outsideSubnet+":8080") },  // nor the sandbox subnet
			func() { blocked(t, pathC, "", gateway(addrC)+":8081") },
			func() { blocked(t, pathC, "", agentAPI) },
		)
	})

	t.Run("deny wins over allow", func(t *testing.T) {
		m.Close()
		m = e.manager(t, Policy{
			AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")},
			DenyCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32")},
		})
		blocked(t, pathA, "", denied)
		reach(t, pathA, world, "192.0.2.1")
		e.printRuleset(t)
	})

	t.Run("host addresses", func(t *testing.T) {
		m.Close()
		m = e.manager(t, Policy{HostIPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
		blocked(t, pathA, "", world)
		m.Close()
		m = e.manager(t, Policy{HostIPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}, AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32")}})
		reach(t, pathA, world, "192.0.2.1")
		if n := e.tables(t); n != 1 {
			t.Errorf("%d tables after several Inits, want 1", n)
		}
	})

	t.Run("prepare and release", func(t *testing.T) {
		again, err := m.Prepare("sandbox-a")
		must(t, err)
		if a, _ := sandboxAddr(t, again); again != pathA || a != addrA {
			t.Errorf("Prepare again: %s %s, want %s %s", again, a, pathA, addrA)
		}
		reach(t, pathA, world, "192.0.2.1")

		// A veth gone astray is made again by the next Prepare.
		pathC := filepath.Join(e.netnsDir, "sandbox-c")
		l, err := ah.LinkByName(vethName("sandbox-c"))
		must(t, err)
		must(t, ah.LinkDel(l))
		if again, err := m.Prepare("sandbox-c"); err != nil || again != pathC {
			t.Fatalf("Prepare after the veth vanished: %q, %v", again, err)
		}
		if a, _ := sandboxAddr(t, pathC); a != ctC {
			t.Errorf("sandbox C's address changed on repair: %s -> %s", ctC, a)
		}
		reach(t, pathC, world, "192.0.2.1")

		// Release forgets the sandbox's connections.
		flows := func(a netip.Addr) int {
			fs, err := ah.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
			must(t, err)
			n := 0
			for _, f := range fs {
				if f.Forward.SrcIP.Equal(net.IP(a.AsSlice())) {
					n++
				}
			}
			return n
		}
		if flows(ctC) == 0 {
			t.Errorf("no conntrack entry from sandbox C's first address %s", ctC)
		}
		must(t, m.Release("sandbox-c"))
		if n := flows(ctC); n != 0 {
			t.Errorf("%d conntrack entries from %s after Release", n, ctC)
		}

		must(t, m.Release("sandbox-b"))
		must(t, m.Release("sandbox-b"))
		must(t, m.Release("never-prepared"))
		if _, err := os.Stat(pathB); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace file after Release: %v", err)
		}
		if _, err := ah.LinkByName(vethName("sandbox-b")); err == nil {
			t.Error("veth after Release")
		}
		if slices.Contains(m.List(), "sandbox-b") {
			t.Errorf("List after Release: %v", m.List())
		}

		// Concurrent Prepares get addresses of their own.
		var wg sync.WaitGroup
		paths := make([]string, 6)
		errs := make([]error, 6)
		for i := range paths {
			wg.Go(func() { paths[i], errs[i] = m.Prepare(fmt.Sprintf("burst-%d", i)) })
		}
		wg.Wait()
		must(t, errors.Join(errs...))
		seen := map[netip.Addr]bool{addrA: true}
		for _, p := range paths {
			a, _ := sandboxAddr(t, p)
			if seen[a] {
				t.Errorf("address %s handed out twice", a)
			}
			seen[a] = true
		}
		for i := range paths {
			wg.Go(func() { errs[i] = m.Release(fmt.Sprintf("burst-%d", i)) })
		}
		wg.Wait()
		must(t, errors.Join(errs...))
		if got, want := m.List(), []string{"sandbox-a", "unwired"}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
	})
}
