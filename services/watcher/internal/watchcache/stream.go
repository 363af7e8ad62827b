package watchcache

import (
	"context"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/keyspan"
	"github.com/tessera-kv/tessera/pkg/wirecodec"
)

// etcd's answers to bad watch requests (server/storage/mvcc).
const (
	reasonEmptyRange  = "mvcc: watcher range is empty"
	reasonDuplicateID = "mvcc: duplicate watch ID provided on the WatchStream"
	// etcd has no such bound; its wording is ours.
	reasonTooManyWatches = "tessera: too many watches on one stream (limit %d); cancel some or open another stream"
)

// invalidWatchID is etcd's watch ID for responses that belong to no watch.
const invalidWatchID = -1

type watchState int

const (
	stateIdle     watchState = iota // created, not yet placed, or removed
	stateSynced                     // in a group: gets live deliveries
	stateUnsynced                   // catching up from the history
	stateFetching                   // catching up from the replicas
)

type watch struct {
	id       int64
	stream   *Stream
	key, end []byte // end: nil single key, empty to the end of the keyspace

	noPut, noDelete                  bool
	prevKV, fragment, progressNotify bool

	ctx    context.Context // done when the watch is cancelled
	cancel context.CancelFunc

	// Guarded by the cache's mu.
	next  int64 // the first revision the client has not been sent
	state watchState
	// lagged: the watch was synced and fell behind its stream (slow
	// consumer); it is cancelled if the history no longer reaches back.
	lagged bool
	// progressDue: no events were sent since the last progress tick.
	progressDue bool
}

// filter applies next and the create request's filters.
func (w *watch) filter(evs []*mvccpb.Event) []*mvccpb.Event {
	if !w.noPut && !w.noDelete && (len(evs) == 0 || evs[0].Kv.ModRevision >= w.next) {
		return evs
	}
	out := make([]*mvccpb.Event, 0, len(evs))
	for _, ev := range evs {
		switch {
		case ev.Kv.ModRevision < w.next:
		case w.noPut && ev.Type == mvccpb.PUT:
		case w.noDelete && ev.Type == mvccpb.DELETE:
		default:
			out = append(out, ev)
		}
	}
	return out
}

func (w *watch) sentEvents() { w.progressDue = false }

// takesAll reports whether the watch gets evs unchanged in one response,
// so that the group's shared encoding can be sent.
func (w *watch) takesAll(evs []*mvccpb.Event) bool {
	return !w.noPut && !w.noDelete && !w.fragment && len(evs) > 0 && evs[0].Kv.ModRevision >= w.next
}

// Identity fills the cluster and member IDs of a stream's response
// headers (the gateway's, so that clients see one member).
type Identity struct{ ClusterID, MemberID uint64 }

// Response is one message for a client stream.
type Response struct {
	*pb.WatchResponse
	// encodedEvents, when set, are the events in wire form (WatchResponse
	// field 11), encoded once per group and shared by all its watches; the
	// WatchResponse then has no Events of its own.
	encodedEvents []byte
}

func wrap(r *pb.WatchResponse) *Response { return &Response{WatchResponse: r} }

// Frame returns the response in wire form without re-encoding shared events.
func (r *Response) Frame() (*wirecodec.Frame, error) {
	head, err := proto.Marshal(r.WatchResponse)
	if err != nil {
		return nil, err
	}
	return &wirecodec.Frame{Parts: [][]byte{head, r.encodedEvents}}, nil
}

// Full returns the response as one decoded message.
func (r *Response) Full() (*pb.WatchResponse, error) {
	if r.encodedEvents == nil {
		return r.WatchResponse, nil
	}
	f, err := r.Frame()
	if err != nil {
		return nil, err
	}
	out := &pb.WatchResponse{}
	return out, proto.Unmarshal(f.Bytes(), out)
}

// encodeEvents puts events in wire form for Response.encodedEvents.
func encodeEvents(evs []*mvccpb.Event) []byte {
	b, err := proto.Marshal(&pb.WatchResponse{Events: evs})
	if err != nil {
		panic(fmt.Sprintf("watchcache: marshal events: %v", err)) // cannot fail for these messages
	}
	return b
}

// Stream is one client watch stream (a gRPC Watch call): its watches,
// their IDs, and its outbox.
type Stream struct {
	c   *Cache
	ctx context.Context
	q   *queue
	id  Identity

	// Guarded by the cache's mu.
	watches         map[int64]*watch
	nextID          int64
	progressPending bool
}

// NewStream opens a stream; Close releases it.
func (c *Cache) NewStream(ctx context.Context, id Identity) *Stream {
	s := &Stream{c: c, ctx: ctx, id: id, q: newQueue(c.cfg.QueueLimit), watches: map[int64]*watch{}}
	c.mu.Lock()
	c.mu.streams[s] = struct{}{}
	c.mu.Unlock()
	return s
}

