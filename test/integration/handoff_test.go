package integration

import (
	"context"
	"testing"
	"time"

	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// A store that hands off before it stops leaves its shards led by others
// at once: no election timeout to wait out.
func TestHandOffMovesLeadership(t *testing.T) {
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	if _, err := cli.Put(ctxT(t), "/h", "1"); err != nil {
		t.Fatal(err)
	}
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
	if _, err := cli.Put(ctxT(t), "/h", "2"); err != nil {
		t.Fatalf("put after the old leader stopped: %v", err)
	}
}
