package network

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the name of the Manager's nftables table, of family inet, in
// the agent Pod's network namespace.
const TableName = "fast_sandbox"

// Names of the table's sets and chains, as `nft list table inet
// fast_sandbox` shows them.
const (
	setSandboxes   = "sandbox_net"
	setDeny        = "deny"
	setAllow       = "allow"
	setDefaultDeny = "default_deny"
	chainEgress    = "egress"
)

// ruleset is what Init installs, computed from a Config.
type ruleset struct {
	subnet      netip.Prefix
	deny, allow []netip.Prefix
	defaultDeny []netip.Prefix // defaultDeny + Subnet + HostIPs
}

func newRuleset(cfg Config) ruleset {
	dd := append(DefaultDenyCIDRs(), cfg.Subnet)
	for _, a := range cfg.Policy.HostIPs {
		dd = append(dd, netip.PrefixFrom(a, 32))
	}
	return ruleset{subnet: cfg.Subnet, deny: cfg.Policy.DenyCIDRs, allow: cfg.Policy.AllowCIDRs, defaultDeny: dd}
}

// install replaces the table in one netlink batch: add (a no-op when it
// exists), delete, add again and fill. The kernel applies the batch as one
// transaction, so the table is never missing, never duplicated and never
// half-filled, and a failed batch leaves the previous table in place.
func (r ruleset) install(c *nftables.Conn) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	sets := map[string]*nftables.Set{}
	for _, s := range []struct {
		name     string
		prefixes []netip.Prefix
	}{
		{setSandboxes, []netip.Prefix{r.subnet}},
		{setDeny, r.deny},
		{setAllow, r.allow},
		{setDefaultDeny, r.defaultDeny},
	} {
		set := &nftables.Set{Table: t, Name: s.name, KeyType: nftables.TypeIPAddr, Interval: true}
		if err := c.AddSet(set, intervalElements(s.prefixes)); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.name, err)
		}
		sets[s.name] = set
	}
	accept := nftables.ChainPolicyAccept
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: all})
	}
	lookup := func(set string, field uint32) []expr.Any {
		return append(nfproto(expr.CmpOpEq),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: field, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: sets[set].Name, SetID: sets[set].ID},
		)
	}
	const saddr, daddr = 12, 16 // offsets in the IPv4 header

	// Before conntrack: no IPv6 at all from a sandbox, and no spoofed source
	// (strict reverse-path check: the route back to the source must go out
	// through the veth the packet came in on).
	pre := base("prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	rule(pre, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq), nfproto(expr.CmpOpNeq), counterVerdict(expr.VerdictDrop))
	rule(pre, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq), []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true, FlagPRESENT: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}, counterVerdict(expr.VerdictDrop))

	// Nothing from a sandbox is for the agent Pod's own network namespace:
	// not its API on the gateway or Pod address, not anything else.
	in := base("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	rule(in, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq), counterVerdict(expr.VerdictDrop))

	// Into a sandbox only replies; out of one, the egress policy.
	fwd := base("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	egress := c.AddChain(&nftables.Chain{Name: chainEgress, Table: t})
	rule(fwd, ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	rule(fwd, ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq), counterVerdict(expr.VerdictDrop))
	rule(fwd, ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq), []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainEgress}})

	rule(egress, nfproto(expr.CmpOpNeq), counterVerdict(expr.VerdictDrop))
	rule(egress, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	rule(egress, lookup(setSandboxes, daddr), counterVerdict(expr.VerdictDrop))
	rule(egress, lookup(setDeny, daddr), counterVerdict(expr.VerdictDrop))
	rule(egress, lookup(setAllow, daddr), counterVerdict(expr.VerdictAccept))
	rule(egress, lookup(setDefaultDeny, daddr), counterVerdict(expr.VerdictDrop))
	rule(egress, counterVerdict(expr.VerdictAccept))

	// NAT: sandbox addresses leave the agent Pod as the Pod's address.
	post := base("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	rule(post, ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq), lookup(setSandboxes, saddr), []expr.Any{&expr.Masq{}})

	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// ifname matches (CmpOpEq) or excludes (CmpOpNeq) the sandbox veths by
// their name prefix, as `iifname "fsb*"` does: a comparison of the name's
// first bytes only.
func ifname(key expr.MetaKey, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(VethPrefix)},
	}
}

// nfproto matches (CmpOpEq) or excludes (CmpOpNeq) IPv4 packets.
func nfproto(op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// ctState matches packets whose conntrack state is one of bits.
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func verdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k}}
}

func counterVerdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: k}}
}
