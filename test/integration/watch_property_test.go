package integration

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/services/watcher"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// op is one acknowledged write and the events it made (in etcd's order).
type op struct {
	rev    int64
	events []*mvccpb.Event // Kv holds key and value (puts) or key (deletes)
}

// history replays acknowledged writes in revision order into the events
// etcd would report for them, with full KeyValues and prev_kv.
func history(ops []op) []*mvccpb.Event {
	sort.Slice(ops, func(i, j int) bool { return ops[i].rev < ops[j].rev })
	state := map[string]*mvccpb.KeyValue{}
	var out []*mvccpb.Event
	for _, o := range ops {
		for _, ev := range o.events {
			k := string(ev.Kv.Key)
			prev := state[k]
			switch ev.Type {
			case mvccpb.PUT:
				kv := &mvccpb.KeyValue{Key: ev.Kv.Key, Value: ev.Kv.Value, ModRevision: o.rev, CreateRevision: o.rev, Version: 1}
				if prev != nil {
					kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
				}
				state[k] = kv
				out = append(out, &mvccpb.Event{Type: mvccpb.PUT, Kv: kv, PrevKv: prev})
			case mvccpb.DELETE:
				delete(state, k)
				out = append(out, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: ev.Kv.Key, ModRevision: o.rev}, PrevKv: prev})
			}
		}
	}
	return out
}

// watchRecord is what one watch received.
type watchRecord struct {
	start    int64
	key, end string // end "" = single key
	prevKV   bool
	events   []*mvccpb.Event
	// progress revisions, each with how many events had arrived before it.
	progress []progressMark
	split    bool // a revision's events came in two responses
	err      error
}

type progressMark struct {
	rev    int64
	events int
}

func (w *watchRecord) contains(k []byte) bool {
	if w.end == "" {
		return string(k) == w.key
	}
	return bytes.Compare(k, []byte(w.key)) >= 0 && bytes.Compare(k, []byte(w.end)) < 0
}

