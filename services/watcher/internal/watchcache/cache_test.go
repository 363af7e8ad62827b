package watchcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// logSource is a Source over an in-memory log of revisions (what the
// replicas' change logs would hold).
func (s *logSource) CloseRevision(context.Context, uint64, int64) error { return nil }

type logSource struct {
	mu          sync.Mutex
	revs        []Revision
	compacted   int64
	failCurrent error // Current fails with it when set
}

func (s *logSource) add(r Revision) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revs = append(s.revs, r)
}

func (s *logSource) Current(context.Context) (int64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failCurrent != nil {
		return 0, 0, s.failCurrent
	}
	if len(s.revs) == 0 {
		return 1, s.compacted, nil
	}
	return s.revs[len(s.revs)-1].Rev, s.compacted, nil
}

func (s *logSource) History(ctx context.Context, key, end []byte, from, to int64, fn func(int64, []*mvccpb.Event) error) error {
	s.mu.Lock()
	if from < s.compacted {
		s.mu.Unlock()
		return &CompactedError{Revision: s.compacted}
	}
	revs := append([]Revision(nil), s.revs...)
	s.mu.Unlock()
	span := keyspan.Span{Key: key, End: end}
	for _, r := range revs {
		if r.Rev < from || r.Rev > to {
			continue
		}
		var evs []*mvccpb.Event
		for _, ev := range r.Events {
			if span.Contains(ev.Kv.Key) {
				evs = append(evs, ev)
			}
		}
		if len(evs) > 0 {
			if err := fn(r.Rev, evs); err != nil {
				return err
			}
		}
	}
	return nil
}

func put(rev int64, key string) Revision {
	return Revision{Rev: rev, Events: []*mvccpb.Event{{Type: mvccpb.PUT,
		Kv:     &mvccpb.KeyValue{Key: []byte(key), Value: []byte(fmt.Sprint(rev)), ModRevision: rev, CreateRevision: rev, Version: 1},
		PrevKv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte("prev")}}}}
}

type harness struct {
	t   *testing.T
	c   *Cache
	src *logSource
	rev int64
}

func newHarness(t *testing.T, cfg Config) *harness {
	src := &logSource{}
	cfg.SyncInterval = 10 * time.Millisecond
	c := New(cfg, src)
	t.Cleanup(c.Close)
	c.AddShard(1)
	c.Subscribed(1, 1)
	return &harness{t: t, c: c, src: src, rev: 1}
}

// write appends one put of key at the next revision to the log and the feed.
func (h *harness) write(key string) int64 {
	h.rev++
	r := put(h.rev, key)
	h.src.add(r)
	h.c.Apply(1, []Revision{r}, h.rev, 0)
	return h.rev
}

func (h *harness) stream() *Stream {
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	s := h.c.NewStream(ctx, Identity{})
	h.t.Cleanup(s.Close)
	return s
}

func (h *harness) create(s *Stream, req *pb.WatchCreateRequest) {
	h.t.Helper()
	if err := s.Create(context.Background(), req); err != nil {
		h.t.Fatal(err)
	}
}

// drain reads responses until cond says stop, or fails after 5 s.
func drain(t *testing.T, s *Stream, cond func([]*pb.WatchResponse) bool) []*pb.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []*pb.WatchResponse
	for !cond(out) {
		rs, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("after %d responses: %v", len(out), err)
		}
		for _, r := range rs {
			full, err := r.Full()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, full)
		}
	}
	return out
}

func eventRevs(rs []*pb.WatchResponse, id int64) []int64 {
	var out []int64
	for _, r := range rs {
		if r.WatchId != id {
			continue
		}
		for _, ev := range r.Events {
			out = append(out, ev.Kv.ModRevision)
		}
	}
	return out
}

func countEvents(id int64, n int) func([]*pb.WatchResponse) bool {
	return func(rs []*pb.WatchResponse) bool { return len(eventRevs(rs, id)) >= n }
}

func consecutive(t *testing.T, revs []int64, from int64) {
	t.Helper()
	for i, r := range revs {
		if r != from+int64(i) {
			t.Fatalf("revisions %v: want consecutive from %d", revs, from)
		}
	}
}

