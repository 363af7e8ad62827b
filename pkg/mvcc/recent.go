package mvcc

import (
	"sort"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// recentBytes bounds the events a shard keeps of its newest revisions.
// A feed that keeps up reads a few revisions behind the writer, so a
// small tail serves it; one that falls further behind reads the log.
var recentBytes = 1 << 20

// recentChanges is the tail of a shard's change log as its writer made it:
// the events of every revision in [from, upto] that changed keys, so a
// feed that keeps up rebuilds none of them from Badger (etcd hands its
// synced watchers the events of each write the same way). Guarded by the
// shard's mu and updated with its state, so a reader sees the tail and
// the state together.
type recentChanges struct {
	ok    bool // from and upto are meaningful
	from  int64
	upto  int64 // the shard's last entry when the tail was last updated
	recs  []recentRecord
	bytes int
}

type recentRecord struct {
	rev    int64
	events []*mvccpb.Event // as the writer made them; never changed after
	size   int             // estimated, for the bound
}

// advance adds the entry at last (the one after prev) with its events.
func (r *recentChanges) advance(prev, last int64, events []*mvccpb.Event) {
	if last == prev {
		return // the state moved without an entry (a rejected index)
	}
	if !r.ok || r.upto != prev {
		// Nothing known of the revisions before this entry.
		*r = recentChanges{ok: true, from: prev + 1}
	}
	r.upto = last
	if len(events) == 0 {
		return
	}
	size := 0
	for _, ev := range events {
		size += 48 + 2*len(ev.Kv.Key) + len(ev.Kv.Value)
		if ev.PrevKv != nil {
			size += len(ev.PrevKv.Value)
		}
	}
	if size > recentBytes {
		// Too big to keep: the tail starts after it.
		*r = recentChanges{ok: true, from: last + 1, upto: last}
		return
	}
	r.recs = append(r.recs, recentRecord{rev: last, events: events, size: size})
	r.bytes += size
	n := 0
	for r.bytes > recentBytes {
		r.bytes -= r.recs[n].size
		r.from = r.recs[n].rev + 1
		n++
	}
	if n > 0 {
		clear(r.recs[:n])
		r.recs = r.recs[n:]
	}
}

// since returns the records at or above from if the tail holds every one
// up to last (the state's last entry).
func (r *recentChanges) since(from, last int64) ([]recentRecord, bool) {
	if !r.ok || from < r.from || r.upto != last {
		return nil, false
	}
	i := sort.Search(len(r.recs), func(i int) bool { return r.recs[i].rev >= from })
	return r.recs[i:len(r.recs):len(r.recs)], true
}

// readRecent is ReadChanges from the tail, when it covers from: records
// cut by maxBytes and filtered by in the same way.
func (sh *Shard) readRecent(from int64, maxBytes int, in func([]byte) bool) ([]ChangeRecord, State, int64, bool) {
	sh.mu.RLock()
	st := sh.state
	recs, ok := sh.recent.since(from, st.LastEntry)
	sh.mu.RUnlock()
	if !ok {
		return nil, st, 0, false
	}
	var (
		out  []ChangeRecord
		size int
	)
	next := st.LastEntry + 1
	for _, rec := range recs {
		if size >= maxBytes {
			next = rec.rev
			break
		}
		var evs [][]byte
		for _, ev := range rec.events {
			if in != nil && !in(ev.Kv.Key) {
				continue
			}
			b, err := proto.Marshal(ev)
			if err != nil {
				return nil, st, 0, false // cannot happen; the log has it
			}
			evs = append(evs, b)
			size += len(b)
		}
		if len(evs) == 0 {
			size += 16 * len(rec.events) // about what the log's record holds
			continue
		}
		out = append(out, ChangeRecord{Revision: rec.rev, Events: evs})
	}
	return out, st, next, true
}
