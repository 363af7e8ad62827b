package integration

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// collector keeps what one clientv3 watch delivers.
type collector struct {
	mu     sync.Mutex
	events []*mvccpb.Event
	err    error
	done   chan struct{}
}

func collect(ctx context.Context, cli *clientv3.Client, prefix string, start int64) *collector {
	c := &collector{done: make(chan struct{})}
	wch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(start))
	go func() {
		defer close(c.done)
		for wr := range wch {
			c.mu.Lock()
			if err := wr.Err(); err != nil {
				c.err = err
				c.mu.Unlock()
				return
			}
			c.events = append(c.events, wr.Events...)
			c.mu.Unlock()
		}
	}()
	return c
}

// waitFor waits until the collector holds an event at or above rev.
func (c *collector) waitFor(t *testing.T, rev int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		n, err := len(c.events), c.err
		reached := n > 0 && c.events[n-1].Kv.ModRevision >= rev
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("watch failed: %v", err)
		}
		if reached {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("watch did not reach revision %d within %v", rev, within)
}

// checkAgainstAcks: events are in strictly increasing revision order (no
// duplicate), and every acknowledged write is among them with its value.
// Writes whose outcome the client never learned may appear too.
func (c *collector) checkAgainstAcks(t *testing.T, acks []ack) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	byRev := map[int64]*mvccpb.Event{}
	var last int64
	for _, ev := range c.events {
		if ev.Kv.ModRevision <= last {
			t.Fatalf("event at revision %d after %d: duplicate or out of order", ev.Kv.ModRevision, last)
		}
		last = ev.Kv.ModRevision
		byRev[last] = ev
	}
	for _, a := range acks {
		ev := byRev[a.rev]
		if ev == nil || string(ev.Kv.Key) != a.key || string(ev.Kv.Value) != a.value {
			t.Fatalf("acknowledged write %+v missing from the watch (got %v)", a, ev)
		}
	}
}

func lastAck(acks []ack) int64 {
	var r int64
	for _, a := range acks {
		r = max(r, a.rev)
	}
	return r
}

// TestWatchAcrossLeaderChange keeps a watch open while the data shard's
// leader is stopped and restarted under write load: the watch sees every
// acknowledged write once, in order.
func TestWatchAcrossLeaderChange(t *testing.T) {
	if testing.Short() {
		t.Skip("failover: not in -short")
	}
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	start := mustPut(t, cli, "/w-start", "x").Header.Revision
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	col := collect(ctx, cli, "/w/", start)
	load := startWriters(cli, 3)
	cycleLeader(t, c, load)
	acks := load.finish()
	col.waitFor(t, lastAck(acks), 30*time.Second)
	col.checkAgainstAcks(t, acks)
}

// TestWatchAcrossWatcherRestart stops the watcher process while watches are
// open and writes continue, then starts it again: clients see their stream
// end and resume from their last revision, and nothing is lost or repeated.
func TestWatchAcrossWatcherRestart(t *testing.T) {
	c := testcluster.New(t, 1)
	cli := c.Client(t)
	start := mustPut(t, cli, "/w-start", "x").Header.Revision
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	col := collect(ctx, cli, "/w/", start)
	load := startWriters(cli, 2)
	load.waitMore(t, 100, 20*time.Second)
	load.mu.Lock()
	reached := lastAck(load.acks)
	load.mu.Unlock()
	col.waitFor(t, reached, 10*time.Second)
	c.StopWatcher()
	load.waitMore(t, 100, 20*time.Second) // writes go on without a watcher
	c.StartWatcher()
	load.waitMore(t, 50, 20*time.Second)
	acks := load.finish()
	col.waitFor(t, lastAck(acks), 30*time.Second)
	col.checkAgainstAcks(t, acks)
}

// TestWatchRequireLeader: with most stores down the data shard has no
// leader; a require-leader watch is then refused, and an open one ends,
// with etcd's no-leader error (clientv3.WithRequireLeader).
func TestWatchRequireLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores: not in -short")
	}
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	mustPut(t, cli, "/rl/k", "v")
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer cancel()
	open := cli.Watch(ctx, "/rl/k")
	mustPut(t, cli, "/rl/k", "v2")
	recvEvents(t, open, 1)
	c.StopReplica(0)
	c.StopReplica(1)
	select {
	case wr, ok := <-open:
		if !ok || !errors.Is(wr.Err(), rpctypes.ErrNoLeader) {
			t.Fatalf("open watch: %+v (open %v), err %v; want the no-leader error", wr, ok, wr.Err())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("open require-leader watch did not end without a leader")
	}
	wctx, wcancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), 20*time.Second)
	defer wcancel()
	wr, ok := <-cli.Watch(wctx, "/rl/k")
	if !ok || !errors.Is(wr.Err(), rpctypes.ErrNoLeader) {
		t.Fatalf("new watch: %+v (open %v), err %v; want the no-leader error", wr, ok, wr.Err())
	}
}
