// Package network gives Egress sandboxes a network of their own: a veth
// pair from the sandbox's network namespace into the agent Pod's network
// namespace and NAT out of it, filtered by an egress policy. A sandbox never
// shares the agent Pod's network namespace and never reaches the agent's
// API, the node, containerd or another sandbox.
//
// # Topology
//
// Everything lives in the agent Pod's network namespace ("the Pod netns",
// Config.HostNetNS) and in one namespace per sandbox:
//
//	sandbox netns                     agent Pod netns                  world
//	eth0 198.18.0.2/30 ──veth── fsb1a2b3c4d5e 198.18.0.1/30   eth0 (Pod IP) ──▶
//	default via 198.18.0.1            ip_forward=1, table inet fast_sandbox
//
// Each sandbox gets a /30 of Config.Subnet (default 198.18.0.0/16, 16384
// sandboxes): block i is Subnet+4i, the Pod side of the veth has .1 of it,
// the sandbox side ("eth0") .2, and the sandbox's default route goes through
// the Pod side. The Pod-side name is VethPrefix plus the first 10 hex digits
// of the SHA-256 of the sandbox id, so it is known from the id alone; its
// alias (IFLA_IFALIAS, shown by `ip link`) is AliasPrefix and the id. IPv6
// is disabled in the sandbox namespace and on the Pod-side veth, and dropped
// from sandbox veths. The veths get the MTU of the Pod netns's default-route
// interface (1500 without one).
//
// # Namespaces
//
// The Manager creates no namespace and mounts nothing. The OCI runtime
// creates a sandbox's namespace with its container (a linux.namespaces
// entry of type network without a path: a new namespace with loopback only)
// and it lives as long as the container does. The agent learns the
// container's PID from containerd and hands Attach the namespace's path
// through the node's /proc mounted into the agent Pod, e.g.
// /host/proc/<pid>/ns/net; Attach opens it once and wires it. As nothing is
// bind-mounted, no mount propagation between the agent Pod and the node is
// needed. When the container's last process exits, the namespace dies and
// the kernel deletes the veth pair with it. The Manager needs
// CAP_NET_ADMIN, CAP_SYS_ADMIN (setns), CAP_SYS_PTRACE (another process's
// namespace files) and a writable /proc/sys: a privileged agent container.
//
// # Restart
//
// State lives in the kernel, nothing in memory or on disk matters: a
// restarted agent calls Init again, which replaces the nftables table and
// learns the attached sandboxes back from the Pod-side veths alone: a
// veth's alias gives the sandbox id back (the name, a hash, cannot), its
// address the sandbox's block. The alias is set before the address, and the
// address last of all when a sandbox is wired, so a veth with both is
// complete. A veth with the prefix that is not complete (an agent that died
// in Attach), or whose alias names no id hashing to its name, is deleted;
// the next Attach wires the namespace again. A sandbox whose container died
// while the agent was down took its veth pair with it, so Init learns
// nothing stale.
//
// The Manager does not know which sandboxes the agent still wants: the
// agent's reconcile calls Attach for each Egress sandbox it runs (a no-op
// for one wired to that namespace already) and Detach for each id of List
// that it no longer runs. While the Manager runs, an id stays attached, its
// block reserved, until Detach, even when its namespace died: its address
// goes to no other sandbox meanwhile, and an Attach of the id to a new
// namespace (the container made again) keeps it. (Init, which knows only
// veths, forgets such an id.)
//
// A block is never handed out while an id or a veth holds it, and freed
// blocks are reused last (allocation goes round the Subnet). Detach deletes
// the conntrack entries of the address it frees, and Init those of every
// Subnet address that no veth holds (sandboxes gone while the agent was
// down), so a sandbox never inherits a predecessor's connections.
//
// # Filtering
//
// One nftables table, "inet fast_sandbox", holds the whole policy; Init
// replaces it atomically (add, delete and add again, filled, in one
// netlink batch), so it is never missing, duplicated or half-filled. It
// has four interval sets of IPv4 addresses: sandbox_net (the Subnet), deny
// (Policy.DenyCIDRs), allow (Policy.AllowCIDRs) and default_deny
// (DefaultDenyCIDRs, the Subnet and Policy.HostIPs), and these chains:
//
//   - prerouting (priority raw): from a sandbox veth, anything but IPv4 is
//     dropped, and so is a packet whose source address is not routed back
//     through the veth it came from (fib saddr . iif oif missing): no
//     sandbox can spoof another's address or the world's.
//   - input: anything from a sandbox veth to the Pod netns itself is
//     dropped: the agent's API, on the gateway address as on the Pod's
//     address, is out of reach, and so is every other local service.
//   - forward: towards a sandbox veth, only replies (ct state established,
//     related) pass, so nothing connects into a sandbox, another sandbox
//     included; from a sandbox veth, chain egress decides: replies pass,
//     then a destination in sandbox_net is dropped (whatever allow says),
//     then one in deny is dropped, then one in allow accepted, then one in
//     default_deny dropped, and anything else accepted.
//   - postrouting (nat): traffic from the Subnet that leaves through an
//     interface that is not a sandbox veth is masqueraded to the Pod's
//     address.
//
// A new policy (Init with another Config) applies to new connections;
// established ones stay until they end. Drops are counted (`nft list table
// inet fast_sandbox`). The chains accept
// by default, so the table changes nothing but sandbox traffic; another
// table's drop still applies to sandbox traffic, as always in nftables.
//
// # DNS
//
// There is no DNS proxy. A sandbox's resolv.conf must name a resolver it
// may reach: the cluster DNS Service (e.g. 10.96.0.10) is in a
// default-denied range and must be listed in Policy.AllowCIDRs; a public
// resolver is reachable by default. A node-local resolver on a node address
// needs the same.
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// VethPrefix starts the name of every Pod-side sandbox veth; the rest of
// the name is a hash of the sandbox id.
const VethPrefix = "fsb"

