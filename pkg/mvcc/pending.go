package mvcc

import (
	"bytes"
	"errors"
	"fmt"
	"sort"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// An entry is applied in two phases, so that no entry depends on what one
// Badger transaction can hold (about 15 % of a memtable):
//
//  1. Evaluate. Every read goes to a read-only view at the shard's previous
//     entry with the entry's own writes laid over it (pending); every write
//     is recorded as a mutation. Nothing touches Badger.
//  2. Flush. The mutations are committed at the entry's revision in as many
//     Badger transactions as they need, the shard state in the last one.
//
// Readers never see half an entry: they read at revisions up to the state's
// revision, and the state moves only after the last commit. A crash between
// two commits leaves versions at the entry's revision that nobody reads;
// Raft replays the entry, whose evaluation reads only below that revision,
// so it writes the same keys with the same values again (idempotent).

// mutation is one Badger write of an entry.
type mutation struct {
	key   []byte
	value []byte
	del   bool
	// bulk marks a delete of a key the entry read from the view and did not
	// write before (most of a large DeleteRange or revoke): it is not
	// indexed, and a later write of the same key supersedes it.
	bulk bool
}

// pending holds an entry's writes during evaluation: the Badger mutations in
// order, with no Badger key written twice at one version (a later write of
// a key replaces the earlier one in place, or supersedes a bulk delete),
// the values of the user keys put and the spans deleted, for reads that
// must see them.
type pending struct {
	muts []mutation
	// byKey indexes the mutations that are not bulk deletes: Badger key ->
	// position in muts. Only puts and what they touch land here, so it
	// stays as small as the request.
	byKey map[string]int
	// superseded holds Badger keys written (indexed) after bulk deletes
	// began: a bulk delete of one of them is skipped at flush.
	superseded map[string]struct{}
	bulks      int
	puts       map[string]*mvccpb.KeyValue
	dels       keyspan.Index[struct{}] // user-key spans the entry deleted
	sorted     []*mvccpb.KeyValue      // puts in key order; nil when stale
}

func (p *pending) record(m mutation) {
	if p.byKey == nil {
		p.byKey = map[string]int{}
	}
	if p.bulks > 0 {
		if p.superseded == nil {
			p.superseded = map[string]struct{}{}
		}
		p.superseded[string(m.key)] = struct{}{}
	}
	if i, ok := p.byKey[string(m.key)]; ok {
		p.muts[i] = m
		return
	}
	p.byKey[string(m.key)] = len(p.muts)
	p.muts = append(p.muts, m)
}

func (p *pending) bulkDelete(key []byte) {
	p.muts = append(p.muts, mutation{key: key, del: true, bulk: true})
	p.bulks++
}

// appendUnique records a mutation of a key nothing else in the entry
// writes (the change log, the state), without indexing it.
func (p *pending) appendUnique(m mutation) { p.muts = append(p.muts, m) }

// putKV records a put of a user key.
func (p *pending) putKV(kv *mvccpb.KeyValue) {
	if p.puts == nil {
		p.puts = map[string]*mvccpb.KeyValue{}
	}
	p.puts[string(kv.Key)] = kv
	p.sorted = nil
	p.record(mutation{key: dataKey(kv.Key), value: encodeKV(kv)})
}

// deleteKey records the delete of a live user key found in span (the
// caller records the span with deletedSpan). It reports whether the delete
// is a bulk one: the key came from the view, not from a put of this entry.
func (p *pending) deleteKey(key []byte) (bulk bool) {
	if _, ok := p.puts[string(key)]; ok {
		delete(p.puts, string(key))
		p.sorted = nil
		p.record(mutation{key: dataKey(key), del: true})
		return false
	}
	p.bulkDelete(dataKey(key))
	return true
}

// deletedSpan records that every key of s live before it was deleted.
func (p *pending) deletedSpan(s keyspan.Span) { p.dels.Insert(s, struct{}{}) }

// deleted reports whether the entry deleted a user key (and did not put
// it again after).
func (p *pending) deleted(key []byte) bool {
	if _, put := p.puts[string(key)]; put || p.dels.Len() == 0 {
		return false
	}
	return p.dels.Any(key)
}

func (p *pending) set(key, value []byte) { p.record(mutation{key: key, value: value}) }

// del deletes a Badger key; bulk as deleteKey answered for its user key.
func (p *pending) del(key []byte, bulk bool) {
	if bulk {
		p.bulkDelete(key)
		return
	}
	p.record(mutation{key: key, del: true})
}

// putsIn returns the pending puts in [lo, hi) of user keys (hi empty: to the
// end), in key order.
func (p *pending) putsIn(lo, hi []byte) []*mvccpb.KeyValue {
	if len(p.puts) == 0 {
		return nil
	}
	if p.sorted == nil {
		p.sorted = make([]*mvccpb.KeyValue, 0, len(p.puts))
		for _, kv := range p.puts {
			p.sorted = append(p.sorted, kv)
		}
		sort.Slice(p.sorted, func(i, j int) bool { return bytes.Compare(p.sorted[i].Key, p.sorted[j].Key) < 0 })
	}
	i := sort.Search(len(p.sorted), func(i int) bool { return bytes.Compare(p.sorted[i].Key, lo) >= 0 })
	j := len(p.sorted)
	if len(hi) > 0 {
		j = sort.Search(len(p.sorted), func(i int) bool { return bytes.Compare(p.sorted[i].Key, hi) >= 0 })
	}
	if i >= j {
		return nil
	}
	return p.sorted[i:j]
}

// overlay reads the shard as a view with pending writes laid over it.
type overlay struct {
	view snapshotView
	p    *pending
}

var _ reader = overlay{}

func (o overlay) get(key []byte) (*mvccpb.KeyValue, error) {
	if kv, ok := o.p.puts[string(key)]; ok {
		return cloneKV(kv), nil
	}
	if o.p.deleted(key) {
		return nil, nil
	}
	return o.view.get(key)
}

func (o overlay) scan(key, end []byte, fn func(*mvccpb.KeyValue) (bool, error)) error {
	if end == nil {
		if !o.view.sh.contains(key) {
			return nil
		}
		kv, err := o.get(key)
		if err != nil || kv == nil {
			return err
		}
		_, err = fn(kv)
		return err
	}
	lo, hi, ok := o.view.sh.clipUser(key, end)
	if !ok {
		return nil
	}
	puts := o.p.putsIn(lo, hi)
	stopped := false
	err := o.view.scan(key, end, func(kv *mvccpb.KeyValue) (bool, error) {
		for len(puts) > 0 && bytes.Compare(puts[0].Key, kv.Key) <= 0 {
			same := bytes.Equal(puts[0].Key, kv.Key)
			more, err := fn(cloneKV(puts[0]))
			puts = puts[1:]
			if err != nil || !more {
				stopped = true
				return false, err
			}
			if same {
				return true, nil // the pending put replaces the stored version
			}
		}
		if o.p.deleted(kv.Key) {
			return true, nil
		}
		more, err := fn(kv)
		if !more {
			stopped = true
		}
		return more, err
	})
	if err != nil || stopped {
		return err
	}
	for _, kv := range puts {
		if more, err := fn(cloneKV(kv)); err != nil || !more {
			return err
		}
	}
	return nil
}

// cloneKV copies a KeyValue so a caller may change it (keys_only clears the
// value) without touching the entry's pending state.
func cloneKV(kv *mvccpb.KeyValue) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision,
		Version: kv.Version, Value: kv.Value, Lease: kv.Lease}
}