// Next waits for responses to send to the client, in order.
func (s *Stream) Next(ctx context.Context) ([]*Response, error) { return s.q.pop(ctx) }

// Close cancels every watch of the stream.
func (s *Stream) Close() {
	c := s.c
	c.mu.Lock()
	for _, w := range s.watches {
		c.removeLocked(w)
		w.cancel()
	}
	s.watches = map[int64]*watch{}
	delete(c.mu.streams, s)
	c.mu.Unlock()
	s.q.close()
}

func (s *Stream) response(id, rev int64) *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{ClusterId: s.id.ClusterID, MemberId: s.id.MemberID, Revision: rev}, WatchId: id}
}

// current is Source.Current, asked again with backoff for up to
// CreatePatience.
func (c *Cache) current(ctx context.Context) (int64, int64, error) {
	deadline := time.Now().Add(c.cfg.CreatePatience)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		cur, compacted, err := c.src.Current(ctx)
		if err == nil || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return cur, compacted, err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
}

// Create handles a create request: it answers with the created response
// (or a created-and-cancelled one for a bad request, as etcd does) and
// starts the watch. An error ends the stream.
func (s *Stream) Create(ctx context.Context, req *pb.WatchCreateRequest) error {
	c := s.c
	key := req.Key
	if len(key) == 0 {
		key = []byte{0} // the smallest key, as in etcd
	}
	span := keyspan.FromRequest(key, req.RangeEnd)
	end := span.End
	refuse := func(reason string) error {
		r := s.response(invalidWatchID, c.Released())
		r.Created, r.Canceled, r.CancelReason = true, true, reason
		return s.q.push(ctx, wrap(r))
	}
	if req.StartRevision < 0 {
		return refuse(rpctypes.ErrCompacted.Error())
	}
	if span.Empty() {
		return refuse(reasonEmptyRange)
	}
	// Every create asks the replicas where "now" and the compaction are:
	// a watch from "now" starts above every acknowledged write, and one
	// from below a compaction the feeds have not reported yet fails as
	// in etcd instead of being served from memory. They are asked again
	// through a leader change; if they still cannot answer, this watch is
	// refused and the stream's other watches go on.
	cur, compacted, err := c.current(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return refuse(fmt.Sprintf("tessera: cannot start the watch: %v", err))
	}
	c.mu.Lock()
	if compacted > c.mu.compacted {
		c.mu.compacted = compacted
	}
	if req.StartRevision == 0 {
		c.mu.wanted = max(c.mu.wanted, cur)
	}
	c.mu.Unlock()
	start, hdrRev := req.StartRevision, int64(0)
	if start == 0 {
		start, hdrRev = cur+1, cur
	}
	w := &watch{stream: s, key: key, end: end, next: start, prevKV: req.PrevKv, fragment: req.Fragment,
		progressNotify: req.ProgressNotify, progressDue: true}
	for _, f := range req.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	w.ctx, w.cancel = context.WithCancel(s.ctx)

	c.mu.Lock()
	if len(s.watches) >= c.cfg.MaxWatchesPerStream {
		c.mu.Unlock()
		w.cancel()
		return refuse(fmt.Sprintf(reasonTooManyWatches, c.cfg.MaxWatchesPerStream))
	}
	if req.WatchId != 0 { // 0 is clientv3.AutoWatchID
		if _, dup := s.watches[req.WatchId]; dup {
			c.mu.Unlock()
			w.cancel()
			return refuse(reasonDuplicateID)
		}
		w.id = req.WatchId
	} else {
		for s.watches[s.nextID] != nil {
			s.nextID++
		}
		w.id = s.nextID
		s.nextID++
	}
	s.watches[w.id] = w
	if hdrRev == 0 {
		hdrRev = c.mu.released
	}
	c.mu.Unlock()

	// The created response goes out before any event of the watch: the
	// watch is placed only after it is queued.
	r := s.response(w.id, hdrRev)
	r.Created = true
	if err := s.q.push(ctx, wrap(r)); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.watches[w.id] == w {
		c.placeLocked(w)
	}
	return nil
}

// placeLocked starts delivery to a new or caught-up watch.
func (c *Cache) placeLocked(w *watch) {
	switch {
	case w.next < c.mu.compacted:
		c.cancelWatchLocked(w, c.mu.compacted, "")
	case w.next > c.mu.released:
		c.syncLocked(w)
	default:
		c.unsyncLocked(w, w.next)
	}
}

