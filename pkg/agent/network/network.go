// Package network gives Egress sandboxes a network of their own: a network
// namespace per sandbox, a veth pair into the agent Pod's network namespace
// and NAT out of it, filtered by an egress policy. A sandbox never shares the
// agent Pod's network namespace and never reaches the agent's API, the
// node, containerd or another sandbox.
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
// of the SHA-256 of the sandbox id, so it is known from the id alone. IPv6
// is disabled in the sandbox namespace and on the Pod-side veth, and dropped
// from sandbox veths. The veths get the MTU of the Pod netns's default-route
// interface (1500 without one).
//
// The namespace of sandbox id is created with unshare(CLONE_NEWNET) on a
// locked OS thread and kept alive by a bind mount onto Config.Dir/<id>, the
// path that Prepare returns and that the container runtime passes to the
// OCI runtime as the sandbox's network namespace. Note that runc and crun
// run in the node's mount namespace: when the agent runs in a container,
// Config.Dir must lie on a volume mounted with Bidirectional mount
// propagation, so that the bind mounts the agent makes are seen by the
// node (and survive the agent's container). The Manager needs
// CAP_NET_ADMIN and CAP_SYS_ADMIN (unshare, setns, mount) and a writable
// /proc/sys: a privileged agent container.
//
// # Restart
//
// State lives in the kernel and in Config.Dir, nothing in memory matters: a
// restarted agent calls Init again, which replaces the nftables table and
// adopts every namespace file in Config.Dir. A sandbox's address block is
// learnt back from the address of its Pod-side veth (named after the id);
// that address is set last when a sandbox is wired, so a veth with it is
// complete. A namespace whose veth is missing or unaddressed (an agent that
// died in Prepare) is wired again with a fresh block; a leftover empty file
// is removed, and so is a veth with the prefix that belongs to no namespace
// file. A block is never handed out while a veth holds it, and freed blocks
// are reused last (allocation goes round the Subnet), so a sandbox never
// inherits a recent predecessor's connections; Release also deletes the
// conntrack entries of the address it frees.
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
	"os"
	"path/filepath"
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
	// Dir holds the sandboxes' network namespace files, one per sandbox,
	// named after its id, e.g. <stateDir>/pods/<podUID>/netns. It is
	// created if missing and belongs to the Manager alone.
	Dir string
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

// Manager creates and removes the network namespaces of Egress sandboxes
// and keeps the agent Pod's network namespace set up for them. Its methods
// are safe for concurrent use.
type Manager struct {
	cfg Config
	log logr.Logger

	mu     sync.Mutex
	hostNS netns.NsHandle  // open while initialized, else -1
	host   *netlink.Handle // netlink in hostNS
	mtu    int
	ids    map[string]*sandbox
	blocks map[uint32]string // block index -> id
	next   uint32            // where the search for a free block starts
}

// sandbox is one namespace file of Dir.
type sandbox struct {
	id    string
	veth  string
	block uint32
	wired bool // veth complete, block valid
}

