// Package watchcache is the watcher tier's core: a bounded in-memory history
// of the cluster's change feeds, merged by revision across shards, and the
// etcd watches served from it.
//
// Revisions are released in order: an event is delivered only once every
// shard has closed its revision (no shard can still produce an event at or
// below it), so watches over several shards see one revision-ordered stream.
//
// Watches are synced or unsynced, as in etcd. Synced watches sit in groups
// keyed by their range: identical ranges share one group, so N watches on
// one prefix cost one match pass per released event. A watch is unsynced
// while it catches up: from the in-memory history when that still covers
// its next revision, or from the replicas' change logs when it starts
// further back.
//
// The slow-consumer rule: each stream has a bounded outbox. A live delivery
// that finds the outbox full is not dropped and not waited for: the watch
// becomes unsynced at the first revision it did not get, and catches up
// from the history as the client drains its stream. If the history moves
// past that revision first, the watch is cancelled with a reason saying so
// (the client re-watches from its last revision). No event is skipped.
package watchcache

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// Config bounds the cache. Zero fields take the defaults of DefaultConfig.
type Config struct {
	// HistoryRevisions and HistoryBytes bound the in-memory history; the
	// oldest revisions are dropped first.
	HistoryRevisions int
	HistoryBytes     int
	// QueueLimit is how many responses a stream may have queued for its
	// client before live delivery to its watches stops (see the package
	// comment for what happens then).
	QueueLimit int
	// SyncInterval is how often unsynced watches are retried.
	SyncInterval time.Duration
	// ProgressInterval is the period of progress notifications for watches
	// created with progress_notify (etcd's default is 10 minutes).
	ProgressInterval time.Duration
	// MaxWatchesPerStream bounds the watches one stream may hold; a create
	// past it is refused (created and cancelled, with the reason).
	MaxWatchesPerStream int
	// MaxResponseBytes is where responses of watches that asked for
	// fragments are cut (etcd cuts at its max request bytes).
	MaxResponseBytes int
	// CloseInterval is how often a shard that holds the release back is
	// asked to close a revision (closer.go).
	CloseInterval time.Duration
	// CreatePatience is how long a watch creation keeps asking the
	// replicas for the current revision before the watch is refused:
	// longer than a leader election and a replica's feed timeout, so a
	// fault the cluster recovers from does not cancel watches.
	CreatePatience time.Duration
	// Logger is the component logger; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the default bounds.
func DefaultConfig() Config {
	return Config{HistoryRevisions: 100000, HistoryBytes: 64 << 20, QueueLimit: 1024,
		SyncInterval: 100 * time.Millisecond, ProgressInterval: 10 * time.Minute, CloseInterval: 50 * time.Millisecond,
		MaxWatchesPerStream: 100000, MaxResponseBytes: 1536 * 1024, CreatePatience: 10 * time.Second}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	if c.HistoryRevisions <= 0 {
		c.HistoryRevisions = d.HistoryRevisions
	}
	if c.HistoryBytes <= 0 {
		c.HistoryBytes = d.HistoryBytes
	}
	if c.CreatePatience <= 0 {
		c.CreatePatience = d.CreatePatience
	}
	if c.QueueLimit <= 0 {
		c.QueueLimit = d.QueueLimit
	}
	if c.MaxWatchesPerStream <= 0 {
		c.MaxWatchesPerStream = d.MaxWatchesPerStream
	}
	if c.CloseInterval <= 0 {
		c.CloseInterval = d.CloseInterval
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = d.SyncInterval
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = d.ProgressInterval
	}
	if c.MaxResponseBytes <= 0 {
		c.MaxResponseBytes = d.MaxResponseBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Source reaches the replicas for what the in-memory history cannot answer.
type Source interface {
	// Current returns a revision at or above that of every write
	// acknowledged before the call (a watch from "now" starts above it),
	// and the compaction revision as of the call (a watch from below it
	// fails, even before a feed reports the compaction).
	Current(ctx context.Context) (rev, compacted int64, err error)
	// History calls fn for each revision in [from, to] that has events in
	// [key, end) (etcd's range conventions), in revision order across
	// shards, with prev_kv set. It returns a *CompactedError when from is
	// below the compaction revision.
	History(ctx context.Context, key, end []byte, from, to int64, fn func(rev int64, evs []*mvccpb.Event) error) error
	// CloseRevision asks a shard to close rev: once it returns, the shard's feed
	// will report a closed revision at or above it.
	CloseRevision(ctx context.Context, shardID uint64, rev int64) error
}

// CompactedError says the history below Revision is gone.
type CompactedError struct{ Revision int64 }

func (e *CompactedError) Error() string {
	return "mvcc: required revision has been compacted"
}

// Revision is one revision's events, as a shard's feed delivers them.
type Revision struct {
	Rev    int64
	Events []*mvccpb.Event
}

type entry struct {
	Revision
	size int
}

type shardFeed struct {
	closed  int64 // -1 until the feed reported
	pending []entry
	closing bool // a request to close a revision is out (closer.go)
}

// Cache is the watcher's history and its watches.
type Cache struct {
	cfg   Config
	src   Source
	log   *slog.Logger
	stopc chan struct{}
	wg    sync.WaitGroup
	poke  chan struct{} // cap 1: wakes the sync loop early

	mu struct {
		sync.Mutex
		shards map[uint64]*shardFeed
		// released: every shard closed it; events up to it are in hist
		// (or were dropped from its front).
		released int64
		// covered: hist holds every event of [covered, released].
		covered   int64
		hist      []entry
		histBytes int
		compacted int64
		// wanted: the highest revision a watch from "now" started above;
		// the cache must release it for the watch to catch up.
		wanted   int64
		groups   keyspan.Index[*group] // synced watches by range
		unsynced map[*watch]struct{}
		streams  map[*Stream]struct{}
	}
}

// New returns a cache; Close stops its background loop.
func New(cfg Config, src Source) *Cache {
	cfg.setDefaults()
	c := &Cache{cfg: cfg, src: src, log: cfg.Logger, stopc: make(chan struct{}), poke: make(chan struct{}, 1)}
	c.mu.shards = map[uint64]*shardFeed{}
	c.mu.unsynced = map[*watch]struct{}{}
	c.mu.streams = map[*Stream]struct{}{}
	c.wg.Add(2)
	go c.syncLoop()
	go c.closeLoop()
	return c
}

// Close stops the background loop. Streams end when their contexts do.
func (c *Cache) Close() {
	close(c.stopc)
	c.wg.Wait()
}

// compactedRev is the highest compaction revision the feeds reported.
func (c *Cache) compactedRev() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.compacted
}

// Config is the configuration in force (defaults filled in).
func (c *Cache) Config() Config { return c.cfg }

// AddShard makes released wait for this shard's feed too.
func (c *Cache) AddShard(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mu.shards[id]; !ok {
		c.mu.shards[id] = &shardFeed{closed: -1}
	}
}

// AddShardAt makes released wait for a shard whose feed is known up to
// closed: a shard made by a split, whose events up to its split revision
// came from its parent's feed. It reports false if the cache released past
// closed already (the child's events in between would come too late): every
// watch is then cancelled, as for a feed that restarted with a gap.
func (c *Cache) AddShardAt(id uint64, closed int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mu.shards[id]; ok {
		return true
	}
	c.mu.shards[id] = &shardFeed{closed: closed}
	if closed >= c.mu.released {
		return true
	}
	c.log.Warn("a shard made by a split was found after its split revision was released; cancelling watches", "shard", id, "split", closed, "released", c.mu.released)
	c.cancelAllLocked("tessera: the watcher found a new shard late; re-watch from the last revision received")
	c.mu.hist, c.mu.histBytes = nil, 0
	c.mu.covered = c.mu.released + 1
	return false
}

// Released is the revision up to which every shard's events are known.
func (c *Cache) Released() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.released
}

// Subscribed records a fresh subscription to a shard's feed that starts
// after closed (nothing at or below it will come). If the shard's feed
// had reached a lower revision, events in between are lost to this cache:
// every watch is cancelled so that clients re-watch from their own
// revisions, and the history restarts.
func (c *Cache) Subscribed(shardID uint64, closed int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sf := c.mu.shards[shardID]
	if sf == nil {
		sf = &shardFeed{closed: -1}
		c.mu.shards[shardID] = sf
	}
	gap := sf.closed >= 0 && closed > sf.closed
	if gap {
		c.log.Warn("change feed restarted with a gap; cancelling watches", "shard", shardID, "had", sf.closed, "now", closed)
		c.cancelAllLocked("tessera: the watcher lost its change feed; re-watch from the last revision received")
		c.mu.hist, c.mu.histBytes = nil, 0
	}
	if sf.closed < 0 || gap {
		sf.closed = closed
		if closed+1 > c.mu.covered {
			c.mu.covered = closed + 1
		}
		// Watches placed before this baseline may start below it: they
		// re-place themselves (from the replicas if need be).
		var synced []*watch
		c.mu.groups.Each(func(_ keyspan.Span, g *group) {
			for w := range g.watches {
				synced = append(synced, w)
			}
		})
		for _, w := range synced {
			c.unsyncLocked(w, max(w.next, c.mu.released+1))
		}
	}
	c.releaseLocked()
}

// Apply takes a shard's feed message: its next revisions (in order, all
// above what it sent before) and its closed and compaction revisions.
func (c *Cache) Apply(shardID uint64, revs []Revision, closed, compacted int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sf := c.mu.shards[shardID]
	if sf == nil {
		return
	}
	for _, r := range revs {
		if r.Rev <= sf.closed {
			// Already had: a feed that resumed on a replica behind the
			// one before (its closed revision is lower) sends again what
			// the cache has, and must not deliver it twice.
			continue
		}
		sf.pending = append(sf.pending, entry{Revision: r, size: eventsSize(r.Events)})
	}
	if closed > sf.closed {
		sf.closed = closed
	}
	if compacted > c.mu.compacted {
		c.mu.compacted = compacted
	}
	c.releaseLocked()
}

// eventOverhead is what one event takes in memory beyond its encoded
// size: the Event and KeyValue structs (two with a previous value) and
// their slice headers. Counting it keeps HistoryBytes a bound on memory
// when values are small.
const eventOverhead = 256

func eventsSize(evs []*mvccpb.Event) int {
	n := 0
	for _, ev := range evs {
		n += proto.Size(ev) + eventOverhead
	}
	return n
}

// releaseLocked moves every pending revision at or below the minimum
// closed revision into the history, in revision order, and delivers it.
func (c *Cache) releaseLocked() {
	newRel := int64(-1)
	for _, sf := range c.mu.shards {
		if sf.closed < 0 {
			return
		}
		if newRel < 0 || sf.closed < newRel {
			newRel = sf.closed
		}
	}
	if newRel <= c.mu.released {
		return
	}
	var batch []entry
	for _, sf := range c.mu.shards {
		n := 0
		for n < len(sf.pending) && sf.pending[n].Rev <= newRel {
			n++
		}
		batch = append(batch, sf.pending[:n]...)
		sf.pending = sf.pending[n:]
	}
	if len(c.mu.shards) > 1 {
		sortEntries(batch)
	}
	prev := c.mu.released
	c.mu.released = newRel
	if len(batch) > 0 {
		c.deliverLocked(batch, prev)
		for _, e := range batch {
			if e.Rev >= c.mu.covered {
				c.mu.hist = append(c.mu.hist, e)
				c.mu.histBytes += e.size
			}
		}
		c.trimLocked()
	}
	c.progressLocked()
}

func sortEntries(es []entry) {
	// Insertion sort: each shard's part is already sorted and batches are small.
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].Rev < es[j-1].Rev; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// trimLocked drops the oldest history past the bounds.
func (c *Cache) trimLocked() {
	n := 0
	for n < len(c.mu.hist) && (len(c.mu.hist)-n > c.cfg.HistoryRevisions || c.mu.histBytes > c.cfg.HistoryBytes) {
		c.mu.histBytes -= c.mu.hist[n].size
		c.mu.covered = c.mu.hist[n].Rev + 1
		n++
	}
	if n > 0 {
		// Drop from the front in place: a copy per release cost O(history)
		// each time (16 % of a CAS workload's CPU). The next append that
		// outgrows the capacity left moves only the live entries; the
		// dropped ones are cleared so their events can be collected.
		clear(c.mu.hist[:n])
		c.mu.hist = c.mu.hist[n:]
	}
}

// deliverLocked sends a released batch to the synced watches. prev is the
// released revision before the batch.
func (c *Cache) deliverLocked(batch []entry, prev int64) {
	// Each event finds its groups through the range index, so the cost
	// of an event does not grow with the number of groups that do not
	// want it (a stream with 100 000 watches slows nobody else).
	matches := map[*group][]*mvccpb.Event{}
	var order []*group
	for _, e := range batch {
		for _, ev := range e.Events {
			c.mu.groups.Stab(ev.Kv.Key, func(_ keyspan.Span, g *group) bool {
				if _, seen := matches[g]; !seen {
					order = append(order, g)
				}
				matches[g] = append(matches[g], ev)
				return true
			})
		}
	}
	for _, g := range order {
		matched := matches[g]
		// Made once per group: the events without prev_kv, and both
		// forms in wire form for the watches that take them unchanged.
		var stripped []*mvccpb.Event
		var encoded [2][]byte
		withPrev := etcdPrevKVs(matched, c.mu.compacted)
		for w := range g.watches {
			evs, form := withPrev, 1
			if !w.prevKV {
				if stripped == nil {
					stripped = withoutPrevKV(matched)
				}
				evs, form = stripped, 0
			}
			var rs []*Response
			if w.takesAll(evs) {
				if encoded[form] == nil {
					encoded[form] = encodeEvents(evs)
				}
				rs = []*Response{{WatchResponse: w.stream.response(w.id, c.mu.released), encodedEvents: encoded[form]}}
			} else if evs = w.filter(evs); len(evs) > 0 {
				rs = c.responses(w, evs, c.mu.released)
			} else {
				continue
			}
			if !w.stream.q.tryPush(rs...) {
				// Slow consumer: catch up from history from the first
				// revision of this batch it may need.
				c.unsyncLocked(w, max(w.next, prev+1))
				w.lagged = true
				continue
			}
			w.sentEvents()
		}
	}
}

// etcdPrevKVs drops prev_kv where etcd would have none: etcd reads the
// previous version at mod_revision-1, which is gone below the compaction
// revision (the change log still has it; clients such as kube-apiserver
// rely on etcd's answer).
func etcdPrevKVs(evs []*mvccpb.Event, compacted int64) []*mvccpb.Event {
	var out []*mvccpb.Event
	for i, ev := range evs {
		if ev.PrevKv == nil || ev.Kv.ModRevision-1 >= compacted {
			continue
		}
		if out == nil {
			out = append([]*mvccpb.Event(nil), evs...)
		}
		out[i] = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
	}
	if out == nil {
		return evs
	}
	return out
}

func withoutPrevKV(evs []*mvccpb.Event) []*mvccpb.Event {
	out := make([]*mvccpb.Event, len(evs))
	for i, ev := range evs {
		if ev.PrevKv == nil {
			out[i] = ev
			continue
		}
		out[i] = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
	}
	return out
}

// group is the synced watches of one range.
type group struct {
	span    keyspan.Span
	watches map[*watch]struct{}
}

func (c *Cache) syncLocked(w *watch) {
	delete(c.mu.unsynced, w)
	s := keyspan.Span{Key: w.key, End: w.end}
	g, ok := c.mu.groups.Get(s)
	if !ok {
		g = &group{span: s, watches: map[*watch]struct{}{}}
		c.mu.groups.Insert(s, g)
	}
	g.watches[w] = struct{}{}
	w.state = stateSynced
}

func (c *Cache) unsyncLocked(w *watch, next int64) {
	c.removeLocked(w)
	w.next = next
	w.state = stateUnsynced
	c.mu.unsynced[w] = struct{}{}
	select {
	case c.poke <- struct{}{}:
	default:
	}
}

// removeLocked takes the watch out of the synced and unsynced sets.
func (c *Cache) removeLocked(w *watch) {
	delete(c.mu.unsynced, w)
	s := keyspan.Span{Key: w.key, End: w.end}
	if g, ok := c.mu.groups.Get(s); ok {
		delete(g.watches, w)
		if len(g.watches) == 0 {
			c.mu.groups.Delete(s)
		}
	}
	w.state = stateIdle
}

func (c *Cache) cancelAllLocked(reason string) {
	for s := range c.mu.streams {
		for _, w := range s.watches {
			c.cancelWatchLocked(w, 0, reason)
		}
	}
}

// cancelWatchLocked ends a watch on the server's initiative (compaction or
// lag), telling the client why.
func (c *Cache) cancelWatchLocked(w *watch, compactRev int64, reason string) {
	c.removeLocked(w)
	w.cancel()
	delete(w.stream.watches, w.id)
	resp := w.stream.response(w.id, c.mu.released)
	resp.Canceled = true
	resp.CompactRevision = compactRev
	resp.CancelReason = reason
	// The outbox may be full (that is often why); the cancel must still
	// reach the client, so it bypasses the limit.
	w.stream.q.force(wrap(resp))
}

func (c *Cache) syncLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.SyncInterval)
	defer t.Stop()
	lastProgress := time.Now()
	for {
		select {
		case <-c.stopc:
			return
		case <-t.C:
		case <-c.poke:
		}
		c.syncUnsynced()
		if time.Since(lastProgress) >= c.cfg.ProgressInterval {
			lastProgress = time.Now()
			c.notifyProgress()
		}
	}
}

// Stats is a snapshot of the cache's size.
type Stats struct {
	Streams, Watches, Groups, Unsynced int
	Released                           int64
	HistoryRevisions, HistoryBytes     int
}

// Stats reports the cache's current size.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Stats{Streams: len(c.mu.streams), Groups: c.mu.groups.Len(), Unsynced: len(c.mu.unsynced),
		Released: c.mu.released, HistoryRevisions: len(c.mu.hist), HistoryBytes: c.mu.histBytes}
	for s := range c.mu.streams {
		st.Watches += len(s.watches)
	}
	return st
}
