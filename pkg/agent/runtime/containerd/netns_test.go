package containerd_test

// Throwaway network namespaces for the Egress tests, from package nettest
// as for package network's tests: the runtime's network Manager works in an "agent"
// namespace (standing in for the agent Pod's) connected by a veth to a
// "world" namespace; the test process itself stays in the host's, and
// nothing of the host's network is touched.

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network"
	"github.com/fast-sandbox/fast-sandbox/pkg/agent/network/nettest"
)

// netEnv is a throwaway agent netns connected to a throwaway world netns
// (a nettest.Pair):
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
	p := nettest.NewPair(t, nettest.PairOptions{})
	e := &netEnv{agent: p.Agent, world: p.World}
	nettest.Serve(t, e.world, "0.0.0.0:8080")
	nettest.Serve(t, e.agent, "0.0.0.0:8081")
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
	links, err := nettest.Handle(t, e.agent).LinkList()
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

// links lists the interfaces of the namespace at path, and the IPv4
// address of eth0 if it has one.
func links(t testing.TB, path string) ([]string, netip.Addr) {
	t.Helper()
	h := nettest.Handle(t, path)
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

// must fails the test at once if err is not nil.
var must = nettest.Must
