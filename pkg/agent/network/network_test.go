package network

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network/nettest"
)

func TestNewValidates(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"ipv6 subnet":   func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") },
		"tiny subnet":   func(c *Config) { c.Subnet = netip.MustParsePrefix("198.18.0.0/31") },
		"host bits":     func(c *Config) { c.Subnet = netip.MustParsePrefix("198.18.0.1/16") },
		"invalid allow": func(c *Config) { c.Policy.AllowCIDRs = []netip.Prefix{{}} },
		"invalid deny":  func(c *Config) { c.Policy.DenyCIDRs = []netip.Prefix{{}} },
		"invalid host":  func(c *Config) { c.Policy.HostIPs = []netip.Addr{{}} },
	} {
		var c Config
		mutate(&c)
		if _, err := New(c, logr.Discard()); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	m, err := New(Config{Policy: Policy{
		AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.10/16"), netip.MustParsePrefix("fc00::/7")},
		HostIPs:    []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.9"), netip.MustParseAddr("2001:db8::1")},
	}}, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if m.cfg.Subnet != DefaultSubnet {
		t.Errorf("defaults: %+v", m.cfg)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}; !slices.Equal(m.cfg.Policy.AllowCIDRs, want) {
		t.Errorf("AllowCIDRs = %v, want %v (masked, IPv6 ignored)", m.cfg.Policy.AllowCIDRs, want)
	}
	if want := []netip.Addr{netip.MustParseAddr("192.0.2.9")}; !slices.Equal(m.cfg.Policy.HostIPs, want) {
		t.Errorf("HostIPs = %v, want %v", m.cfg.Policy.HostIPs, want)
	}
	if err := m.Detach("a"); err == nil {
		t.Error("Detach before Init succeeded")
	}
	if err := m.Attach("a", "/proc/self/ns/net"); err == nil {
		t.Error("Attach before Init succeeded")
	}
	if err := m.Attach("../etc", "/proc/self/ns/net"); err == nil {
		t.Error("Attach accepted an invalid id")
	}
	if err := m.Attach(strings.Repeat("a", 201), "/proc/self/ns/net"); err == nil {
		t.Error("Attach accepted an id too long for an alias")
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

// env is a throwaway agent Pod netns connected to a throwaway world netns
// (a nettest.Pair):
//
//	agent eth0 192.0.2.1/24 (MTU 1400) ── world eth0 192.0.2.2/24 + 10.99.0.1/32 + 198.18.200.2/32
//
// with the agent routing by default, and to 10.99.0.1, through the world,
// and the world routing the sandbox subnet back through the agent (so that
// only the firewall keeps it out of the sandboxes). The sandboxes'
// namespaces are those of processes (see startNS), as runc makes them.
type env struct {
	top          testing.TB // owns the managers, which outlive subtests
	agent, world string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	p := nettest.NewPair(t, nettest.PairOptions{MTU: 1400, WorldAddrs: []string{outsideSubnet + "/32"}})
	return &env{top: t, agent: p.Agent, world: p.World}
}

func (e *env) manager(t testing.TB, p Policy) *Manager {
	t.Helper()
	log := logr.Discard()
	if tt, ok := e.top.(*testing.T); ok {
		log = testr.New(tt)
	}
	m, err := New(Config{HostNetNS: e.agent, Policy: p}, log)
	must(t, err)
	must(t, m.Init())
	e.top.Cleanup(func() { _ = m.Close() })
	return m
}

// nsProc is a process in a new, empty network namespace, as runc makes a
// container's; path is its namespace, /proc/<pid>/ns/net.
type nsProc struct {
	cmd  *exec.Cmd
	path string
	once sync.Once
}

// procs are the processes of the namespaces startNS made.
var procs sync.Map

// startNS starts a sleeping process in a network namespace of its own; it
// is killed when the test ends, if not before.
func startNS(t testing.TB, label string) *nsProc {
	t.Helper()
	cmd := exec.Command("sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	must(t, cmd.Start())
	p := &nsProc{cmd: cmd, path: fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)}
	nettest.SetLabel(p.path, label)
	procs.Store(p.path, p)
	t.Cleanup(p.kill)
	return p
}

// kill ends the process, and so its namespace once nothing else holds it.
func (p *nsProc) kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	})
}

