package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tessera-kv/tessera/services/watcher"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// recvEvents reads from wch until n events arrived (or fails at the deadline).
func recvEvents(t *testing.T, wch clientv3.WatchChan, n int) []*clientv3.Event {
	t.Helper()
	var out []*clientv3.Event
	timeout := time.After(15 * time.Second)
	for len(out) < n {
		select {
		case wr, ok := <-wch:
			if !ok {
				t.Fatalf("watch channel closed after %d of %d events", len(out), n)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("watch error after %d of %d events: %v", len(out), n, err)
			}
			out = append(out, wr.Events...)
		case <-timeout:
			t.Fatalf("got %d of %d events", len(out), n)
		}
	}
	if len(out) > n {
		t.Fatalf("got %d events, want %d: %v", len(out), n, describe(out))
	}
	return out
}

// expectQuiet fails if an event arrives on wch within d.
func expectQuiet(t *testing.T, wch clientv3.WatchChan, d time.Duration) {
	t.Helper()
	select {
	case wr := <-wch:
		if len(wr.Events) > 0 || wr.Err() != nil {
			t.Fatalf("unexpected watch response: events %v err %v", describe(wr.Events), wr.Err())
		}
	case <-time.After(d):
	}
}

func describe(evs []*clientv3.Event) string {
	s := ""
	for _, ev := range evs {
		s += fmt.Sprintf("[%s %s@%d]", ev.Type, ev.Kv.Key, ev.Kv.ModRevision)
	}
	return s
}

