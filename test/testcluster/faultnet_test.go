package testcluster

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// echo serves on loopback, writing back what it reads, until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

// roundTrip writes a byte and reads it back. It reports whether that took
// less than within; if not, the channel says when the byte makes it.
func roundTrip(c net.Conn, within time.Duration) (bool, <-chan bool) {
	got := make(chan bool, 1)
	go func() {
		buf := make([]byte, 1)
		_, werr := c.Write([]byte{'x'})
		_, rerr := io.ReadFull(c, buf)
		got <- werr == nil && rerr == nil
	}()
	select {
	case ok := <-got:
		return ok, nil
	case <-time.After(within):
		return false, got
	}
}

func quick(c net.Conn) bool {
	ok, _ := roundTrip(c, time.Second)
	return ok
}

// The gRPC side of the fault network: a cut holds bytes until it heals (in
// either direction), a delay slows every write, and a dial into a cut link
// waits for the caller's deadline.
func TestNetCutsHoldsAndDelays(t *testing.T) {
	n := NewNet()
	addr := echo(t)
	n.Register(addr, "store1")
	dial := n.Dialer("gateway")
	c, err := dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !quick(c) {
		t.Fatal("no round trip on a healthy link")
	}

	for _, cut := range []struct{ from, to string }{{"gateway", "store1"}, {"store1", "gateway"}} {
		n.Cut(cut.from, cut.to, API)
		ok, later := roundTrip(c, 200*time.Millisecond)
		if ok {
			t.Fatalf("a round trip through a cut %s → %s", cut.from, cut.to)
		}
		n.Heal()
		// What the cut held arrives once it heals.
		select {
		case ok := <-later:
			if !ok {
				t.Fatalf("the held round trip failed after healing %s → %s", cut.from, cut.to)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("the held round trip did not finish after healing %s → %s", cut.from, cut.to)
		}
		if !quick(c) {
			t.Fatalf("no round trip after healing %s → %s", cut.from, cut.to)
		}
	}

	// A Raft-only cut leaves gRPC alone.
	n.Partition("gateway", "store1", Raft)
	if !quick(c) {
		t.Fatal("a Raft cut stopped gRPC")
	}
	n.Heal()

	n.Delay("gateway", "store1", API, 150*time.Millisecond)
	start := time.Now()
	if !quick(c) {
		t.Fatal("no round trip on a delayed link")
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("a round trip on a 150 ms link took %s", d)
	}
	n.Heal()

	n.Cut("gateway", "store1", API)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if c2, err := dial(ctx, addr); err == nil {
		c2.Close()
		t.Fatal("a dial into a cut link connected")
	}
}