func TestIdenticalWatchesShareAGroup(t *testing.T) {
	h := newHarness(t, Config{})
	s := h.stream()
	for i := 0; i < 50; i++ {
		h.create(s, &pb.WatchCreateRequest{Key: []byte("/a/"), RangeEnd: []byte("/a0")})
	}
	h.create(s, &pb.WatchCreateRequest{Key: []byte("/b")})
	h.c.mu.Lock()
	groups := h.c.mu.groups.Len()
	h.c.mu.Unlock()
	if groups != 2 {
		t.Fatalf("%d groups for 2 distinct ranges", groups)
	}
	h.write("/a/x")
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool {
		n := 0
		for _, r := range rs {
			n += len(r.Events)
		}
		return n >= 50
	})
	for id := int64(0); id < 50; id++ {
		if got := eventRevs(rs, id); len(got) != 1 {
			t.Fatalf("watch %d got %v", id, got)
		}
	}
	if got := eventRevs(rs, 50); len(got) != 0 {
		t.Fatalf("watch on /b got %v", got)
	}
}

// A consumer that stops reading is not dropped: it catches up from the
// history once it reads again, with every event once and in order.
func TestSlowConsumerCatchesUpFromHistory(t *testing.T) {
	h := newHarness(t, Config{QueueLimit: 2, HistoryRevisions: 1000})
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k")})
	for i := 0; i < 100; i++ {
		h.write("k")
	}
	rs := drain(t, s, countEvents(0, 100))
	consecutive(t, eventRevs(rs, 0), 2)
}

// A consumer that falls behind the history is cancelled with a reason; what
// it did get is a gapless prefix.
func TestSlowConsumerPastHistoryIsCancelled(t *testing.T) {
	h := newHarness(t, Config{QueueLimit: 2, HistoryRevisions: 10})
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k")})
	for i := 0; i < 100; i++ {
		h.write("k")
	}
	time.Sleep(50 * time.Millisecond) // let the sync loop find it behind
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool {
		return len(rs) > 0 && rs[len(rs)-1].Canceled
	})
	last := rs[len(rs)-1]
	if !strings.Contains(last.CancelReason, "fell behind") || last.WatchId != 0 {
		t.Fatalf("cancel response %+v", last)
	}
	revs := eventRevs(rs, 0)
	consecutive(t, revs, 2)
	if len(revs) == 0 || len(revs) >= 100 {
		t.Fatalf("got %d events before the cancel", len(revs))
	}
}

// Revisions are released only when every shard has closed them, merged in
// revision order.
func TestShardsMergeByRevision(t *testing.T) {
	src := &logSource{}
	c := New(Config{SyncInterval: 10 * time.Millisecond}, src)
	t.Cleanup(c.Close)
	c.AddShard(1)
	c.AddShard(2)
	c.Subscribed(1, 1)
	c.Subscribed(2, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := c.NewStream(ctx, Identity{})
	defer s.Close()
	if err := s.Create(ctx, &pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 2}); err != nil {
		t.Fatal(err)
	}
	c.Apply(1, []Revision{put(2, "a"), put(4, "a")}, 4, 0)
	if r := c.Released(); r != 1 {
		t.Fatalf("released %d before shard 2 closed anything", r)
	}
	c.Apply(2, []Revision{put(3, "z")}, 5, 0)
	if r := c.Released(); r != 4 {
		t.Fatalf("released %d, want 4", r)
	}
	rs := drain(t, s, countEvents(0, 3))
	consecutive(t, eventRevs(rs, 0), 2)
}

// A watch from before the in-memory history reads the replicas' log first.
func TestWatchBeforeHistoryReadsReplicas(t *testing.T) {
	h := newHarness(t, Config{HistoryRevisions: 5})
	for i := 0; i < 30; i++ {
		h.write(fmt.Sprintf("k%d", i%3))
	}
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k1"), StartRevision: 3, PrevKv: true})
	h.write("k1")
	rs := drain(t, s, countEvents(0, 11))
	revs := eventRevs(rs, 0)
	for i, r := range revs {
		if i > 0 && r <= revs[i-1] {
			t.Fatalf("revisions %v out of order", revs)
		}
	}
	for _, r := range rs {
		for _, ev := range r.Events {
			if string(ev.Kv.Key) != "k1" || ev.PrevKv == nil {
				t.Fatalf("event %v: not k1's, or without the prev_kv asked for", ev)
			}
		}
	}
}

