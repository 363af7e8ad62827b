package integration

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// A store that hands off before it stops leaves its shards led by others
// at once (no election timeout to wait out), and the writes flowing through
// it meanwhile all succeed: those in flight finish first, later ones go to
// the next leader.
func TestHandOffMovesLeadership(t *testing.T) {
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	if _, err := cli.Put(ctxT(t), "/h", "1"); err != nil {
		t.Fatal(err)
	}
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		ok, errs atomic.Int64
		firstErr atomic.Value
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := cli.Put(ctx, fmt.Sprintf("/h/%d", w), fmt.Sprint(i))
				cancel()
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	i := c.LeaderIndex(replica.FirstDataShardID)
	r := c.Replica(i)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	r.HandOff(ctx)
	for _, shard := range []uint64{replica.MetaShardID, replica.FirstDataShardID} {
		if l := r.LeaderOf(shard); l == 0 || l == r.StoreID() {
			t.Fatalf("shard %d: leader %d after the hand-off of store %d", shard, l, r.StoreID())
		}
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Errorf("hand-off took %s", d)
	}
	c.StopReplica(i)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := errs.Load(); n > 0 {
		t.Fatalf("%d of %d writes failed across the hand-off and the stop (first: %v)", n, n+ok.Load(), firstErr.Load())
	}
	t.Logf("%d writes across the hand-off and the stop, none failed", ok.Load())
}