// AliasPrefix starts the alias of every Pod-side sandbox veth; the rest of
// the alias is the sandbox id.
const AliasPrefix = "fast-sandbox:"

// SandboxInterface is the name of the veth inside a sandbox's namespace.
const SandboxInterface = "eth0"

// DefaultSubnet is the Subnet of a Config that leaves it out.
var DefaultSubnet = netip.MustParsePrefix("198.18.0.0/16")

// Policy says where Egress sandboxes may connect to; see the package
// comment for how a destination is decided. Only IPv4 counts: sandboxes have
// no IPv6, and IPv6 entries are ignored.
type Policy struct {
	// AllowCIDRs are destinations allowed although in a default-denied range.
	AllowCIDRs []netip.Prefix
	// DenyCIDRs are destinations refused on top of the default-denied ones;
	// they win over AllowCIDRs.
	DenyCIDRs []netip.Prefix
	// HostIPs are the node's addresses, default-denied.
	HostIPs []netip.Addr
}

// Config configures a Manager.
type Config struct {
	// Subnet is where the sandboxes' veth addresses come from, a /30 per
	// sandbox; DefaultSubnet when left out. IPv4, at most a /30.
	Subnet netip.Prefix
	// Policy filters the sandboxes' outbound traffic.
	Policy Policy
	// HostNetNS is the path of the agent Pod's network namespace, where the
	// veths, the routing and the nftables table live; "" means the network
	// namespace of the calling process.
	HostNetNS string
}

// Manager wires the network namespaces of Egress sandboxes to the agent
// Pod's network namespace and keeps that one set up for them. Its methods
// are safe for concurrent use.
type Manager struct {
	cfg Config
	log logr.Logger

	mu     sync.Mutex
	hostNS netns.NsHandle  // open while initialized, else -1
	host   *netlink.Handle // netlink in hostNS
	mtu    int
	ids    map[string]*sandbox
	blocks map[uint32]string // block index -> id, or detaching
	next   uint32            // where the search for a free block starts

	flushes sync.WaitGroup // Detaches using host without mu
}