// flush commits muts at rev in as many Badger transactions as they need.
// The last mutation (the shard state) is in the last transaction, so the
// entry counts as applied only once everything before it is written.
func (s *Store) flush(rev int64, muts []mutation, superseded map[string]struct{}) error {
	txn := s.db.NewTransactionAt(uint64(rev), true)
	defer func() { txn.Discard() }()
	// inValueLog: the transaction holds a value Badger puts in its value
	// log (a 1 MiB value, a change-log part of a big entry).
	inValueLog := false
	write := func(m mutation) error {
		if m.del {
			return txn.Delete(m.key)
		}
		inValueLog = inValueLog || int64(len(m.value)) >= s.valueLogThreshold
		return txn.Set(m.key, m.value)
	}
	commit := func() error {
		if err := txn.CommitAt(uint64(rev), nil); err != nil {
			return fmt.Errorf("mvcc: commit at %d: %w", rev, err)
		}
		if !inValueLog {
			return nil
		}
		// Badger writes tables from memtables without syncing the value
		// log first: a table made durable could point at value-log bytes
		// a power loss takes (Raft would replay the entry, but the table's
		// pointers stay). Sync the value log now, before any further write
		// of this entry can fill the memtable and start its flush. Writes
		// of other shards of the store are not held back meanwhile, so a
		// flush of that same memtable could still race this sync.
		inValueLog = false
		if err := s.db.Sync(); err != nil {
			return fmt.Errorf("mvcc: sync value log at %d: %w", rev, err)
		}
		if k := s.knobs.SyncedValueLog; k != nil {
			k()
		}
		return nil
	}
	chunks := 0
	for _, m := range muts {
		if _, ok := superseded[string(m.key)]; ok && m.bulk {
			continue // a later write of the key in this entry replaces it
		}
		if k := s.knobs.Wrote; k != nil {
			k(m.key)
		}
		err := write(m)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err := commit(); err != nil {
				return err
			}
			chunks++
			if k := s.knobs.ChunkCommitted; k != nil {
				if err := k(chunks); err != nil {
					return err
				}
			}
			txn = s.db.NewTransactionAt(uint64(rev), true)
			err = write(m)
		}
		if err != nil {
			return fmt.Errorf("mvcc: write %q at %d: %w", m.key, rev, err)
		}
	}
	if err := commit(); err != nil {
		return err
	}
	s.latest.wrote(rev, muts, superseded)
	return nil
}