// Cancel handles a cancel request: an unknown ID is ignored, as in etcd.
func (s *Stream) Cancel(ctx context.Context, id int64) error {
	c := s.c
	c.mu.Lock()
	w := s.watches[id]
	if w == nil {
		c.mu.Unlock()
		return nil
	}
	c.removeLocked(w)
	w.cancel()
	delete(s.watches, id)
	rev := c.mu.released
	c.mu.Unlock()
	r := s.response(id, rev)
	r.Canceled = true
	return s.q.push(ctx, wrap(r))
}

// RequestProgress asks for a stream-wide progress response: its revision
// means every event up to it has been sent on this stream. It is sent once
// every watch of the stream has caught up.
func (s *Stream) RequestProgress() {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	s.progressPending = true
	c.progressLocked()
}

// progressLocked answers the pending progress requests of streams whose
// watches have all caught up.
func (c *Cache) progressLocked() {
	for s := range c.mu.streams {
		if !s.progressPending || !s.caughtUpLocked() {
			continue
		}
		if len(s.watches) == 0 {
			s.progressPending = false // etcd answers only on behalf of watches
			continue
		}
		if s.q.tryPush(wrap(s.response(invalidWatchID, c.mu.released))) {
			s.progressPending = false
		}
	}
}

func (s *Stream) caughtUpLocked() bool {
	for _, w := range s.watches {
		if w.state != stateSynced || w.next > s.c.mu.released+1 {
			return false
		}
	}
	return true
}

// notifyProgress sends the periodic progress of progress_notify watches that
// are caught up and got no events since the last tick, as etcd does.
func (c *Cache) notifyProgress() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.mu.streams {
		for _, w := range s.watches {
			if !w.progressNotify {
				continue
			}
			if w.progressDue && w.state == stateSynced && w.next <= c.mu.released+1 {
				s.q.tryPush(wrap(s.response(w.id, c.mu.released)))
			}
			w.progressDue = true
		}
	}
}

// responses builds what a watch sends for evs, cut into fragments if the
// watch asked for them and the response is too large (etcd's rule: only
// responses of two or more events are cut).
func (c *Cache) responses(w *watch, evs []*mvccpb.Event, rev int64) []*Response {
	r := w.stream.response(w.id, rev)
	r.Events = evs
	if !w.fragment || len(evs) < 2 || proto.Size(r) < c.cfg.MaxResponseBytes {
		return []*Response{wrap(r)}
	}
	var out []*Response
	cur := &pb.WatchResponse{Header: r.Header, WatchId: w.id, Fragment: true}
	size := proto.Size(cur)
	for _, ev := range evs {
		n := proto.Size(ev) + 8
		if len(cur.Events) > 0 && size+n >= c.cfg.MaxResponseBytes {
			out = append(out, wrap(cur))
			cur = &pb.WatchResponse{Header: r.Header, WatchId: w.id, Fragment: true}
			size = proto.Size(cur)
		}
		cur.Events = append(cur.Events, ev)
		size += n
	}
	cur.Fragment = false
	return append(out, wrap(cur))
}

func (w *watch) String() string {
	return fmt.Sprintf("watch %d [%q, %q) next %d", w.id, w.key, w.end, w.next)
}

// mergeable reports whether r only carries events (no created, cancelled,
// compaction, fragment or progress meaning) and so may be merged with the
// next events of the same watch.
func (r *Response) mergeable() bool {
	return (r.encodedEvents != nil || len(r.Events) > 0) && !r.Created && !r.Canceled && !r.Fragment && r.CompactRevision == 0
}

// Frames turns responses taken from a stream into wire frames. Consecutive
// event responses of one watch are merged into one message of up to limit
// event bytes, with the later header, as etcd does for a watch that is
// catching up: a client that lags then gets fewer, larger messages. Each
// revision's events stay together and in order.
func Frames(rs []*Response, limit int) ([]*wirecodec.Frame, error) {
	var (
		out   []*wirecodec.Frame
		cur   *pb.WatchResponse
		parts [][]byte
		size  int
	)
	flush := func() error {
		if cur == nil {
			return nil
		}
		head, err := proto.Marshal(cur)
		if err != nil {
			return err
		}
		out = append(out, &wirecodec.Frame{Parts: append([][]byte{head}, parts...)})
		cur, parts, size = nil, nil, 0
		return nil
	}
	for _, r := range rs {
		if !r.mergeable() {
			if err := flush(); err != nil {
				return nil, err
			}
			f, err := r.Frame()
			if err != nil {
				return nil, err
			}
			out = append(out, f)
			continue
		}
		enc := r.encodedEvents
		if enc == nil {
			enc = encodeEvents(r.Events)
		}
		if cur != nil && (cur.WatchId != r.WatchId || size+len(enc) > limit) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		if cur == nil {
			cur = &pb.WatchResponse{WatchId: r.WatchId}
		}
		cur.Header = r.Header
		parts = append(parts, enc)
		size += len(enc)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}