// TestWatchProperties writes concurrently (puts, deletes, range deletes)
// while watches start at random revisions (historical, current, future) over
// random ranges, and checks each watch against the history rebuilt from the
// acknowledged writes: complete, ordered, no duplicates, every revision's
// events in one response, prev_kv right, and no progress notification ahead
// of the events delivered. The watcher keeps only 40 revisions in memory,
// so early starts are served from the replicas' change logs.
func TestWatchProperties(t *testing.T) {
	c := testcluster.New(t, 1, testcluster.Options{Cache: watcher.CacheConfig{HistoryRevisions: 40, ProgressInterval: 50 * time.Millisecond}})
	cli := c.Client(t)
	base := mustPut(t, cli, "/prop-start", "x").Header.Revision
	rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
	t.Logf("seed revision %d", base)

	const writers, perWriter, keys = 4, 120, 8
	var (
		mu      sync.Mutex
		ops     []op
		lastRev = base
	)
	stopWatches := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(w) + time.Now().UnixNano()))
			for i := 0; i < perWriter; i++ {
				k := fmt.Sprintf("/prop/k%d", r.Intn(keys))
				var o op
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				switch p := r.Intn(10); {
				case p < 7:
					v := fmt.Sprintf("w%d-%d", w, i)
					resp, err := cli.Put(ctx, k, v)
					if err != nil {
						t.Errorf("put: %v", err)
						cancel()
						return
					}
					o = op{rev: resp.Header.Revision, events: []*mvccpb.Event{{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(k), Value: []byte(v)}}}}
				default:
					end := ""
					if p == 9 {
						k, end = "/prop/k2", "/prop/k5"
					}
					opts := []clientv3.OpOption{clientv3.WithPrevKV()}
					if end != "" {
						opts = append(opts, clientv3.WithRange(end))
					}
					resp, err := cli.Delete(ctx, k, opts...)
					if err != nil {
						t.Errorf("delete: %v", err)
						cancel()
						return
					}
					o = op{rev: resp.Header.Revision}
					for _, kv := range resp.PrevKvs {
						o.events = append(o.events, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key}})
					}
				}
				cancel()
				mu.Lock()
				ops = append(ops, o)
				lastRev = max(lastRev, o.rev)
				mu.Unlock()
			}
		}(w)
	}

	var (
		recMu   sync.Mutex
		records []*watchRecord
		wwg     sync.WaitGroup
	)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	ranges := [][2]string{{"/prop/", "/prop0"}, {"/prop/k3", ""}, {"/prop/k1", "/prop/k4"}, {"/prop/k6", "/prop/k8"}}
	startWatch := func(start int64) {
		rg := ranges[rnd.Intn(len(ranges))]
		rec := &watchRecord{start: start, key: rg[0], end: rg[1], prevKV: rnd.Intn(2) == 0}
		opts := []clientv3.OpOption{clientv3.WithRev(start), clientv3.WithProgressNotify()}
		if rec.end != "" {
			opts = append(opts, clientv3.WithRange(rec.end))
		}
		if rec.prevKV {
			opts = append(opts, clientv3.WithPrevKV())
		}
		wch := cli.Watch(clientv3.WithRequireLeader(wctx), rec.key, opts...)
		recMu.Lock()
		records = append(records, rec)
		recMu.Unlock()
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for wr := range wch {
				if err := wr.Err(); err != nil {
					rec.err = err
					return
				}
				if wr.IsProgressNotify() {
					rec.progress = append(rec.progress, progressMark{wr.Header.Revision, len(rec.events)})
					continue
				}
				if n := len(rec.events); n > 0 && len(wr.Events) > 0 && rec.events[n-1].Kv.ModRevision == wr.Events[0].Kv.ModRevision {
					rec.split = true
				}
				rec.events = append(rec.events, wr.Events...)
			}
		}()
	}
	// Watches start while the writes run: at random past revisions, at the
	// current one, and a little in the future.
	starterDone := make(chan struct{})
	go func() {
		defer close(starterDone)
		for i := 0; i < 60; i++ {
			select {
			case <-stopWatches:
				return
			case <-time.After(5 * time.Millisecond):
			}
			mu.Lock()
			cur := lastRev
			mu.Unlock()
			startWatch(base + rnd.Int63n(cur-base+5))
		}
	}()
	wg.Wait()
	close(stopWatches)
	<-starterDone
	if t.Failed() {
		return
	}
	want := history(ops)
	mu.Lock()
	final := lastRev
	mu.Unlock()
	// After the writes: watches from the very start (only the replicas'
	// change logs have it), from within the watcher's memory, from now.
	for _, start := range []int64{base, base + 1, final - 30, final - 5, final, final + 1} {
		startWatch(start)
	}

	// Wait until every watch has what it should (bounded), then compare.
	deadline := time.Now().Add(30 * time.Second)
	expected := func(rec *watchRecord) []*mvccpb.Event {
		var out []*mvccpb.Event
		for _, ev := range want {
			if ev.Kv.ModRevision >= rec.start && rec.contains(ev.Kv.Key) {
				out = append(out, ev)
			}
		}
		return out
	}
	for {
		done := true
		recMu.Lock()
		for _, rec := range records {
			if rec.err == nil && len(rec.events) < len(expected(rec)) {
				done = false
			}
		}
		recMu.Unlock()
		if done || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Let late duplicates, if any, arrive before judging.
	time.Sleep(200 * time.Millisecond)
	wcancel()
	wwg.Wait()

	if len(records) < 10 {
		t.Fatalf("only %d watches started", len(records))
	}
	for i, rec := range records {
		if rec.err != nil {
			t.Errorf("watch %d (from %d on %q-%q): %v", i, rec.start, rec.key, rec.end, rec.err)
			continue
		}
		exp := expected(rec)
		if err := sameEvents(rec.events, exp, rec.prevKV); err != nil {
			t.Errorf("watch %d (from %d on [%q, %q) prev_kv %v): %v", i, rec.start, rec.key, rec.end, rec.prevKV, err)
		}
		if rec.split {
			t.Errorf("watch %d: a revision's events were split across responses", i)
		}
		for _, p := range rec.progress {
			due := 0
			for _, ev := range exp {
				if ev.Kv.ModRevision <= p.rev {
					due++
				}
			}
			if due > p.events {
				t.Errorf("watch %d: progress at %d after %d events, but %d events are at or below it", i, p.rev, p.events, due)
			}
		}
	}
	t.Logf("%d writes up to revision %d, %d watches, %d events expected in total", len(ops), final, len(records), len(want))
}

func sameEvents(got, want []*mvccpb.Event, prevKV bool) error {
	if len(got) != len(want) {
		return fmt.Errorf("got %d events, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Type != w.Type || !bytes.Equal(g.Kv.Key, w.Kv.Key) || !bytes.Equal(g.Kv.Value, w.Kv.Value) ||
			g.Kv.ModRevision != w.Kv.ModRevision || g.Kv.CreateRevision != w.Kv.CreateRevision || g.Kv.Version != w.Kv.Version {
			return fmt.Errorf("event %d: got %v, want %v", i, g, w)
		}
		switch {
		case !prevKV && g.PrevKv != nil:
			return fmt.Errorf("event %d: prev_kv sent unasked", i)
		case prevKV && (g.PrevKv == nil) != (w.PrevKv == nil):
			return fmt.Errorf("event %d: prev_kv %v, want %v", i, g.PrevKv, w.PrevKv)
		case prevKV && w.PrevKv != nil && (!bytes.Equal(g.PrevKv.Value, w.PrevKv.Value) || g.PrevKv.ModRevision != w.PrevKv.ModRevision):
			return fmt.Errorf("event %d: prev_kv %v, want %v", i, g.PrevKv, w.PrevKv)
		}
	}
	return nil
}