func TestCompactedStartIsCancelled(t *testing.T) {
	h := newHarness(t, Config{HistoryRevisions: 2})
	for i := 0; i < 10; i++ {
		h.write("k")
	}
	h.src.compacted = 8
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 3})
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 2 })
	if !rs[0].Created || !rs[1].Canceled || rs[1].CompactRevision != 8 {
		t.Fatalf("responses %+v", rs)
	}
}

func TestFragments(t *testing.T) {
	h := newHarness(t, Config{MaxResponseBytes: 300})
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 2, Fragment: true})
	var revs []Revision
	for i := 0; i < 20; i++ {
		h.rev++
		revs = append(revs, put(h.rev, fmt.Sprintf("key-%02d-%s", i, bytes.Repeat([]byte("x"), 20))))
	}
	h.c.Apply(1, revs, h.rev, 0)
	rs := drain(t, s, countEvents(0, 20))
	var frags int
	for i, r := range rs[1:] {
		if r.Fragment {
			frags++
		} else if i != len(rs)-2 {
			t.Fatalf("response %d ends the fragments early", i)
		}
	}
	if frags == 0 {
		t.Fatal("a large response was not fragmented")
	}
}

func TestProgressWaitsForCatchUp(t *testing.T) {
	h := newHarness(t, Config{})
	for i := 0; i < 5; i++ {
		h.write("k")
	}
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	s.RequestProgress()
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool {
		return len(rs) > 0 && rs[len(rs)-1].WatchId == invalidWatchID
	})
	if got := eventRevs(rs, 0); len(got) != 5 {
		t.Fatalf("progress sent after %v, before all 5 events", got)
	}
	if rs[len(rs)-1].Header.Revision != 6 {
		t.Fatalf("progress revision %d, want 6", rs[len(rs)-1].Header.Revision)
	}
}

func TestBadCreateRequests(t *testing.T) {
	h := newHarness(t, Config{})
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")})
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), WatchId: 7})
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), WatchId: 7})
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: -1})
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 4 })
	want := []struct {
		id     int64
		reason string
	}{{-1, reasonEmptyRange}, {7, ""}, {-1, reasonDuplicateID}, {-1, "etcdserver: mvcc: required revision has been compacted"}}
	for i, w := range want {
		r := rs[i]
		if r.WatchId != w.id || r.CancelReason != w.reason || !r.Created || r.Canceled != (w.reason != "") {
			t.Fatalf("response %d: %+v, want id %d reason %q", i, r, w.id, w.reason)
		}
	}
}