func TestWatch(t *testing.T) {
	c := testcluster.New(t, 1, testcluster.Options{Cache: watcher.CacheConfig{ProgressInterval: 300 * time.Millisecond}})
	cli := c.Client(t)

	t.Run("from now sees only later writes", func(t *testing.T) {
		mustPut(t, cli, "/now/a", "before")
		wch := cli.Watch(ctxT(t), "/now/a")
		// The created response has arrived once the watch is registered.
		r := mustPut(t, cli, "/now/a", "after")
		evs := recvEvents(t, wch, 1)
		if string(evs[0].Kv.Value) != "after" || evs[0].Kv.ModRevision != r.Header.Revision || evs[0].Type != mvccpb.PUT {
			t.Fatalf("event %v, want put of after at %d", describe(evs), r.Header.Revision)
		}
		expectQuiet(t, wch, 200*time.Millisecond)
	})

	t.Run("headers name the gateway's cluster and member", func(t *testing.T) {
		wch := cli.Watch(ctxT(t), "/hdr/k")
		put := mustPut(t, cli, "/hdr/k", "v")
		select {
		case wr := <-wch:
			if wr.Header.ClusterId != put.Header.ClusterId || wr.Header.MemberId != put.Header.MemberId || wr.Header.ClusterId == 0 {
				t.Fatalf("watch header %+v, put header %+v", wr.Header, put.Header)
			}
			if wr.Header.Revision < put.Header.Revision {
				t.Fatalf("watch header revision %d below the event's %d", wr.Header.Revision, put.Header.Revision)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
	})

	t.Run("prefix with prev_kv and deletes", func(t *testing.T) {
		mustPut(t, cli, "/p/x", "1")
		wch := cli.Watch(ctxT(t), "/p/", clientv3.WithPrefix(), clientv3.WithPrevKV())
		mustPut(t, cli, "/p/x", "2")
		mustPut(t, cli, "/p/y", "1")
		mustPut(t, cli, "/q/other", "1")
		if _, err := cli.Delete(ctxT(t), "/p/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		evs := recvEvents(t, wch, 4)
		if evs[0].Type != mvccpb.PUT || string(evs[0].PrevKv.GetValue()) != "1" || string(evs[0].Kv.Value) != "2" {
			t.Fatalf("update event %v prev %v", describe(evs[:1]), evs[0].PrevKv)
		}
		if evs[1].PrevKv != nil || !evs[1].IsCreate() {
			t.Fatalf("create event has prev_kv %v", evs[1].PrevKv)
		}
		if evs[2].Type != mvccpb.DELETE || evs[3].Type != mvccpb.DELETE || evs[2].Kv.ModRevision != evs[3].Kv.ModRevision {
			t.Fatalf("delete events %v", describe(evs[2:]))
		}
		if string(evs[2].PrevKv.GetValue()) != "2" || string(evs[3].PrevKv.GetValue()) != "1" {
			t.Fatalf("delete prev_kvs %v %v", evs[2].PrevKv, evs[3].PrevKv)
		}
	})

	t.Run("no prev_kv unless asked", func(t *testing.T) {
		mustPut(t, cli, "/np/k", "1")
		wch := cli.Watch(ctxT(t), "/np/k")
		mustPut(t, cli, "/np/k", "2")
		if evs := recvEvents(t, wch, 1); evs[0].PrevKv != nil {
			t.Fatalf("prev_kv sent unasked: %v", evs[0].PrevKv)
		}
	})

	t.Run("filters", func(t *testing.T) {
		noPut := cli.Watch(ctxT(t), "/f/", clientv3.WithPrefix(), clientv3.WithFilterPut())
		noDel := cli.Watch(ctxT(t), "/f/", clientv3.WithPrefix(), clientv3.WithFilterDelete())
		mustPut(t, cli, "/f/a", "1")
		if _, err := cli.Delete(ctxT(t), "/f/a"); err != nil {
			t.Fatal(err)
		}
		if evs := recvEvents(t, noPut, 1); evs[0].Type != mvccpb.DELETE {
			t.Fatalf("NOPUT watch got %v", describe(evs))
		}
		if evs := recvEvents(t, noDel, 1); evs[0].Type != mvccpb.PUT {
			t.Fatalf("NODELETE watch got %v", describe(evs))
		}
	})

	t.Run("from a past revision, and a range", func(t *testing.T) {
		first := mustPut(t, cli, "/h/1", "a").Header.Revision
		mustPut(t, cli, "/h/2", "b")
		mustPut(t, cli, "/h/3", "c")
		mustPut(t, cli, "/h/4", "d")
		wch := cli.Watch(ctxT(t), "/h/2", clientv3.WithRange("/h/4"), clientv3.WithRev(first))
		evs := recvEvents(t, wch, 2)
		if string(evs[0].Kv.Key) != "/h/2" || string(evs[1].Kv.Key) != "/h/3" {
			t.Fatalf("got %v", describe(evs))
		}
		all := cli.Watch(ctxT(t), "/h/", clientv3.WithPrefix(), clientv3.WithRev(first+1))
		if evs := recvEvents(t, all, 3); evs[0].Kv.ModRevision != first+1 {
			t.Fatalf("from %d got %v", first+1, describe(evs))
		}
	})

	t.Run("future revision waits for it", func(t *testing.T) {
		cur := mustPut(t, cli, "/fut/k", "0").Header.Revision
		wch := cli.Watch(ctxT(t), "/fut/k", clientv3.WithRev(cur+2))
		mustPut(t, cli, "/fut/k", "1") // cur+1: not wanted
		r := mustPut(t, cli, "/fut/k", "2")
		evs := recvEvents(t, wch, 1)
		if evs[0].Kv.ModRevision != r.Header.Revision {
			t.Fatalf("got %v want revision %d", describe(evs), r.Header.Revision)
		}
	})

	t.Run("many watches on one stream, cancel one", func(t *testing.T) {
		ctx1, cancel1 := context.WithCancel(ctxT(t))
		w1 := cli.Watch(ctx1, "/m/k")
		w2 := cli.Watch(ctxT(t), "/m/k")
		w3 := cli.Watch(ctxT(t), "/m/", clientv3.WithPrefix())
		mustPut(t, cli, "/m/k", "1")
		recvEvents(t, w1, 1)
		recvEvents(t, w2, 1)
		recvEvents(t, w3, 1)
		cancel1()
		mustPut(t, cli, "/m/k", "2")
		recvEvents(t, w2, 1)
		recvEvents(t, w3, 1)
		for wr := range w1 {
			if len(wr.Events) > 0 {
				t.Fatalf("cancelled watch got %v", describe(wr.Events))
			}
		}
	})

	t.Run("request progress", func(t *testing.T) {
		ctx := clientv3.WithRequireLeader(ctxT(t))
		wch := cli.Watch(ctx, "/prog/k")
		r := mustPut(t, cli, "/prog/other", "x")
		// Wait until the watcher has released the write, then ask.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if err := cli.RequestProgress(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case wr := <-wch:
				if !wr.IsProgressNotify() {
					t.Fatalf("unexpected %+v", wr)
				}
				if wr.Header.Revision >= r.Header.Revision {
					return
				}
			case <-time.After(time.Second):
			}
			if time.Now().After(deadline) {
				t.Fatal("no progress notification covering the last write")
			}
		}
	})

	t.Run("progress_notify", func(t *testing.T) {
		wch := cli.Watch(ctxT(t), "/pn/k", clientv3.WithProgressNotify())
		select {
		case wr := <-wch:
			if !wr.IsProgressNotify() || len(wr.Events) != 0 || wr.Header.Revision == 0 {
				t.Fatalf("want a progress notification, got %+v", wr)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no periodic progress notification")
		}
	})

	t.Run("compacted", func(t *testing.T) {
		old := mustPut(t, cli, "/c/k", "1").Header.Revision
		cur := mustPut(t, cli, "/c/k", "2").Header.Revision
		if _, err := cli.Compact(ctxT(t), cur); err != nil {
			t.Fatal(err)
		}
		wch := cli.Watch(ctxT(t), "/c/k", clientv3.WithRev(old))
		select {
		case wr := <-wch:
			if !errors.Is(wr.Err(), rpctypes.ErrCompacted) || wr.CompactRevision != cur {
				t.Fatalf("want compacted at %d, got err %v compact %d", cur, wr.Err(), wr.CompactRevision)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no compaction response")
		}
		// At the compaction revision itself the watch works.
		wch = cli.Watch(ctxT(t), "/c/k", clientv3.WithRev(cur))
		if evs := recvEvents(t, wch, 1); evs[0].Kv.ModRevision != cur {
			t.Fatalf("got %v", describe(evs))
		}
	})
}

// TestWatchProtocol speaks etcd's Watch protocol directly (what clientv3
// does not expose): client-chosen watch IDs, a duplicate ID, an empty
// range, and fragmented responses, through the gateway.
func TestWatchProtocol(t *testing.T) {
	c := testcluster.New(t, 1, testcluster.Options{Cache: watcher.CacheConfig{MaxResponseBytes: 64 << 10}})
	cli := c.Client(t)
	conn, err := grpc.NewClient(strings.TrimPrefix(c.Endpoints()[0], "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ws, err := pb.NewWatchClient(conn).Watch(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	create := func(r *pb.WatchCreateRequest) {
		t.Helper()
		if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: r}}); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *pb.WatchResponse {
		t.Helper()
		r, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	create(&pb.WatchCreateRequest{Key: []byte("/proto/"), RangeEnd: []byte("/proto0"), WatchId: 42, Fragment: true})
	if r := recv(); !r.Created || r.WatchId != 42 || r.Canceled {
		t.Fatalf("create with id 42: %+v", r)
	}
	create(&pb.WatchCreateRequest{Key: []byte("/x"), WatchId: 42})
	if r := recv(); !r.Created || !r.Canceled || r.WatchId != -1 || r.CancelReason != "mvcc: duplicate watch ID provided on the WatchStream" {
		t.Fatalf("duplicate id: %+v", r)
	}
	create(&pb.WatchCreateRequest{Key: []byte("/b"), RangeEnd: []byte("/a")})
	if r := recv(); !r.Canceled || r.CancelReason != "mvcc: watcher range is empty" {
		t.Fatalf("empty range: %+v", r)
	}
	create(&pb.WatchCreateRequest{Key: []byte("/auto")})
	if r := recv(); !r.Created || r.WatchId != 0 {
		t.Fatalf("auto id: %+v", r)
	}
	// One txn writes 40 keys of 4 KiB at one revision: 160 KiB of events,
	// more than the 64 KiB limit, so the response comes in fragments.
	big := strings.Repeat("v", 4096)
	var ops []clientv3.Op
	for i := 0; i < 40; i++ {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("/proto/%02d", i), big))
	}
	if _, err := cli.Txn(ctxT(t)).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	events, frags := 0, 0
	for events < 40 {
		r := recv()
		if r.WatchId != 42 {
			t.Fatalf("response for watch %d", r.WatchId)
		}
		events += len(r.Events)
		if r.Fragment {
			frags++
		} else if events < 40 {
			t.Fatalf("last fragment after %d of 40 events", events)
		}
	}
	if frags == 0 {
		t.Fatal("160 KiB of events with fragment=true came unfragmented")
	}
}