// validID is what a sandbox id may look like: it names a file of Dir.
var validID = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$`)

// New validates cfg and returns a Manager; Init must be called before the
// Manager is used.
func New(cfg Config, log logr.Logger) (*Manager, error) {
	if cfg.Dir == "" || !filepath.IsAbs(cfg.Dir) {
		return nil, fmt.Errorf("network: Dir must be an absolute path, not %q", cfg.Dir)
	}
	cfg.Dir = filepath.Clean(cfg.Dir)
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
// nftables table with one for the Manager's policy, and adopts the
// namespaces in Dir (see the package comment). A namespace that cannot be
// wired again is logged and left for Prepare or Release.
func (m *Manager) Init() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := os.MkdirAll(m.cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("network: create %s: %w", m.cfg.Dir, err)
	}
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
	if err := m.adopt(); err != nil {
		return fmt.Errorf("network: adopt namespaces of %s: %w", m.cfg.Dir, err)
	}
	m.log.Info("Sandbox network ready", "dir", m.cfg.Dir, "subnet", m.cfg.Subnet, "sandboxes", len(m.ids), "mtu", m.mtu,
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

// adopt rebuilds the Manager's view from Dir and the Pod netns's veths.
func (m *Manager) adopt() error {
	m.ids, m.blocks = map[string]*sandbox{}, map[uint32]string{}
	entries, err := os.ReadDir(m.cfg.Dir)
	if err != nil {
		return fmt.Errorf("read dir: %w", err)
	}
	links, err := retryDump(m.host.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	veths := map[string]netlink.Link{}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, VethPrefix) && l.Type() == "veth" {
			veths[l.Attrs().Name] = l
		}
	}
	var highest uint32
	var unwired []*sandbox
	for _, e := range entries {
		id, path := e.Name(), filepath.Join(m.cfg.Dir, e.Name())
		if !validID.MatchString(id) {
			m.log.Info("Ignoring a file that names no sandbox", "path", path)
			continue
		}
		if ok, err := isNSMount(path); err != nil || !ok {
			m.log.Info("Removing a namespace file left half-made", "path", path, "error", err)
			if err := removeNamedNS(path); err != nil {
				return err
			}
			continue
		}
		sb := &sandbox{id: id, veth: vethName(id)}
		m.ids[id] = sb
		if l, ok := veths[sb.veth]; ok {
			if b, ok := m.linkBlock(l); ok && m.blocks[b] == "" {
				sb.block, sb.wired = b, true
				m.blocks[b] = id
				highest = max(highest, b)
				if err := m.host.LinkSetUp(l); err != nil {
					m.log.Error(err, "Bringing up a sandbox veth", "id", id, "veth", sb.veth)
				}
				continue
			}
		}
		unwired = append(unwired, sb)
	}
	owned := map[string]bool{}
	for _, sb := range m.ids {
		owned[sb.veth] = true
	}
	for name, l := range veths {
		if owned[name] {
			continue
		}
		m.log.Info("Deleting a sandbox veth whose namespace file is gone", "veth", name)
		if err := m.host.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete veth %s: %w", name, err)
		}
	}
	m.next = highest + 1
	if len(m.blocks) == 0 {
		m.next = 0
	}
	for _, sb := range unwired {
		m.log.Info("Wiring again a sandbox namespace found without its veth", "id", sb.id)
		if err := m.wire(sb); err != nil {
			m.log.Error(err, "Wiring a sandbox namespace; Prepare or Release it", "id", sb.id)
		}
	}
	return nil
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

// Prepare makes the network namespace of sandbox id, wired and ready, and
// returns the path of its file. For an id already prepared it only checks,
// and repairs, its wiring, and returns the same path.
func (m *Manager) Prepare(id string) (nsPath string, err error) {
	if !validID.MatchString(id) {
		return "", fmt.Errorf("network: invalid sandbox id %q", id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hostNS < 0 {
		return "", errors.New("network: Prepare before Init")
	}
	path := filepath.Join(m.cfg.Dir, id)
	veth := vethName(id)
	for other, sb := range m.ids {
		if other != id && sb.veth == veth {
			return "", fmt.Errorf("network: sandbox ids %q and %q hash to the same veth %s", id, other, veth)
		}
	}
	sb := m.ids[id]
	mounted, statErr := isNSMount(path)
	if statErr != nil && !errors.Is(statErr, os.ErrNotExist) {
		return "", fmt.Errorf("network: %w", statErr)
	}
	if !mounted {
		if sb != nil {
			m.forget(sb)
			sb = nil
		}
		if statErr == nil { // an empty file left by a failed creation
			if err := removeNamedNS(path); err != nil {
				return "", fmt.Errorf("network: %w", err)
			}
		}
		if err := createNamedNS(path); err != nil {
			return "", fmt.Errorf("network: sandbox %s: %w", id, err)
		}
	}
	created := sb == nil && !mounted
	if sb == nil {
		sb = &sandbox{id: id, veth: veth}
		m.ids[id] = sb
	}
	if sb.wired {
		if _, err := m.host.LinkByName(sb.veth); err == nil {
			return path, nil
		}
		m.log.Info("Sandbox veth vanished; wiring again", "id", id, "veth", sb.veth)
	}
	if err := m.wire(sb); err != nil {
		if created {
			m.forget(sb)
			err = errors.Join(err, removeNamedNS(path))
		}
		return "", fmt.Errorf("network: sandbox %s: %w", id, err)
	}
	return path, nil
}

// forget drops a sandbox from the Manager's view.
func (m *Manager) forget(sb *sandbox) {
	if sb.wired && m.blocks[sb.block] == sb.id {
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

// wire (re)creates the veth pair of sb, whose namespace file exists, with a
// block of its own: the one it has, if any, else a free one. The Pod-side
// address goes last: a veth that has it is complete.
func (m *Manager) wire(sb *sandbox) (err error) {
	if !sb.wired {
		if err := m.allocate(sb); err != nil {
			return err
		}
	}
	sb.wired = false
	defer func() {
		if err != nil {
			if m.blocks[sb.block] == sb.id {
				delete(m.blocks, sb.block)
			}
			if l, lerr := m.host.LinkByName(sb.veth); lerr == nil {
				_ = m.host.LinkDel(l)
			}
		}
	}()
	podSide, sbSide := m.addrs(sb.block)
	ns, err := netns.GetFromPath(filepath.Join(m.cfg.Dir, sb.id))
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer ns.Close()

	if err := inNS(ns, func() error {
		if err := writeSysctl("net/ipv6/conf/default/disable_ipv6", "1", true); err != nil {
			return err
		}
		return writeSysctl("net/ipv6/conf/all/disable_ipv6", "1", true)
	}); err != nil {
		return fmt.Errorf("disable IPv6 in the sandbox: %w", err)
	}
	if l, err := m.host.LinkByName(sb.veth); err == nil {
		if err := m.host.LinkDel(l); err != nil {
			return fmt.Errorf("delete stale veth %s: %w", sb.veth, err)
		}
	}
	sh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in the sandbox: %w", err)
	}
	defer sh.Close()
	if l, err := sh.LinkByName(SandboxInterface); err == nil { // a stale peer
		if err := sh.LinkDel(l); err != nil {
			return fmt.Errorf("delete stale %s in the sandbox: %w", SandboxInterface, err)
		}
	}

	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.veth, MTU: m.mtu},
		PeerName:      SandboxInterface,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := m.host.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", sb.veth, err)
	}
	// The sandbox side.
	lo, err := sh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("sandbox loopback: %w", err)
	}
	if err := sh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up the sandbox loopback: %w", err)
	}
	eth, err := sh.LinkByName(SandboxInterface)
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", SandboxInterface, err)
	}
	if err := sh.LinkSetMTU(eth, m.mtu); err != nil {
		return fmt.Errorf("set the MTU of the sandbox %s: %w", SandboxInterface, err)
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
	// The Pod side.
	hl, err := m.host.LinkByName(sb.veth)
	if err != nil {
		return fmt.Errorf("veth %s: %w", sb.veth, err)
	}
	if err := inNS(m.hostNS, func() error {
		return writeSysctl("net/ipv6/conf/"+sb.veth+"/disable_ipv6", "1", true)
	}); err != nil {
		return fmt.Errorf("disable IPv6 on veth %s: %w", sb.veth, err)
	}
	if err := m.host.LinkSetUp(hl); err != nil {
		return fmt.Errorf("bring up veth %s: %w", sb.veth, err)
	}
	if err := m.host.AddrReplace(hl, &netlink.Addr{IPNet: ipNet(podSide, 30)}); err != nil {
		return fmt.Errorf("address veth %s: %w", sb.veth, err)
	}
	sb.wired = true
	m.log.V(1).Info("Sandbox network prepared", "id", sb.id, "veth", sb.veth, "address", sbSide, "gateway", podSide)
	return nil
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	b := a.As4()
	return &net.IPNet{IP: net.IP(b[:]), Mask: net.CIDRMask(bits, 32)}
}

// Release removes the network of sandbox id: its veth pair, the conntrack
// entries of its address and its namespace file. Releasing an unknown id
// (or twice) is no error.
func (m *Manager) Release(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("network: invalid sandbox id %q", id)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hostNS < 0 {
		return errors.New("network: Release before Init")
	}
	veth := vethName(id)
	if l, err := m.host.LinkByName(veth); err == nil {
		if err := m.host.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("network: sandbox %s: delete veth %s: %w", id, veth, err)
		}
	} else if !isNotFound(err) {
		return fmt.Errorf("network: sandbox %s: find veth %s: %w", id, veth, err)
	}
	if sb := m.ids[id]; sb != nil && sb.wired {
		_, sbSide := m.addrs(sb.block)
		f := &netlink.ConntrackFilter{}
		a := sbSide.As4()
		if err := f.AddIP(netlink.ConntrackOrigSrcIP, net.IP(a[:])); err == nil {
			if _, err := m.host.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
				m.log.V(1).Info("Could not delete a released sandbox's conntrack entries", "id", id, "error", err)
			}
		}
	}
	if err := removeNamedNS(filepath.Join(m.cfg.Dir, id)); err != nil {
		return fmt.Errorf("network: sandbox %s: %w", id, err)
	}
	if sb := m.ids[id]; sb != nil {
		m.forget(sb)
	}
	m.log.V(1).Info("Sandbox network released", "id", id)
	return nil
}

// List returns the ids of the sandboxes whose namespaces the Manager holds,
// sorted.
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

// Close releases the Manager's handles. The namespaces, veths and the
// nftables table stay: sandboxes keep their network while an agent
// restarts, and the next Init adopts them.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hostNS < 0 {
		return nil
	}
	m.host.Close()
	err := m.hostNS.Close()
	m.hostNS, m.host = -1, nil
	if err != nil {
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