// Consecutive event responses of one watch merge into one message; other
// responses and other watches' events keep their place.
func TestFramesMergeEventsOfOneWatch(t *testing.T) {
	ev := func(rev int64) []*mvccpb.Event { return put(rev, "k").Events }
	hdr := func(rev int64) *pb.ResponseHeader { return &pb.ResponseHeader{Revision: rev} }
	rs := []*Response{
		wrap(&pb.WatchResponse{Header: hdr(1), WatchId: 1, Created: true}),
		wrap(&pb.WatchResponse{Header: hdr(2), WatchId: 1, Events: ev(2)}),
		{WatchResponse: &pb.WatchResponse{Header: hdr(3), WatchId: 1}, encodedEvents: encodeEvents(ev(3))},
		wrap(&pb.WatchResponse{Header: hdr(4), WatchId: 2, Events: ev(4)}),
		wrap(&pb.WatchResponse{Header: hdr(4), WatchId: -1}), // progress
		wrap(&pb.WatchResponse{Header: hdr(5), WatchId: 2, Events: ev(5)}),
	}
	frames, err := Frames(rs, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range frames {
		var r pb.WatchResponse
		if err := proto.Unmarshal(f.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		s := fmt.Sprintf("w%d@%d", r.WatchId, r.Header.Revision)
		if r.Created {
			s += "+created"
		}
		for _, e := range r.Events {
			s += fmt.Sprintf(" e%d", e.Kv.ModRevision)
		}
		got = append(got, s)
	}
	want := []string{"w1@1+created", "w1@3 e2 e3", "w2@4 e4", "w-1@4", "w2@5 e5"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("frames %v, want %v", got, want)
	}
	// A limit keeps merged messages bounded.
	frames, err = Frames(rs[1:3], 10)
	if err != nil || len(frames) != 2 {
		t.Fatalf("with a 10-byte limit: %d frames, err %v", len(frames), err)
	}
}

// A stream holds at most MaxWatchesPerStream watches; a create past the
// bound is refused, the watches it has keep working, and cancelling one
// makes room again.
func TestWatchesPerStreamBound(t *testing.T) {
	h := newHarness(t, Config{MaxWatchesPerStream: 3})
	s := h.stream()
	for i := 0; i < 4; i++ {
		h.create(s, &pb.WatchCreateRequest{Key: fmt.Appendf(nil, "k%d", i)})
	}
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 4 })
	for i, r := range rs[:3] {
		if !r.Created || r.Canceled {
			t.Fatalf("create %d: %+v", i, r)
		}
	}
	if r := rs[3]; !r.Created || !r.Canceled || r.CancelReason != fmt.Sprintf(reasonTooManyWatches, 3) {
		t.Fatalf("create past the bound: %+v", r)
	}
	if err := s.Cancel(context.Background(), rs[0].WatchId); err != nil {
		t.Fatal(err)
	}
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k9")})
	rs = drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 2 })
	if r := rs[len(rs)-1]; !r.Created || r.Canceled {
		t.Fatalf("create after a cancel: %+v", r)
	}
}

// A stream may hold 100 000 watches (etcd's clients can open that many):
// events still reach another stream's watch, each event is matched through
// the range index rather than against every group, and the next create on
// the full stream is refused.
func TestStreamWithManyWatches(t *testing.T) {
	const n = 100000
	h := newHarness(t, Config{})
	big := h.stream()
	got := make(chan []*pb.WatchResponse, 1)
	go func() {
		var rs []*pb.WatchResponse
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for len(rs) < n+1 {
			batch, err := big.Next(ctx)
			if err != nil {
				break
			}
			for _, r := range batch {
				full, _ := r.Full()
				rs = append(rs, full)
			}
		}
		got <- rs
	}()
	for i := 0; i < n; i++ {
		h.create(big, &pb.WatchCreateRequest{Key: fmt.Appendf(nil, "/many/%06d", i), RangeEnd: fmt.Appendf(nil, "/many/%06d\x00", i)})
	}
	h.create(big, &pb.WatchCreateRequest{Key: []byte("/many/over")})
	rs := <-got
	if len(rs) != n+1 || !rs[n].Canceled || rs[n].CancelReason != fmt.Sprintf(reasonTooManyWatches, n) {
		t.Fatalf("%d responses; last %+v", len(rs), rs[len(rs)-1])
	}
	if st := h.c.Stats(); st.Groups != n {
		t.Fatalf("%d groups, want %d", st.Groups, n)
	}
	other := h.stream()
	h.create(other, &pb.WatchCreateRequest{Key: []byte("/other")})
	drain(t, other, func(rs []*pb.WatchResponse) bool { return len(rs) >= 1 })
	rev := h.write("/other")
	evs := drain(t, other, func(rs []*pb.WatchResponse) bool { return len(rs) >= 1 && len(rs[len(rs)-1].Events) > 0 })
	if e := evs[len(evs)-1].Events[0]; string(e.Kv.Key) != "/other" || e.Kv.ModRevision != rev {
		t.Fatalf("event %v", e)
	}
	h.write("/many/054321")
	evs = drain(t, big, func(rs []*pb.WatchResponse) bool { return len(rs) >= 1 })
	if len(evs[0].Events) != 1 || string(evs[0].Events[0].Kv.Key) != "/many/054321" {
		t.Fatalf("big stream got %v", evs[0])
	}
}

