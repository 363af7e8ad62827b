package integration

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/services/replica"
	hist "github.com/tessera-kv/tessera/test/history"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// A nemesis breaks the cluster until stop, then heals it, and says what it
// did.
type nemesis func(c *testcluster.Cluster, rng *rand.Rand, stop time.Time) string

// TestNemesis runs etcd's workload (gets, puts, CAS, deletes, prefix ranges
// from five clients, and a watch over every key) against three stores while
// a nemesis kills, partitions or pauses them; then every store restarts and
// the history must be linearizable under etcd's model (porcupine), the watch
// must have delivered every acknowledged write once and in order, and
// every acknowledged write must be read back.
//
// "Paused" here is a store whose every link is held (in process, its
// goroutines cannot be stopped); test/e2e pauses real processes with SIGSTOP.
func TestNemesis(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores under faults: not in -short")
	}
	period := func(stop time.Time) time.Duration { return max(time.Until(stop)/4, time.Second) }
	cases := []struct {
		name string
		nem  nemesis
	}{
		{"restart-random-store", func(c *testcluster.Cluster, rng *rand.Rand, stop time.Time) string {
			var did []string
			for p := period(stop); time.Now().Add(p).Before(stop); {
				i := rng.Intn(c.Size())
				c.StopReplica(i)
				time.Sleep(p / 2)
				c.StartReplica(i)
				time.Sleep(p / 2)
				did = append(did, c.StoreName(i))
			}
			return "stopped and restarted " + strings.Join(did, ", ")
		}},
		{"partition-random-store", func(c *testcluster.Cluster, rng *rand.Rand, stop time.Time) string {
			return cutEach(c, rng, stop, period(stop), "isolated", c.Isolate)
		}},
		{"deafen-random-store", func(c *testcluster.Cluster, rng *rand.Rand, stop time.Time) string {
			return cutEach(c, rng, stop, period(stop), "deafened (hears nothing)", c.Deafen)
		}},
		{"partition-meta-leader", func(c *testcluster.Cluster, _ *rand.Rand, stop time.Time) string {
			return cutLeader(c, replica.MetaShardID, stop, period(stop), "meta")
		}},
		{"pause-data-leader", func(c *testcluster.Cluster, _ *rand.Rand, stop time.Time) string {
			// Held for twice the election timeout (500 ms here) at least.
			return cutLeader(c, replica.FirstDataShardID, stop, max(period(stop), 2*time.Second), "data")
		}},
		{"split-while-faulty", func(c *testcluster.Cluster, rng *rand.Rand, stop time.Time) string {
			// One data shard cut in three: the first split while a
			// random store is isolated (it applies the split once
			// healed), the second while one is stopped (it replays the
			// split from its log when it starts again).
			var did []string
			p := time.Until(stop) / 3
			for n, key := range []string{"/nem/k1", "/nem/k2"} {
				time.Sleep(p / 4)
				i := rng.Intn(c.Size())
				what := "isolated"
				if n == 0 {
					c.Isolate(i, testcluster.All)
				} else {
					what = "stopped"
					c.StopReplica(i)
				}
				// Past the load's end if need be: an attempt that went to
				// the cut-off store waits out its own timeout first.
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := c.SplitShard(ctx, key)
				cancel()
				time.Sleep(p / 4)
				if n == 0 {
					c.Net().Heal()
				} else {
					c.StartReplica(i)
				}
				if err != nil {
					did = append(did, fmt.Sprintf("split at %s failed (%s %s): %v", key, c.StoreName(i), what, err))
					continue
				}
				did = append(did, fmt.Sprintf("split at %s with %s %s", key, c.StoreName(i), what))
				time.Sleep(p / 2)
			}
			return strings.Join(did, "; ")
		}},
		{"rolling-restart", func(c *testcluster.Cluster, _ *rand.Rand, stop time.Time) string {
			p := time.Until(stop) / time.Duration(c.Size()+1)
			for i := 0; i < c.Size(); i++ {
				c.StopReplica(i)
				time.Sleep(p / 2)
				c.StartReplica(i)
				time.Sleep(p / 2)
			}
			c.StopWatcher()
			c.StartWatcher()
			return "restarted every store in turn, then the watcher"
		}},
	}
	// Two again with the workload's three keys in three shards, so its
	// prefix ranges and its watch cross them; and the partitions once more
	// on five stores, each shard on three of them (placement), so that
	// stores call leaders of shards they do not hold and the balancer
	// moves leaderships while the faults go on.
	for _, tc := range cases[:] {
		name := tc.name
		if name == "restart-random-store" || name == "partition-random-store" {
			tc.name = "sharded-" + name
			cases = append(cases, tc)
		}
		if name == "partition-random-store" {
			tc.name = "placed-" + name
			cases = append(cases, tc)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var opts testcluster.Options
			stores := 3
			if strings.HasPrefix(tc.name, "sharded-") || strings.HasPrefix(tc.name, "placed-") {
				opts.SplitKeys = []string{"/nem/k1", "/nem/k2"}
			}
			if strings.HasPrefix(tc.name, "placed-") {
				stores, opts.ReplicationFactor, opts.BalanceInterval = 5, 3, 300*time.Millisecond
			}
			c := testcluster.New(t, stores, opts)
			var clients []*clientv3.Client
			for range 5 {
				clients = append(clients, c.Client(t))
			}
			dur := hist.Duration(t, 5*time.Second)
			stop := time.Now().Add(dur)
			run := hist.Workload{Prefix: "/nem/", Keys: 3, Clients: clients, Watch: c.Client(t)}.Start(t, stop)
			did := tc.nem(c, rand.New(rand.NewSource(time.Now().UnixNano())), stop)
			c.Net().Heal()
			run.Wait()
			for i := 0; i < c.Size(); i++ {
				c.StopReplica(i)
			}
			for i := 0; i < c.Size(); i++ {
				c.StartReplica(i)
			}
			c.WaitReady()
			summary := run.Check(t, c.Client(t))
			t.Logf("%s of load; nemesis: %s; then every store restarted: %s", dur, did, summary)
		})
	}
}

// cutEach applies cut to a random store for each period until stop,
// healing between.
func cutEach(c *testcluster.Cluster, rng *rand.Rand, stop time.Time, p time.Duration, what string, cut func(int, testcluster.Traffic)) string {
	var did []string
	for time.Now().Add(p).Before(stop) {
		i := rng.Intn(c.Size())
		cut(i, testcluster.All)
		time.Sleep(p * 3 / 4)
		c.Net().Heal()
		time.Sleep(p / 4)
		did = append(did, c.StoreName(i))
	}
	return what + " " + strings.Join(did, ", ") + fmt.Sprintf(" for %s each", (p*3/4).Round(time.Millisecond))
}

// cutLeader isolates the shard's current leader for each period until stop.
func cutLeader(c *testcluster.Cluster, shardID uint64, stop time.Time, p time.Duration, shard string) string {
	var did []string
	for time.Now().Add(p).Before(stop) {
		i := c.LeaderIndex(shardID)
		if i < 0 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c.Isolate(i, testcluster.All)
		time.Sleep(p * 3 / 4)
		c.Net().Heal()
		time.Sleep(p / 4)
		did = append(did, c.StoreName(i))
	}
	return fmt.Sprintf("isolated the %s leader (%s) for %s each", shard, strings.Join(did, ", "), (p * 3 / 4).Round(time.Millisecond))
}
