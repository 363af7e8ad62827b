package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestWatchLatencyWhileAReplicaIsCutOff cuts each store in turn from the
// other stores' Raft traffic, both ways and one way (it hears nothing),
// while the watcher can still reach it, and checks that a watch created
// during the cut sees every acknowledged put within 5 s. The watcher prefers
// followers for its change feeds; a feed from a replica that no longer
// hears its leader must not stall the watches.
func TestWatchLatencyWhileAReplicaIsCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores, six cuts: not in -short")
	}
	c := testcluster.New(t, 3)
	cli := c.Client(t)
	for i := 0; i < c.Size(); i++ {
		for _, oneWay := range []bool{false, true} {
			name := fmt.Sprintf("%s/both-ways", c.StoreName(i))
			if oneWay {
				name = fmt.Sprintf("%s/hears-nothing", c.StoreName(i))
			}
			t.Run(name, func(t *testing.T) {
				for j := 0; j < c.Size(); j++ {
					if j == i {
						continue
					}
					if oneWay {
						c.Net().Cut(c.StoreName(j), c.StoreName(i), testcluster.Raft)
					} else {
						c.Net().Partition(c.StoreName(i), c.StoreName(j), testcluster.Raft)
					}
				}
				defer func() {
					c.Net().Heal()
					c.WaitReady()
				}()
				// The cut has taken hold (a leader cut off steps down after
				// an election timeout) before the watch is created.
				time.Sleep(time.Second)
				lat := putToEventLatency(t, cli, fmt.Sprintf("/cut/%d/%v/", i, oneWay), 5*time.Second)
				t.Logf("%d puts, put→event latency p50 %s, max %s", len(lat), lat[len(lat)/2], lat[len(lat)-1])
				if worst := lat[len(lat)-1]; worst > 5*time.Second {
					t.Fatalf("a watch waited %s for an acknowledged put (limit 5s)", worst)
				}
			})
		}
	}
}

// putToEventLatency watches prefix from now, puts a key every 100 ms for
// dur, and returns the sorted time from each put's acknowledgement to its
// event (a put never seen counts as 10 s). Puts that fail (a leader change)
// are retried and not measured.
func putToEventLatency(t *testing.T, cli *clientv3.Client, prefix string, dur time.Duration) []time.Duration {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	seen := map[int64]time.Time{}
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	created := false
	for !created {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				t.Fatalf("watch create: %v", resp.Err())
			}
			created = resp.Created
		case <-time.After(10 * time.Second):
			t.Fatal("watch not created in 10s")
		}
	}
	go func() {
		for resp := range wch {
			now := time.Now()
			mu.Lock()
			for _, ev := range resp.Events {
				seen[ev.Kv.ModRevision] = now
			}
			mu.Unlock()
		}
	}()
	acked := map[int64]time.Time{}
	for n, stop := 0, time.Now().Add(dur); time.Now().Before(stop); n++ {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cli.Put(pctx, fmt.Sprintf("%sk%d", prefix, n), "v")
		pcancel()
		if err == nil {
			acked[resp.Header.Revision] = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(acked) == 0 {
		t.Fatal("no put succeeded during the cut")
	}
	// Wait for the stragglers, up to the bound that fails the test anyway.
	for deadline := time.Now().Add(6 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		all := true
		for rev := range acked {
			if _, ok := seen[rev]; !ok {
				all = false
				break
			}
		}
		mu.Unlock()
		if all {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var lat []time.Duration
	for rev, at := range acked {
		if got, ok := seen[rev]; ok {
			lat = append(lat, max(got.Sub(at), 0))
		} else {
			lat = append(lat, 10*time.Second)
		}
	}
	slices.Sort(lat)
	return lat
}
