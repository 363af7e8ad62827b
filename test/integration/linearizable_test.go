package integration

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/services/replica"
	hist "github.com/tessera-kv/tessera/test/history"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// historyDuration is how long the history tests drive load:
// NEMESIS_DURATION overrides the short default CI runs.
func historyDuration(t *testing.T) time.Duration {
	if v := os.Getenv("NEMESIS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("NEMESIS_DURATION: %v", err)
		}
		return d
	}
	return 4 * time.Second
}

// TestHistoryLinearizableAcrossLeaderRestart drives gets, puts, CAS,
// deletes and prefix ranges from five clients against three stores while
// the data shard's leader is stopped and started again, with a watch over
// every key, then restarts every store and reads everything once more. The
// whole history must be linearizable under etcd's model (porcupine), and
// the watch must have delivered every acknowledged write once, in order.
func TestHistoryLinearizableAcrossLeaderRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores and a restart: not in -short")
	}
	c := testcluster.New(t, 3)
	admin := c.Client(t)
	g, err := admin.Get(ctxT(t), "/lin/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	from := g.Header.Revision + 1
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wlog := hist.WatchLog{Prefix: "/lin/", From: from}
	var wmu sync.Mutex
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for resp := range admin.Watch(wctx, "/lin/", clientv3.WithPrefix(), clientv3.WithRev(from)) {
			wmu.Lock()
			for _, ev := range resp.Events {
				wlog.Events = append(wlog.Events, hist.Event{Rev: ev.Kv.ModRevision, Key: string(ev.Kv.Key),
					Deleted: ev.Type == clientv3.EventTypeDelete, Value: string(ev.Kv.Value)})
			}
			if resp.IsProgressNotify() {
				wlog.Progress = append(wlog.Progress, resp.Header.Revision)
				wlog.EventsBefore = append(wlog.EventsBefore, len(wlog.Events))
			}
			wmu.Unlock()
		}
	}()

	rec := hist.NewRecorder()
	keys := []string{"/lin/a", "/lin/b", "/lin/c"}
	dur := historyDuration(t)
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	for client := 0; client < 5; client++ {
		cli := c.Client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(client)))
			for n := 0; time.Now().Before(stop); n++ {
				k := keys[rng.Intn(len(keys))]
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				switch r := rng.Intn(10); {
				case r < 3:
					rec.Do(ctx, client, cli, hist.Input{Kind: hist.Put, Key: k, Value: fmt.Sprintf("c%d-%d", client, n)})
				case r < 5:
					rec.Do(ctx, client, cli, hist.Input{Kind: hist.Get, Key: k})
				case r < 6:
					rec.Do(ctx, client, cli, hist.Input{Kind: hist.Range, Key: "/lin/"})
				case r < 7:
					rec.Do(ctx, client, cli, hist.Input{Kind: hist.Delete, Key: k})
				default:
					// kube-apiserver's update: read, then CAS on what was read.
					if o, err := rec.Do(ctx, client, cli, hist.Input{Kind: hist.Get, Key: k}); err == nil {
						mod := int64(0)
						if o.Found {
							mod = o.ModRev
						}
						rec.Do(ctx, client, cli, hist.Input{Kind: hist.CAS, Key: k, ExpectMod: mod, Value: fmt.Sprintf("c%d-%d", client, n)})
					}
				}
				cancel()
			}
		}()
	}
	// The fault: the data shard's leader goes away mid-load and comes back.
	time.Sleep(dur / 3)
	leader := c.LeaderIndex(replica.FirstDataShardID)
	c.StopReplica(leader)
	time.Sleep(dur / 3)
	c.StartReplica(leader)
	wg.Wait()

	// Every store restarts; everything acknowledged must still be read.
	for i := 0; i < c.Size(); i++ {
		c.StopReplica(i)
	}
	for i := 0; i < c.Size(); i++ {
		c.StartReplica(i)
	}
	c.WaitReady()
	final := c.Client(t)
	if _, err := rec.Do(ctxT(t), 9, final, hist.Input{Kind: hist.Range, Key: "/lin/"}); err != nil {
		t.Fatalf("range after restarting every store: %v", err)
	}

	ops := rec.Operations()
	res := hist.CheckKV(ops, time.Minute)
	t.Logf("history: %d operations from 5 clients over %s, the data-shard leader (store %d) stopped for %s, then every store restarted: %s",
		len(ops), dur, leader+1, dur/3, res)
	if res != porcupine.Ok {
		t.Fatalf("the history is not linearizable (%s)", res)
	}

	// The watch: every acknowledged write once, in order, up to the last.
	var acked, maybe []hist.Write
	var last int64
	for _, op := range ops {
		in, out := op.Input.(hist.Input), op.Output.(hist.Output)
		w := hist.Write{Key: in.Key, Value: in.Value, Rev: out.Rev}
		switch {
		case out.Unknown:
			w.Rev, w.Deleted = 0, in.Kind == hist.Delete
			maybe = append(maybe, w)
		case in.Kind == hist.Put, in.Kind == hist.CAS && out.Succeeded:
			acked = append(acked, w)
		case in.Kind == hist.Delete && out.Deleted == 1:
			w.Deleted, w.Value = true, ""
			acked = append(acked, w)
		default:
			continue
		}
		last = max(last, w.Rev)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		wmu.Lock()
		var seen int64
		if n := len(wlog.Events); n > 0 {
			seen = wlog.Events[n-1].Rev
		}
		wmu.Unlock()
		if seen >= last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch reached revision %d, the last acknowledged write is at %d", seen, last)
		}
	}
	wcancel()
	<-wdone
	if errs := hist.CheckWatch(wlog, acked, maybe); len(errs) > 0 {
		t.Fatalf("watch: %d problems, first %v", len(errs), errs[0])
	}
	t.Logf("watch: %d events checked against %d acknowledged writes (%d with unknown outcome)", len(wlog.Events), len(acked), len(maybe))
}