// killNS kills the process startNS made for path.
func killNS(t testing.TB, path string) {
	t.Helper()
	p, ok := procs.Load(path)
	if !ok {
		t.Fatalf("no process for %s", path)
	}
	p.(*nsProc).kill()
}

// must fails the test at once if err is not nil.
var must = nettest.Must

func nsHandle(t testing.TB, path string) netns.NsHandle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	must(t, err)
	t.Cleanup(func() { _ = ns.Close() })
	return ns
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

// parallel runs fns concurrently and waits for them.
func parallel(fns ...func()) {
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Go(fn)
	}
	wg.Wait()
}

// sandboxAddr is the address of eth0 in a sandbox namespace, and its MTU.
// It holds nothing open in the namespace afterwards.
func sandboxAddr(t *testing.T, nsPath string) (netip.Addr, int) {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	must(t, err)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	must(t, err)
	defer h.Close()
	l, err := h.LinkByName(SandboxInterface)
	must(t, err)
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	must(t, err)
	if len(addrs) != 1 {
		t.Fatalf("%s: eth0 addresses %v", nettest.Label(nsPath), addrs)
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

// attach attaches a new namespace for id and logs how long Attach took.
// The process lives as long as the test top (a subtest's parent) does.
func attach(t *testing.T, top testing.TB, m *Manager, id string) string {
	t.Helper()
	p := startNS(top, id)
	start := time.Now()
	must(t, m.Attach(id, p.path))
	t.Logf("Attach %s: %v", id, time.Since(start))
	return p.path
}

// gone waits until the agent netns has no veth of id.
func gone(t *testing.T, h *netlink.Handle, id string) bool {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := h.LinkByName(vethName(id)); isNotFound(err) {
			return true
		}
	}
	return false
}

func linkIndex(t *testing.T, h *netlink.Handle, name string) int {
	t.Helper()
	l, err := h.LinkByName(name)
	must(t, err)
	return l.Attrs().Index
}

// learnt is the sandbox address the Manager has for id.
func learnt(m *Manager, id string) netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	sb := m.ids[id]
	if sb == nil {
		return netip.Addr{}
	}
	_, a := m.addrs(sb.block)
	return a
}