// A watch from below a compaction the feeds have not reported yet fails
// as compacted (it used to be served from the history in memory), and a
// create the replicas cannot answer is refused without ending the stream's
// other watches.
func TestCreateChecksCompactionAndKeepsTheStream(t *testing.T) {
	h := newHarness(t, Config{CreatePatience: 300 * time.Millisecond})
	for i := 0; i < 5; i++ {
		h.write("k")
	}
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool { return len(eventRevs(rs, 0)) >= 5 })
	id := rs[0].WatchId

	h.src.mu.Lock()
	h.src.compacted = 5 // compacted at the replicas; no feed said so yet
	h.src.mu.Unlock()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 3})
	rs = drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 2 })
	if !rs[0].Created || !rs[1].Canceled || rs[1].CompactRevision != 5 {
		t.Fatalf("watch from below a fresh compaction: %+v", rs)
	}

	h.src.mu.Lock()
	h.src.failCurrent = errors.New("no leader")
	h.src.mu.Unlock()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k")})
	rs = drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 1 })
	if !rs[0].Created || !rs[0].Canceled || !strings.Contains(rs[0].CancelReason, "cannot start the watch") {
		t.Fatalf("create the replicas cannot answer: %+v", rs[0])
	}
	// A failure shorter than the patience (a leader election) does not
	// refuse the watch.
	h.src.mu.Lock()
	h.src.failCurrent = errors.New("no leader")
	h.src.mu.Unlock()
	time.AfterFunc(100*time.Millisecond, func() {
		h.src.mu.Lock()
		h.src.failCurrent = nil
		h.src.mu.Unlock()
	})
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k")})
	rs = drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 1 })
	if !rs[0].Created || rs[0].Canceled {
		t.Fatalf("create through a short failure: %+v", rs[0])
	}
	rev := h.write("k")
	rs = drain(t, s, func(rs []*pb.WatchResponse) bool { return len(eventRevs(rs, id)) >= 1 })
	if got := eventRevs(rs, id); got[0] != rev {
		t.Fatalf("the first watch after a refused create got %v, want %d", got, rev)
	}
}

// A feed that resumes on a lagging replica (after a "compacted" answer it
// resubscribes "from now" there) reports a closed revision below what the
// cache already has and sends revisions it already sent: they are not
// delivered twice, and the history stays in order.
func TestFeedResumingBehindDoesNotRepeat(t *testing.T) {
	h := newHarness(t, Config{})
	s := h.stream()
	h.create(s, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	drain(t, s, func(rs []*pb.WatchResponse) bool { return len(rs) >= 1 })
	for i := 0; i < 4; i++ {
		h.write("k") // revisions 2..5
	}
	drain(t, s, func(rs []*pb.WatchResponse) bool { return len(eventRevs(rs, 0)) >= 4 })
	// The feed moves to a replica that has applied only up to 3.
	h.c.Subscribed(1, 3)
	h.c.Apply(1, []Revision{put(4, "k"), put(5, "k"), put(6, "k")}, 6, 0)
	h.rev = 6
	h.src.add(put(6, "k"))
	rs := drain(t, s, func(rs []*pb.WatchResponse) bool { return len(eventRevs(rs, 0)) >= 1 })
	if got := eventRevs(rs, 0); len(got) != 1 || got[0] != 6 {
		t.Fatalf("after the feed resumed behind: events %v, want [6]", got)
	}
	// And a watch replaying from the history sees each revision once.
	s2 := h.stream()
	h.create(s2, &pb.WatchCreateRequest{Key: []byte("k"), StartRevision: 2})
	rs = drain(t, s2, func(rs []*pb.WatchResponse) bool { return len(eventRevs(rs, 0)) >= 5 })
	if got := eventRevs(rs, 0); fmt.Sprint(got) != "[2 3 4 5 6]" {
		t.Fatalf("replay from the history: %v", got)
	}
}
