package testcluster

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/lni/dragonboat/v4/config"
	chantransport "github.com/lni/dragonboat/v4/plugin/chan"
	"github.com/lni/dragonboat/v4/raftio"
	pb "github.com/lni/dragonboat/v4/raftpb"

	"github.com/tessera-kv/tessera/pkg/rpcconn"
)

// Traffic selects which links a fault applies to: Raft messages between
// stores, internal gRPC calls (gateway, watcher and replicas to replicas
// and watchers), or both.
type Traffic int

const (
	Raft Traffic = 1 << iota
	API
	All = Raft | API
)

// Net is the network between an in-process cluster's nodes. Every Raft
// message and every internal gRPC connection goes through it, so a test can
// cut a link in one direction or both, delay it, or isolate a node, and heal
// it again. Nodes are named ("store1", "watcher", "gateway"); addresses are
// mapped to names as nodes register.
//
// A cut Raft link loses messages (as a blackholed network does); a cut gRPC
// link holds bytes until it heals or the connection is closed (as TCP
// retransmits into a blackhole), so callers see timeouts, not errors.
type Net struct {
	mu     sync.Mutex
	change *sync.Cond // broadcast whenever a rule changes or a conn closes
	names  map[string]string
	rules  map[link]rule
}

type link struct {
	from, to string
	t        Traffic
}

type rule struct {
	cut   bool
	delay time.Duration
}

// NewNet returns a network with no faults.
func NewNet() *Net {
	n := &Net{names: map[string]string{}, rules: map[link]rule{}}
	n.change = sync.NewCond(&n.mu)
	return n
}

// Register names the node listening at addr.
func (n *Net) Register(addr, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.names[addr] = name
}

func (n *Net) set(from, to string, t Traffic, f func(*rule)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range []Traffic{Raft, API} {
		if t&k == 0 {
			continue
		}
		l := link{from, to, k}
		r := n.rules[l]
		f(&r)
		if r == (rule{}) {
			delete(n.rules, l)
		} else {
			n.rules[l] = r
		}
	}
	n.change.Broadcast()
}

// Cut loses (Raft) or holds (gRPC) everything sent from one node to
// another; the other direction is untouched.
func (n *Net) Cut(from, to string, t Traffic) { n.set(from, to, t, func(r *rule) { r.cut = true }) }

// Partition cuts both directions between a and b.
func (n *Net) Partition(a, b string, t Traffic) {
	n.Cut(a, b, t)
	n.Cut(b, a, t)
}

// Delay holds everything sent from one node to another for d first.
func (n *Net) Delay(from, to string, t Traffic, d time.Duration) {
	n.set(from, to, t, func(r *rule) { r.delay = d })
}

// Heal removes every fault.
func (n *Net) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.rules)
	n.change.Broadcast()
}

// rule returns the fault on the link from → toAddr.
func (n *Net) rule(from, toAddr string, t Traffic) rule {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rules[link{from, n.names[toAddr], t}]
}

// waitOpen blocks while the link is cut, until it heals or done reports
// true (checked on every change); it returns the link's delay.
func (n *Net) waitOpen(from, to string, done func() bool) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		r := n.rules[link{from, to, API}]
		if !r.cut || done() {
			return r.delay
		}
		n.change.Wait()
	}
}

// RaftTransport is the Raft transport of the named store: dragonboat's
// in-process channel transport, with this network's faults applied to
// every message batch and snapshot chunk the store sends.
func (n *Net) RaftTransport(name string) config.TransportFactory {
	return &raftFactory{n: n, from: name}
}

type raftFactory struct {
	n    *Net
	from string
}

func (f *raftFactory) Create(cfg config.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return &raftTransport{ITransport: chantransport.NewChanTransport(cfg, h, ch), n: f.n, from: f.from}
}

func (f *raftFactory) Validate(addr string) bool {
	_, _, err := net.SplitHostPort(addr)
	return err == nil
}

type raftTransport struct {
	raftio.ITransport
	n    *Net
	from string
}

func (t *raftTransport) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	c, err := t.ITransport.GetConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &raftConn{IConnection: c, t: t, target: target}, nil
}

func (t *raftTransport) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	c, err := t.ITransport.GetSnapshotConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &snapshotConn{ISnapshotConnection: c, t: t, target: target}, nil
}

type raftConn struct {
	raftio.IConnection
	t      *raftTransport
	target string
}

func (c *raftConn) SendMessageBatch(b pb.MessageBatch) error {
	r := c.t.n.rule(c.t.from, c.target, Raft)
	if r.cut {
		return nil // lost on the way
	}
	time.Sleep(r.delay)
	return c.IConnection.SendMessageBatch(b)
}

type snapshotConn struct {
	raftio.ISnapshotConnection
	t      *raftTransport
	target string
}

var errCut = errors.New("testcluster: link cut")

func (c *snapshotConn) SendChunk(ch pb.Chunk) error {
	r := c.t.n.rule(c.t.from, c.target, Raft)
	if r.cut {
		return errCut // the snapshot fails and is sent again later
	}
	time.Sleep(r.delay)
	return c.ISnapshotConnection.SendChunk(ch)
}

// Dialer is how the named node opens gRPC connections.
func (n *Net) Dialer(from string) rpcconn.Dialer {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		n.mu.Lock()
		to := n.names[addr]
		n.mu.Unlock()
		// A connection attempt into a cut link hangs, as a SYN into a
		// blackhole does, until the caller gives up.
		stop := context.AfterFunc(ctx, func() {
			n.mu.Lock()
			n.change.Broadcast()
			n.mu.Unlock()
		})
		n.waitOpen(from, to, func() bool { return ctx.Err() != nil })
		stop()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &faultConn{Conn: c, n: n, from: from, to: to}, nil
	}
}

// faultConn applies the link's faults to a gRPC connection: writes wait
// while from → to is cut, reads are held while to → from is cut.
type faultConn struct {
	net.Conn
	n        *Net
	from, to string

	closeOnce sync.Once
	closed    bool // guarded by n.mu
}

func (c *faultConn) isClosed() bool { return c.closed }

func (c *faultConn) Write(p []byte) (int, error) {
	if d := c.n.waitOpen(c.from, c.to, c.isClosed); d > 0 {
		time.Sleep(d)
	}
	return c.Conn.Write(p)
}

func (c *faultConn) Read(p []byte) (int, error) {
	k, err := c.Conn.Read(p)
	if d := c.n.waitOpen(c.to, c.from, c.isClosed); d > 0 {
		time.Sleep(d)
	}
	c.n.mu.Lock()
	closed := c.closed
	c.n.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	return k, err
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() {
		c.n.mu.Lock()
		c.closed = true
		c.n.change.Broadcast()
		c.n.mu.Unlock()
	})
	return c.Conn.Close()
}