func TestEgress(t *testing.T) {
	e := newEnv(t)
	nettest.Serve(t, e.world, "0.0.0.0:8080")
	nettest.Serve(t, e.agent, "0.0.0.0:8081") // the agent API
	world, denied, agentAPI := "192.0.2.2:8080", "10.99.0.1:8080", "192.0.2.1:8081"
	ah := nettest.Handle(t, e.agent)

	m := e.manager(t, Policy{})
	pathA := attach(t, t, m, "sandbox-a")
	pathB := attach(t, t, m, "sandbox-b")
	addrA, mtu := sandboxAddr(t, pathA)
	addrB, _ := sandboxAddr(t, pathB)
	if !DefaultSubnet.Contains(addrA) || !DefaultSubnet.Contains(addrB) || addrA == addrB {
		t.Fatalf("sandbox addresses %s, %s", addrA, addrB)
	}
	if mtu != 1400 {
		t.Errorf("sandbox MTU %d, want the agent's default-route MTU 1400", mtu)
	}
	if l, err := ah.LinkByName(vethName("sandbox-a")); err != nil || l.Attrs().Alias != AliasPrefix+"sandbox-a" || l.Attrs().MTU != 1400 {
		t.Errorf("veth of sandbox A: %v %+v", err, l)
	}
	nettest.Serve(t, pathB, "0.0.0.0:9000")
	e.printRuleset(t)

	t.Run("default policy", func(t *testing.T) {
		nettest.Reach(t, e.agent, "127.0.0.1:8081", "") // the agent API listens
		nettest.Reach(t, pathB, "127.0.0.1:9000", "")   // sandbox B listens, on its loopback
		nettest.Reach(t, pathA, world, "192.0.2.1")     // NAT to the agent's address
		// The timeouts run side by side.
		parallel(
			func() { nettest.Blocked(t, pathA, "", denied) },                   // default deny
			func() { nettest.Blocked(t, pathA, "", gateway(addrA)+":8081") },   // agent API on the gateway
			func() { nettest.Blocked(t, pathA, "", agentAPI) },                 // agent API on the Pod address
			func() { nettest.Blocked(t, pathA, "", gateway(addrB)+":8081") },   // or on another sandbox's gateway
			func() { nettest.Blocked(t, pathA, "", addrB.String()+":9000") },   // another sandbox
			func() { nettest.Blocked(t, e.world, "", addrB.String()+":9000") }, // nothing connects into a sandbox
			func() { nettest.Blocked(t, e.agent, "", addrB.String()+":9000") }, // not even the agent
		)
	})
	t.Run("spoofed source", func(t *testing.T) {
		// UDP, so that a spoofed datagram shows at the listener although
		// no answer could come back.
		got := udpSink(t, e.world, "0.0.0.0:8082")
		h := nettest.Handle(t, pathA)
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
		case <-time.After(nettest.ReachTimeout):
			t.Error("the genuine datagram never arrived")
		}
		select {
		case msg := <-got:
			t.Errorf("world also got %q", msg)
		case <-time.After(100 * time.Millisecond):
		}
		nettest.Reach(t, pathA, world, "192.0.2.1")
	})
	t.Run("IPv6 dropped", func(t *testing.T) {
		// A sandbox (and its Pod-side veth) with IPv6 enabled again, as if
		// all else failed: the table still drops its IPv6.
		path := startNS(t, "sandbox-v6").path
		must(t, m.Attach("sandbox-v6", path))
		defer func() { must(t, m.Detach("sandbox-v6")) }()
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
		ah, wh, sh := nettest.Handle(t, e.agent), nettest.Handle(t, e.world), nettest.Handle(t, path)
		addr6(ah, "eth0", "2001:db8:1::1/64")
		addr6(wh, "eth0", "2001:db8:1::2/64")
		addr6(ah, vethName("sandbox-v6"), "2001:db8:2::1/64")
		addr6(sh, SandboxInterface, "2001:db8:2::2/64")
		weth, err := wh.LinkByName("eth0")
		must(t, err)
		must(t, wh.RouteAdd(&netlink.Route{LinkIndex: weth.Attrs().Index, Dst: nettest.CIDR("2001:db8:2::/64"), Gw: net.ParseIP("2001:db8:1::1")}))
		seth, err := sh.LinkByName(SandboxInterface)
		must(t, err)
		must(t, sh.RouteAdd(&netlink.Route{LinkIndex: seth.Attrs().Index, Dst: nettest.CIDR("::/0"), Gw: net.ParseIP("2001:db8:2::1")}))
		// Static neighbours: the input chain drops the sandbox's neighbour
		// discovery, which would hide whether forwarding is dropped.
		hveth, err := ah.LinkByName(vethName("sandbox-v6"))
		must(t, err)
		must(t, sh.NeighAdd(&netlink.Neigh{LinkIndex: seth.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("2001:db8:2::1"), HardwareAddr: hveth.Attrs().HardwareAddr}))
		must(t, ah.NeighAdd(&netlink.Neigh{LinkIndex: hveth.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
			IP: net.ParseIP("2001:db8:2::2"), HardwareAddr: seth.Attrs().HardwareAddr}))
		nettest.Serve(t, e.world, "[::]:8083")
		nettest.Serve(t, e.agent, "[::]:8084")
		nettest.Reach(t, e.agent, "[2001:db8:1::2]:8083", "2001:db8:1::1") // the IPv6 path works
		parallel(
			func() { nettest.Blocked(t, path, "", "[2001:db8:1::2]:8083") }, // forwarded
			func() { nettest.Blocked(t, path, "", "[2001:db8:2::1]:8084") }, // to the agent
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

	t.Run("attach twice", func(t *testing.T) {
		idx := linkIndex(t, ah, vethName("sandbox-a"))
		start := time.Now()
		must(t, m.Attach("sandbox-a", pathA))
		t.Logf("Attach again (no-op): %v", time.Since(start))
		if linkIndex(t, ah, vethName("sandbox-a")) != idx {
			t.Error("Attach of an attached sandbox made its veth again")
		}
		if a, _ := sandboxAddr(t, pathA); a != addrA {
			t.Errorf("address changed: %s -> %s", addrA, a)
		}
		// One namespace, one sandbox; and never the agent's own namespace.
		if err := m.Attach("sandbox-x", pathA); err == nil {
			t.Error("a namespace attached to two sandboxes")
		}
		if err := m.Attach("sandbox-x", e.agent); err == nil {
			t.Error("the agent's namespace attached")
		}
		if err := m.Attach("sandbox-x", "/proc/999999999/ns/net"); err == nil {
			t.Error("a missing namespace attached")
		}
		if _, err := ah.LinkByName(vethName("sandbox-x")); err == nil {
			t.Error("a failed Attach left a veth")
		}
		if got, want := m.List(), []string{"sandbox-a", "sandbox-b"}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
		nettest.Reach(t, pathA, world, "192.0.2.1")
	})

	// The agent restarts, with a policy that allows 10.99/16 and, in vain,
	// the sandbox range. Meanwhile: a veth of no sandbox, a veth whose alias
	// is not its name's, a veth an agent died wiring (no address) and a
	// sandbox whose container ends while no agent runs.
	flows := func(t *testing.T, a netip.Addr) int {
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

	pathD := attach(t, t, m, "sandbox-d")
	addrD, _ := sandboxAddr(t, pathD)
	nettest.Reach(t, pathD, world, "192.0.2.1")
	must(t, m.Close())
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: VethPrefix + "0000000000"}, PeerName: "orphanpeer"}))
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethName("forged")}, PeerName: "forgedpeer"}))
	l, err := ah.LinkByName(vethName("forged"))
	must(t, err)
	must(t, ah.LinkSetAlias(l, AliasPrefix+"sandbox-a"))
	must(t, ah.AddrAdd(l, &netlink.Addr{IPNet: nettest.CIDR("198.18.100.1/30")}))
	half := startNS(t, "sandbox-h")
	must(t, ah.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethName("sandbox-h")}, PeerName: SandboxInterface,
		PeerNamespace: netlink.NsFd(int(nsHandle(t, half.path)))}))
	l, err = ah.LinkByName(vethName("sandbox-h"))
	must(t, err)
	must(t, ah.LinkSetAlias(l, AliasPrefix+"sandbox-h"))
	killNS(t, pathD)
	if !gone(t, ah, "sandbox-d") {
		t.Fatal("the veth of a dead namespace stayed")
	}
	m = e.manager(t, Policy{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("198.18.0.0/15")}})

	var addrC netip.Addr
	var pathC string
	t.Run("restart", func(t *testing.T) {
		if n := e.tables(t); n != 1 {
			t.Errorf("%d tables inet %s after a second Init, want 1", n, TableName)
		}
		if got, want := m.List(), []string{"sandbox-a", "sandbox-b"}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
		if a, b := learnt(m, "sandbox-a"), learnt(m, "sandbox-b"); a != addrA || b != addrB {
			t.Errorf("addresses learnt back: %s %s, want %s %s", a, b, addrA, addrB)
		}
		for _, id := range []string{"forged", "sandbox-h"} {
			if _, err := ah.LinkByName(vethName(id)); err == nil {
				t.Errorf("veth of %s survived Init", id)
			}
		}
		if _, err := ah.LinkByName(VethPrefix + "0000000000"); err == nil {
			t.Error("orphan veth survived Init")
		}
		if n := flows(t, addrD); n != 0 {
			t.Errorf("%d conntrack entries of a sandbox gone while no agent ran", n)
		}
		idx := linkIndex(t, ah, vethName("sandbox-a"))
		must(t, m.Attach("sandbox-a", pathA))
		if linkIndex(t, ah, vethName("sandbox-a")) != idx {
			t.Error("Attach after a restart made an attached sandbox's veth again")
		}
		if a, _ := sandboxAddr(t, pathA); a != addrA {
			t.Errorf("sandbox A's address changed over a restart: %s -> %s", addrA, a)
		}
		must(t, m.Attach("sandbox-h", half.path)) // wired anew
		addrH, _ := sandboxAddr(t, half.path)
		pathC = attach(t, e.top, m, "sandbox-c")
		addrC, _ = sandboxAddr(t, pathC)
		if seen := []netip.Addr{addrA, addrB, addrH, addrC}; len(slices.Compact(slices.SortedFunc(slices.Values(seen), netip.Addr.Compare))) != 4 {
			t.Errorf("an address handed out twice: %v", seen)
		}
		nettest.Reach(t, pathA, world, "192.0.2.1")
		nettest.Reach(t, pathC, world, "192.0.2.1")
		nettest.Reach(t, half.path, world, "192.0.2.1")
		nettest.Reach(t, pathA, denied, "192.0.2.1") // allowed now
		parallel(
			func() { nettest.Blocked(t, pathA, "", addrB.String()+":9000") }, // allow never covers sandboxes
			func() { nettest.Blocked(t, pathA, "", outsideSubnet+":8080") },  // nor the sandbox subnet
			func() { nettest.Blocked(t, pathC, "", gateway(addrC)+":8081") },
			func() { nettest.Blocked(t, pathC, "", agentAPI) },
		)
		must(t, m.Detach("sandbox-h"))
	})

	t.Run("deny wins over allow", func(t *testing.T) {
		m.Close()
		m = e.manager(t, Policy{
			AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")},
			DenyCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32")},
		})
		nettest.Blocked(t, pathA, "", denied)
		nettest.Reach(t, pathA, world, "192.0.2.1")
		e.printRuleset(t)
	})

	t.Run("host addresses", func(t *testing.T) {
		m.Close()
		m = e.manager(t, Policy{HostIPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
		nettest.Blocked(t, pathA, "", world)
		m.Close()
		m = e.manager(t, Policy{HostIPs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}, AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32")}})
		nettest.Reach(t, pathA, world, "192.0.2.1")
		if n := e.tables(t); n != 1 {
			t.Errorf("%d tables after several Inits, want 1", n)
		}
	})

	t.Run("namespace dies", func(t *testing.T) {
		// The container ends: its namespace and the veth pair go.
		pathK := attach(t, t, m, "sandbox-k")
		addrK, _ := sandboxAddr(t, pathK)
		nettest.Reach(t, pathK, world, "192.0.2.1")
		killNS(t, pathK)
		if !gone(t, ah, "sandbox-k") {
			t.Fatal("the veth of a dead namespace stayed")
		}
		if !slices.Contains(m.List(), "sandbox-k") {
			t.Errorf("List = %v: a sandbox whose namespace died is attached until Detach", m.List())
		}
		// The container made again: a new namespace for the same id, which
		// keeps its address.
		pathK2 := attach(t, t, m, "sandbox-k")
		if a, _ := sandboxAddr(t, pathK2); a != addrK {
			t.Errorf("address of a re-attached sandbox %s, want %s", a, addrK)
		}
		nettest.Reach(t, pathK2, world, "192.0.2.1")
		// Attached to yet another (live) namespace: the veth moves.
		pathK3 := attach(t, t, m, "sandbox-k")
		if a, _ := sandboxAddr(t, pathK3); a != addrK {
			t.Errorf("address of a re-attached sandbox %s, want %s", a, addrK)
		}
		sh := nettest.Handle(t, pathK2)
		if _, err := sh.LinkByName(SandboxInterface); err == nil {
			t.Errorf("the previous namespace kept its %s", SandboxInterface)
		}
		nettest.Reach(t, pathK3, world, "192.0.2.1")

		// Detach deletes the veth pair and forgets the connections.
		if flows(t, addrK) == 0 {
			t.Errorf("no conntrack entry from sandbox K's address %s", addrK)
		}
		must(t, m.Detach("sandbox-k"))
		if n := flows(t, addrK); n != 0 {
			t.Errorf("%d conntrack entries from %s after Detach", n, addrK)
		}
		if _, err := ah.LinkByName(vethName("sandbox-k")); err == nil {
			t.Error("veth after Detach")
		}
		if _, err := nettest.Handle(t, pathK3).LinkByName(SandboxInterface); err == nil {
			t.Errorf("%s in the namespace after Detach", SandboxInterface)
		}
		if slices.Contains(m.List(), "sandbox-k") {
			t.Errorf("List after Detach: %v", m.List())
		}
		must(t, m.Detach("sandbox-k"))
		must(t, m.Detach("never-attached"))
	})

	t.Run("detach", func(t *testing.T) {
		must(t, m.Detach("sandbox-b"))
		if _, err := ah.LinkByName(vethName("sandbox-b")); err == nil {
			t.Error("veth after Detach")
		}
		if _, err := nettest.Handle(t, pathB).LinkByName(SandboxInterface); err == nil {
			t.Errorf("%s in the namespace after Detach", SandboxInterface)
		}
		nettest.Reach(t, pathA, world, "192.0.2.1")

		// Concurrent Attaches get addresses of their own.
		var wg sync.WaitGroup
		paths := make([]string, 8)
		errs := make([]error, len(paths))
		for i := range paths {
			paths[i] = startNS(t, fmt.Sprintf("burst-%d", i)).path
		}
		start := time.Now()
		for i := range paths {
			wg.Go(func() { errs[i] = m.Attach(fmt.Sprintf("burst-%d", i), paths[i]) })
		}
		wg.Wait()
		t.Logf("%d concurrent Attaches: %v", len(paths), time.Since(start))
		must(t, errors.Join(errs...))
		seen := map[netip.Addr]bool{addrA: true, addrC: true}
		for _, p := range paths {
			a, _ := sandboxAddr(t, p)
			if seen[a] {
				t.Errorf("address %s handed out twice", a)
			}
			seen[a] = true
		}
		// Detaches, slow, do not hold up an Attach meanwhile.
		late := startNS(t, "late").path
		start = time.Now()
		for i := range paths {
			wg.Go(func() { errs[i] = m.Detach(fmt.Sprintf("burst-%d", i)) })
		}
		time.Sleep(time.Millisecond)
		attachStart := time.Now()
		must(t, m.Attach("late", late))
		took := time.Since(attachStart)
		wg.Wait()
		t.Logf("Attach during %d concurrent Detaches: %v; Detaches: %v", len(paths), took, time.Since(start))
		must(t, errors.Join(errs...))
		if a, _ := sandboxAddr(t, late); seen[a] {
			t.Errorf("address %s of a detaching sandbox handed out", a)
		}
		must(t, m.Detach("late"))
		if got, want := m.List(), []string{"sandbox-a", "sandbox-c"}; !slices.Equal(got, want) {
			t.Errorf("List = %v, want %v", got, want)
		}
	})
}

// BenchmarkAttach measures Attach of a new id to a namespace (Detach, which
// undoes it, is not measured).
func BenchmarkAttach(b *testing.B) {
	e := newEnv(b)
	m := e.manager(b, Policy{})
	p := startNS(b, "bench")
	for i := range b.N {
		id := fmt.Sprintf("bench-%d", i)
		must(b, m.Attach(id, p.path))
		b.StopTimer()
		must(b, m.Detach(id))
		b.StartTimer()
	}
}
