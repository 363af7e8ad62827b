// Package netns gives a test hosts of its own on one machine: each host is a
// Linux network namespace with a veth into a private bridge, so processes
// started in it have their own address and port space, and the links
// between hosts can be cut (both ways or one way, for some ports or all)
// with iptables rules inside the namespaces. Processes in the test's own
// namespace reach every host through the bridge.
//
// It needs root, iproute2 and iptables; New skips the test without them.
// Everything it creates is removed at test cleanup.
package netns

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Network is a bridge and the hosts on it.
type Network struct {
	t      testing.TB
	bridge string
	prefix string // the /24's first three octets
	hosts  []*Host

	// forward is the root namespace's rule that lets bridged traffic pass.
	forward []string

	mu    sync.Mutex
	rules map[*Host][]string // iptables rule specs added in each host
}

// Host is one network namespace on the bridge.
type Host struct {
	n    *Network
	ns   string
	veth string
	// IP is the host's address.
	IP string
}

var seq atomic.Int32

// Available reports why the machine cannot make hosts, or "" if it can.
func Available() string {
	if runtime.GOOS != "linux" {
		return "network namespaces are Linux only"
	}
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " not found (Debian: iproute2, iptables)"
		}
	}
	return ""
}

// New makes n hosts on a fresh bridge.
func New(t testing.TB, n int) *Network {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip(why)
	}
	id := (os.Getpid()*7 + int(seq.Add(1))) % 200
	nw := &Network{t: t, bridge: fmt.Sprintf("tsb%d", id), prefix: fmt.Sprintf("10.213.%d", id+20), rules: map[*Host][]string{}}
	t.Cleanup(nw.remove)
	nw.run("ip", "link", "add", nw.bridge, "type", "bridge")
	nw.run("ip", "addr", "add", nw.BridgeIP()+"/24", "dev", nw.bridge)
	nw.run("ip", "link", "set", nw.bridge, "up")
	// Where bridged traffic goes through iptables (br_netfilter, as with
	// Docker, whose FORWARD policy is DROP), let the hosts talk.
	nw.forward = []string{"FORWARD", "-i", nw.bridge, "-o", nw.bridge, "-j", "ACCEPT"}
	nw.run("iptables", append([]string{"-I"}, nw.forward...)...)
	for i := 0; i < n; i++ {
		h := &Host{n: nw, ns: fmt.Sprintf("tsn%d-%d", id, i), veth: fmt.Sprintf("tsv%dh%d", id, i), IP: fmt.Sprintf("%s.%d", nw.prefix, 10+i)}
		nw.hosts = append(nw.hosts, h)
		peer := fmt.Sprintf("tsv%dn%d", id, i)
		nw.run("ip", "netns", "add", h.ns)
		nw.run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", peer)
		nw.run("ip", "link", "set", peer, "netns", h.ns)
		nw.run("ip", "link", "set", h.veth, "master", nw.bridge)
		nw.run("ip", "link", "set", h.veth, "up")
		h.exec("ip", "addr", "add", h.IP+"/24", "dev", peer)
		h.exec("ip", "link", "set", peer, "up")
		h.exec("ip", "link", "set", "lo", "up")
	}
	return nw
}

// Hosts are the network's hosts, in creation order.
func (n *Network) Hosts() []*Host { return n.hosts }

// BridgeIP is the address of the test's own namespace on the bridge: what
// hosts see as the source of connections from processes outside them.
func (n *Network) BridgeIP() string { return n.prefix + ".1" }

func (n *Network) run(bin string, args ...string) {
	n.t.Helper()
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		n.t.Fatalf("%s %s: %v: %s", bin, strings.Join(args, " "), err, out)
	}
}

func (h *Host) exec(bin string, args ...string) {
	h.n.t.Helper()
	h.n.run("ip", append([]string{"netns", "exec", h.ns, bin}, args...)...)
}

// Command runs bin inside the host ("ip netns exec" execs it, so the
// process started is bin itself and signals reach it).
func (h *Host) Command(bin string, args ...string) (string, []string) {
	return "ip", append([]string{"netns", "exec", h.ns, bin}, args...)
}

// Deafen drops, at h, every packet from the given source addresses (hosts'
// IPs, or BridgeIP for processes outside the hosts) on the given local or
// remote ports (none: every port). TCP through such a cut stalls both ways
// (the acknowledgements are lost too), as on a real network with one-way
// loss; what h sends still leaves.
func (h *Host) Deafen(from []string, ports ...int) {
	for _, src := range from {
		if len(ports) == 0 {
			h.addRule("-s", src, "-j", "DROP")
			continue
		}
		for _, p := range ports {
			h.addRule("-s", src, "-p", "tcp", "--dport", fmt.Sprint(p), "-j", "DROP")
			h.addRule("-s", src, "-p", "tcp", "--sport", fmt.Sprint(p), "-j", "DROP")
		}
	}
}

func (h *Host) addRule(spec ...string) {
	h.exec("iptables", append([]string{"-A", "INPUT"}, spec...)...)
	h.n.mu.Lock()
	h.n.rules[h] = append(h.n.rules[h], strings.Join(spec, " "))
	h.n.mu.Unlock()
}

// Others are the addresses of every other host and of the bridge.
func (h *Host) Others() []string {
	out := []string{h.n.BridgeIP()}
	for _, o := range h.n.hosts {
		if o != h {
			out = append(out, o.IP)
		}
	}
	return out
}

// Partition cuts a and b from each other both ways, on the given ports.
func (n *Network) Partition(a, b *Host, ports ...int) {
	a.Deafen([]string{b.IP}, ports...)
	b.Deafen([]string{a.IP}, ports...)
}

// Isolate cuts h from every other host and from the bridge, both ways.
func (n *Network) Isolate(h *Host, ports ...int) {
	h.Deafen(h.Others(), ports...)
	for _, o := range n.hosts {
		if o != h {
			o.Deafen([]string{h.IP}, ports...)
		}
	}
}

// Heal removes every cut.
func (n *Network) Heal() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	for h := range n.rules {
		h.exec("iptables", "-F", "INPUT")
	}
	clear(n.rules)
}

// remove deletes the namespaces (their veths go with them) and the bridge.
// Processes still running in a namespace keep it alive until they exit;
// the test's own cleanup stops them.
func (n *Network) remove() {
	for _, h := range n.hosts {
		_ = exec.Command("ip", "netns", "del", h.ns).Run()
		_ = exec.Command("ip", "link", "del", h.veth).Run()
	}
	_ = exec.Command("ip", "link", "del", n.bridge).Run()
	if n.forward != nil {
		_ = exec.Command("iptables", append([]string{"-D"}, n.forward...)...).Run()
	}
}
