package network

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/google/nftables"
)

// defaultDeny is the fixed part of the default-denied destinations:
// private, shared, link-local (with the cloud metadata address), loopback,
// "this network", multicast, reserved and benchmarking (where the default
// sandbox Subnet lies) ranges.
var defaultDeny = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("198.18.0.0/15"),
}

// DefaultDenyCIDRs returns the destinations an Egress sandbox may not reach
// unless Policy.AllowCIDRs lists them: 10.0.0.0/8, 172.16.0.0/12,
// 192.168.0.0/16, 100.64.0.0/10, 169.254.0.0/16, 127.0.0.0/8, 0.0.0.0/8,
// 224.0.0.0/4, 240.0.0.0/4 and 198.18.0.0/15. The Manager adds its Subnet
// and Policy.HostIPs to them.
func DefaultDenyCIDRs() []netip.Prefix {
	return slices.Clone(defaultDeny)
}

// ipRange is an inclusive range of IPv4 addresses.
type ipRange struct{ lo, hi uint32 }

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addrOf(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// prefixRange returns the inclusive range of an IPv4 prefix.
func prefixRange(p netip.Prefix) ipRange {
	lo := u32(p.Masked().Addr())
	size := uint64(1) << (32 - p.Bits())
	return ipRange{lo: lo, hi: uint32(uint64(lo) + size - 1)}
}

// mergeRanges turns IPv4 prefixes into sorted ranges that neither overlap
// nor touch, as the kernel's interval sets want them.
func mergeRanges(ps []netip.Prefix) []ipRange {
	rs := make([]ipRange, 0, len(ps))
	for _, p := range ps {
		rs = append(rs, prefixRange(p))
	}
	slices.SortFunc(rs, func(a, b ipRange) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	var out []ipRange
	for _, r := range rs {
		if n := len(out); n > 0 && uint64(r.lo) <= uint64(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// intervalElements encodes prefixes as the elements of an nftables interval
// set of ipv4_addr: a start element per range and an interval-end element
// just past it (none for a range that ends at 255.255.255.255).
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	var els []nftables.SetElement
	for _, r := range mergeRanges(ps) {
		els = append(els, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r.lo)})
		if r.hi != ^uint32(0) {
			els = append(els, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r.hi+1), IntervalEnd: true})
		}
	}
	return els
}