// detaching holds a block in Manager.blocks while Detach deletes the
// conntrack entries of its address; it is no sandbox id.
const detaching = "/detaching"

// sandbox is an attached sandbox: its block is reserved, and its veth made
// (or gone with a namespace that died, until Detach or a new Attach).
type sandbox struct {
	id    string
	veth  string
	block uint32
}

// validID is what a sandbox id may look like; it goes into the veth's alias
// (at most 255 bytes) and into logs.
var validID = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$`)

// New validates cfg and returns a Manager; Init must be called before the
// Manager is used.
func New(cfg Config, log logr.Logger) (*Manager, error) {
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() < 8 || cfg.Subnet.Bits() > 30 {
		return nil, fmt.Errorf("network: Subnet %s must be an IPv4 prefix between /8 and /30", cfg.Subnet)
	}
	if cfg.Subnet != cfg.Subnet.Masked() {
		return nil, fmt.Errorf("network: Subnet %s has host bits set (%s?)", cfg.Subnet, cfg.Subnet.Masked())
	}
	var err error
	if cfg.Policy.AllowCIDRs, err = ipv4Prefixes("AllowCIDRs", cfg.Policy.AllowCIDRs, log); err != nil {
		return nil, err
	}
	if cfg.Policy.DenyCIDRs, err = ipv4Prefixes("DenyCIDRs", cfg.Policy.DenyCIDRs, log); err != nil {
		return nil, err
	}
	var hosts []netip.Addr
	for _, a := range cfg.Policy.HostIPs {
		switch {
		case !a.IsValid():
			return nil, errors.New("network: HostIPs holds an invalid address")
		case a.Unmap().Is4():
			hosts = append(hosts, a.Unmap())
		default:
			log.V(1).Info("Ignoring IPv6 host address: sandboxes have no IPv6", "address", a)
		}
	}
	cfg.Policy.HostIPs = hosts
	return &Manager{cfg: cfg, log: log, hostNS: -1}, nil
}

// ipv4Prefixes checks a policy list and returns its IPv4 prefixes, masked.
func ipv4Prefixes(name string, ps []netip.Prefix, log logr.Logger) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("network: %s holds an invalid prefix", name)
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if !p.Addr().Is4() {
			log.V(1).Info("Ignoring IPv6 prefix: sandboxes have no IPv6", "list", name, "prefix", p)
			continue
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Init sets up the agent Pod's network namespace, as often as called (a
// restarted agent calls it again): it enables IPv4 forwarding, replaces the
// nftables table with one for the Manager's policy, and learns the attached
// sandboxes back from the Pod-side veths (see the package comment).
func (m *Manager) Init() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hostNS < 0 {
		if err := m.open(); err != nil {
			return err
		}
	}
	if err := inNS(m.hostNS, func() error { return writeSysctl("net/ipv4/ip_forward", "1", false) }); err != nil {
		return fmt.Errorf("network: enable forwarding: %w", err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return fmt.Errorf("network: nftables: %w", err)
	}
	if err := newRuleset(m.cfg).install(c); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	m.mtu = m.defaultMTU()
	if err := m.relearn(); err != nil {
		return fmt.Errorf("network: learn the attached sandboxes: %w", err)
	}
	m.log.Info("Sandbox network ready", "subnet", m.cfg.Subnet, "sandboxes", len(m.ids), "mtu", m.mtu,
		"allow", m.cfg.Policy.AllowCIDRs, "deny", m.cfg.Policy.DenyCIDRs, "hostIPs", m.cfg.Policy.HostIPs)
	return nil
}

// open opens the agent Pod's network namespace and a netlink handle in it.
func (m *Manager) open() error {
	var (
		ns  netns.NsHandle
		err error
	)
	if m.cfg.HostNetNS == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(m.cfg.HostNetNS)
	}
	if err != nil {
		return fmt.Errorf("network: open the agent Pod's network namespace %q: %w", m.cfg.HostNetNS, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		_ = ns.Close()
		return fmt.Errorf("network: netlink in the agent Pod's network namespace: %w", err)
	}
	m.hostNS, m.host = ns, h
	return nil
}

// defaultMTU is the MTU of the interface of the Pod netns's IPv4 default
// route, or 1500.
func (m *Manager) defaultMTU() int {
	routes, err := retryDump(func() ([]netlink.Route, error) { return m.host.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		m.log.V(1).Info("No default route MTU, using 1500", "error", err)
		return 1500
	}
	for _, r := range routes {
		if r.Dst != nil && (!r.Dst.IP.IsUnspecified() || prefixBits(r.Dst) != 0) {
			continue
		}
		if l, err := m.host.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().MTU >= 576 {
			return l.Attrs().MTU
		}
	}
	return 1500
}

func prefixBits(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
}

// relearn rebuilds the Manager's view from the Pod netns's veths alone,
// deletes the incomplete and foreign ones, and the conntrack entries of
// Subnet addresses that no veth holds.
func (m *Manager) relearn() error {
	m.ids, m.blocks = map[string]*sandbox{}, map[uint32]string{}
	links, err := retryDump(m.host.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var highest uint32
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, VethPrefix) || l.Type() != "veth" {
			continue
		}
		id, ok := strings.CutPrefix(l.Attrs().Alias, AliasPrefix)
		var reason string
		switch {
		case !ok || !validID.MatchString(id) || vethName(id) != name:
			reason = "its alias names no sandbox of its name"
		}
		b, wired := m.linkBlock(l)
		switch {
		case reason != "":
		case !wired:
			reason = "it has no address: its wiring was cut short"
		case m.blocks[b] != "":
			reason = "another veth holds its address"
		}
		if reason != "" {
			m.log.Info("Deleting a sandbox veth", "veth", name, "alias", l.Attrs().Alias, "reason", reason)
			if err := m.host.LinkDel(l); err != nil && !isNotFound(err) {
				return fmt.Errorf("delete veth %s: %w", name, err)
			}
			continue
		}
		m.ids[id] = &sandbox{id: id, veth: name, block: b}
		m.blocks[b] = id
		highest = max(highest, b)
		if err := m.host.LinkSetUp(l); err != nil {
			m.log.Error(err, "Bringing up a sandbox veth", "id", id, "veth", name)
		}
	}
	m.next = highest + 1
	if len(m.blocks) == 0 {
		m.next = 0
	}
	// Connections of sandboxes that went while no Manager ran.
	n, err := m.host.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, unheldFilter{m})
	if err != nil {
		m.log.V(1).Info("Could not delete the conntrack entries of gone sandboxes", "error", err)
	} else if n > 0 {
		m.log.Info("Deleted the conntrack entries of gone sandboxes", "entries", n)
	}
	return nil
}

// unheldFilter matches conntrack entries from a Subnet address that no
// sandbox holds.
type unheldFilter struct{ m *Manager }

func (f unheldFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	a, ok := netip.AddrFromSlice(flow.Forward.SrcIP)
	if !ok {
		return false
	}
	a = a.Unmap()
	if !a.Is4() || !f.m.cfg.Subnet.Contains(a) {
		return false
	}
	_, held := f.m.blocks[(u32(a)-u32(f.m.cfg.Subnet.Addr()))/4]
	return !held
}

// linkBlock returns the block whose Pod-side address a veth holds.
func (m *Manager) linkBlock(l netlink.Link) (uint32, bool) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return m.host.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return 0, false
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if !m.cfg.Subnet.Contains(ip) || prefixBits(a.IPNet) != 30 {
			continue
		}
		off := u32(ip) - u32(m.cfg.Subnet.Addr())
		if off%4 == 1 {
			return off / 4, true
		}
	}
	return 0, false
}

// Attach wires the network namespace at nsPath, which someone else made and
// keeps alive (the OCI runtime, for a container: e.g.
// /host/proc/<pid>/ns/net), for sandbox id: a veth pair, addresses, routes
// and sysctls. Attaching an id wired to the same namespace already is a
// no-op; an id wired to another namespace, or whose veth is gone (its
// namespace died), is wired again, with the address it had. The namespace
// must have no SandboxInterface yet: one namespace serves one id.
//
// Attach takes a millisecond or two: a veth pair, a dozen netlink requests
// and two setns. The kernel serializes it with other link changes, so a
// veth pair being deleted meanwhile (a Detach, a dying namespace: 15 to 30
// ms each) holds it up.
func (m *Manager) Attach(id, nsPath string) (err error) {
	if !validID.MatchString(id) {
		return fmt.Errorf("network: invalid sandbox id %q", id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hostNS < 0 {
		return errors.New("network: Attach before Init")
	}
	veth := vethName(id)
	for other, sb := range m.ids {
		if other != id && sb.veth == veth {
			return fmt.Errorf("network: sandbox ids %q and %q hash to the same veth %s", id, other, veth)
		}
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("network: sandbox %s: open network namespace: %w", id, err)
	}
	defer func() { _ = ns.Close() }()
	if ns.Equal(m.hostNS) {
		return fmt.Errorf("network: sandbox %s: %s is the agent Pod's own network namespace", id, nsPath)
	}
	sb := m.ids[id]
	if sb != nil {
		l, err := m.host.LinkByName(veth)
		switch {
		case err == nil:
			nsid, err := m.host.GetNetNsIdByFd(int(ns))
			if err == nil && nsid >= 0 && l.Attrs().NetNsID == nsid {
				return nil // wired to this namespace already
			}
			m.log.Info("Sandbox attached to another namespace; wiring again", "id", id, "veth", veth, "netns", nsPath)
		case isNotFound(err):
			m.log.Info("Sandbox veth gone (its namespace died?); wiring again", "id", id, "veth", veth, "netns", nsPath)
		default:
			return fmt.Errorf("network: sandbox %s: find veth %s: %w", id, veth, err)
		}
	} else {
		sb = &sandbox{id: id, veth: veth}
		if err := m.allocate(sb); err != nil {
			return fmt.Errorf("network: sandbox %s: %w", id, err)
		}
		m.ids[id] = sb
		defer func() {
			if err != nil { // a new id that failed holds no address
				m.forget(sb)
			}
		}()
	}
	if err := m.wire(sb, ns); err != nil {
		return fmt.Errorf("network: sandbox %s: %w", id, err)
	}
	return nil
}

// forget drops a sandbox from the Manager's view and frees its block.
func (m *Manager) forget(sb *sandbox) {
	if m.blocks[sb.block] == sb.id {
		delete(m.blocks, sb.block)
	}
	delete(m.ids, sb.id)
}

// allocate reserves a free block for sb, searching round the Subnet from
// where the previous search ended.
func (m *Manager) allocate(sb *sandbox) error {
	n := uint32(1) << (30 - m.cfg.Subnet.Bits())
	for i := range n {
		b := (m.next + i) % n
		if _, used := m.blocks[b]; !used {
			sb.block = b
			m.blocks[b] = sb.id
			m.next = (b + 1) % n
			return nil
		}
	}
	return fmt.Errorf("no free address in %s (%d sandboxes)", m.cfg.Subnet, n)
}

// addrs returns the Pod-side and sandbox-side addresses of a block.
func (m *Manager) addrs(block uint32) (podSide, sandboxSide netip.Addr) {
	base := u32(m.cfg.Subnet.Addr()) + 4*block
	return addrOf(base + 1), addrOf(base + 2)
}

// wire (re)creates the veth pair of sb into the namespace ns, with sb's
// block. The alias comes before the Pod-side address, which goes last: a
// veth that has it is complete. On failure, the veth is deleted.
func (m *Manager) wire(sb *sandbox, ns netns.NsHandle) (err error) {
	if l, err := m.host.LinkByName(sb.veth); err == nil {
		if err := m.host.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete veth %s: %w", sb.veth, err)
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("find veth %s: %w", sb.veth, err)
	}
	defer func() {
		if err != nil {
			if l, lerr := m.host.LinkByName(sb.veth); lerr == nil {
				_ = m.host.LinkDel(l)
			}
		}
	}()
	podSide, sbSide := m.addrs(sb.block)
	alias := AliasPrefix + sb.id
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.veth, MTU: m.mtu}, // the peer's too
		PeerName:      SandboxInterface,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	// In the sandbox's namespace, on one thread: no IPv6, the veth pair,
	// and the sandbox side of it; then, back in the Pod netns, no IPv6 on
	// the Pod side.
	if err := inNS(ns, func() error {
		if err := writeSysctl("net/ipv6/conf/default/disable_ipv6", "1", true); err != nil {
			return err
		}
		if err := writeSysctl("net/ipv6/conf/all/disable_ipv6", "1", true); err != nil {
			return err
		}
		if err := m.host.LinkAdd(veth); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("create veth %s: the namespace has a %s already (attached to another sandbox?): %w", sb.veth, SandboxInterface, err)
			}
			return fmt.Errorf("create veth %s: %w", sb.veth, err)
		}
		sh, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink in the sandbox: %w", err)
		}
		defer sh.Close()
		if err := m.wireSandboxSide(sh, podSide, sbSide); err != nil {
			return err
		}
		if err := netns.Set(m.hostNS); err != nil {
			return fmt.Errorf("enter the agent Pod's network namespace: %w", err)
		}
		if err := writeSysctl("net/ipv6/conf/"+sb.veth+"/disable_ipv6", "1", true); err != nil {
			return fmt.Errorf("disable IPv6 on veth %s: %w", sb.veth, err)
		}
		return nil
	}); err != nil {
		return err
	}
	// The Pod side (LinkAdd found veth's index): the alias (the kernel
	// ignores one given to RTM_NEWLINK), up, and the address last.
	if veth.Index == 0 {
		return fmt.Errorf("veth %s made but not found", sb.veth)
	}
	if err := m.host.LinkSetAlias(veth, alias); err != nil {
		return fmt.Errorf("set the alias of veth %s: %w", sb.veth, err)
	}
	if err := m.host.LinkSetUp(veth); err != nil {
		return fmt.Errorf("bring up veth %s: %w", sb.veth, err)
	}
	if err := m.host.AddrReplace(veth, &netlink.Addr{IPNet: ipNet(podSide, 30)}); err != nil {
		return fmt.Errorf("address veth %s: %w", sb.veth, err)
	}
	m.log.V(1).Info("Sandbox network attached", "id", sb.id, "veth", sb.veth, "address", sbSide, "gateway", podSide)
	return nil
}

// wireSandboxSide brings up loopback and SandboxInterface, addresses it and
// routes through the Pod side, with sh a netlink handle in the sandbox.
func (m *Manager) wireSandboxSide(sh *netlink.Handle, podSide, sbSide netip.Addr) error {
	lo, err := sh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("sandbox loopback: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := sh.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring up the sandbox loopback: %w", err)
		}
	}
	eth, err := sh.LinkByName(SandboxInterface)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", SandboxInterface, err)
	}
	if eth.Attrs().MTU != m.mtu {
		if err := sh.LinkSetMTU(eth, m.mtu); err != nil {
			return fmt.Errorf("set the MTU of the sandbox %s: %w", SandboxInterface, err)
		}
	}
	if err := sh.AddrReplace(eth, &netlink.Addr{IPNet: ipNet(sbSide, 30)}); err != nil {
		return fmt.Errorf("address the sandbox %s: %w", SandboxInterface, err)
	}
	if err := sh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up the sandbox %s: %w", SandboxInterface, err)
	}
	gw := podSide.As4()
	if err := sh.RouteReplace(&netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Dst:       ipNet(netip.IPv4Unspecified(), 0),
		Gw:        net.IP(gw[:]),
		Flags:     int(netlink.FLAG_ONLINK),
	}); err != nil {
		return fmt.Errorf("sandbox default route: %w", err)
	}
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	b := a.As4()
	return &net.IPNet{IP: net.IP(b[:]), Mask: net.CIDRMask(bits, 32)}
}

// Detach deletes the veth pair of sandbox id, if any, and the conntrack
// entries of its address, and forgets id, freeing its address. The
// namespace is not touched otherwise. Detaching an unknown id (or twice) is
// no error.
//
// Both deletions are slow (the kernel waits for the veths' last users, and
// the conntrack table is dumped whole), so they run without the Manager's
// lock, the address held by no id meanwhile: Attach need not wait for them.
func (m *Manager) Detach(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("network: invalid sandbox id %q", id)
	}
	m.mu.Lock()
	if m.hostNS < 0 {
		m.mu.Unlock()
		return errors.New("network: Detach before Init")
	}
	veth := vethName(id)
	l, err := m.host.LinkByName(veth)
	if err != nil && !isNotFound(err) {
		m.mu.Unlock()
		return fmt.Errorf("network: sandbox %s: find veth %s: %w", id, veth, err)
	}
	sb := m.ids[id]
	if sb != nil {
		m.forget(sb)
		m.blocks[sb.block] = detaching
	}
	host := m.host
	m.flushes.Add(1)
	defer m.flushes.Done()
	m.mu.Unlock()

	// By index: a veth an Attach of id makes meanwhile has another one.
	if l != nil {
		if err := host.LinkDel(l); err != nil && !isNotFound(err) {
			m.mu.Lock()
			if sb != nil && m.ids[id] == nil && m.blocks[sb.block] == detaching {
				m.ids[id], m.blocks[sb.block] = sb, id
			}
			m.mu.Unlock()
			return fmt.Errorf("network: sandbox %s: delete veth %s: %w", id, veth, err)
		}
	}
	if sb == nil {
		return nil
	}
	_, sbSide := m.addrs(sb.block)
	f := &netlink.ConntrackFilter{}
	a := sbSide.As4()
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, net.IP(a[:])); err == nil {
		if _, err := host.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
			m.log.V(1).Info("Could not delete a detached sandbox's conntrack entries", "id", id, "error", err)
		}
	}
	m.mu.Lock()
	if m.blocks[sb.block] == detaching {
		delete(m.blocks, sb.block)
	}
	m.mu.Unlock()
	m.log.V(1).Info("Sandbox network detached", "id", id)
	return nil
}

// List returns the ids of the attached sandboxes, sorted: those attached
// and not detached since Init, and those Init learnt back.
func (m *Manager) List() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.ids))
	for id := range m.ids {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Close releases the Manager's handles. The veths and the nftables table
// stay: sandboxes keep their network while an agent restarts, and the next
// Init learns them back.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.hostNS < 0 {
		m.mu.Unlock()
		return nil
	}
	ns, host := m.hostNS, m.host
	m.hostNS, m.host = -1, nil
	m.mu.Unlock()
	m.flushes.Wait()
	host.Close()
	if err := ns.Close(); err != nil {
		return fmt.Errorf("network: close the agent Pod's network namespace: %w", err)
	}
	return nil
}

// vethName is the Pod-side veth name of sandbox id: VethPrefix and 10 hex
// digits of the id's SHA-256, 13 characters (IFNAMSIZ allows 15).
func vethName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return VethPrefix + hex.EncodeToString(sum[:5])
}

// retryDump retries a netlink dump that a concurrent change interrupted.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		r, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return r, err
	}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}
