package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// InitialRevision is the revision of an empty shard, as in etcd: the first
// write of a fresh cluster gets a larger one.
const InitialRevision = 1

// State is what a shard persists with every applied Raft entry.
type State struct {
	// AppliedIndex is the Raft index of the last applied entry.
	AppliedIndex uint64
	// Revision is etcd's current revision: that of the last entry that
	// changed a key. Reads without a revision read here, and headers carry
	// it. Entries that change no key (a failed compare, a compaction, an
	// empty delete) leave it alone, as etcd does.
	Revision int64
	// CompactRevision: history below it is gone.
	CompactRevision int64
	// LastEntry is the revision of the last applied entry, whether or not it
	// changed a key: every entry of this shard carries a larger one, and it
	// is the Badger version the state was last written at.
	LastEntry int64
	// Bounds is the shard's key range as of the state: a split changes it
	// in the entry that splits.
	Bounds Bounds
}

// Bounds is a shard's key range [Start, End) (an empty End is the end of
// the keyspace) and its descriptor generation, bumped by each split. A
// shard made by a split knows its parent and the split's revision: its own
// change log starts above that revision.
type Bounds struct {
	Start, End    []byte
	Generation    uint64
	Parent        uint64
	SplitRevision int64
}

// contains reports whether a user key is in the range.
func (b Bounds) contains(k []byte) bool {
	return bytes.Compare(k, b.Start) >= 0 && (len(b.End) == 0 || bytes.Compare(k, b.End) < 0)
}

// stateFixed is the size of a state record without its bounds (records
// of 24 and 32 bytes predate LastEntry and bounds).
const stateFixed = 32

func (s State) encode() []byte {
	b := make([]byte, stateFixed, stateFixed+40+len(s.Bounds.Start)+len(s.Bounds.End))
	binary.BigEndian.PutUint64(b[0:], s.AppliedIndex)
	binary.BigEndian.PutUint64(b[8:], uint64(s.Revision))
	binary.BigEndian.PutUint64(b[16:], uint64(s.CompactRevision))
	binary.BigEndian.PutUint64(b[24:], uint64(s.LastEntry))
	b = binary.BigEndian.AppendUint64(b, s.Bounds.Generation)
	b = binary.BigEndian.AppendUint64(b, s.Bounds.Parent)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Bounds.SplitRevision))
	b = binary.AppendUvarint(b, uint64(len(s.Bounds.Start)))
	b = append(b, s.Bounds.Start...)
	b = binary.AppendUvarint(b, uint64(len(s.Bounds.End)))
	return append(b, s.Bounds.End...)
}

func decodeState(b []byte) (State, error) {
	if len(b) != 24 && len(b) < stateFixed {
		return State{}, fmt.Errorf("mvcc: shard state of %d bytes", len(b))
	}
	st := State{
		AppliedIndex:    binary.BigEndian.Uint64(b[0:]),
		Revision:        int64(binary.BigEndian.Uint64(b[8:])),
		CompactRevision: int64(binary.BigEndian.Uint64(b[16:])),
	}
	st.LastEntry = st.Revision // the 24-byte form predates LastEntry: they were equal
	if len(b) >= stateFixed {
		st.LastEntry = int64(binary.BigEndian.Uint64(b[24:]))
	}
	if len(b) > stateFixed {
		bd, err := decodeBounds(b[stateFixed:])
		if err != nil {
			return State{}, err
		}
		st.Bounds = bd
	}
	return st, nil
}

func decodeBounds(b []byte) (Bounds, error) {
	bad := fmt.Errorf("mvcc: shard state bounds of %d bytes", len(b))
	if len(b) < 24 {
		return Bounds{}, bad
	}
	bd := Bounds{Generation: binary.BigEndian.Uint64(b), Parent: binary.BigEndian.Uint64(b[8:]),
		SplitRevision: int64(binary.BigEndian.Uint64(b[16:]))}
	b = b[24:]
	for _, dst := range []*[]byte{&bd.Start, &bd.End} {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return Bounds{}, bad
		}
		*dst = cloneOrNil(b[w : w+int(n)])
		b = b[w+int(n):]
	}
	if len(b) != 0 || bd.Generation == 0 {
		return Bounds{}, bad
	}
	return bd, nil
}

// Shard is one shard's view of the store: the user keys in [start, end)
// (an empty end is the end of the keyspace), its change log and its state.
//
// Apply, Compact and Restore must be called by one goroutine at a time (the
// Raft apply loop); Range, State and snapshots may run concurrently with it.
type Shard struct {
	store *Store
	id    uint64

	mu    sync.RWMutex // guards state and changed; held briefly, never across I/O
	state State
	// changed is closed (and replaced) whenever state changes: change
	// feeds wait on it instead of polling.
	changed chan struct{}

	// readers holds reads (shared) against a snapshot install (exclusive):
	// an install waits for the reads in progress, and reads that come
	// while it runs fail with ErrRestoring instead of seeing part of it.
	readers   sync.RWMutex
	restoring bool // guarded by readers

	recent recentChanges // guarded by mu
}

// OpenShard loads the shard's persisted state, or the initial one. start
// and end are the range it was created with: a shard whose state records
// its bounds (every state written since bounds were) keeps its own.
func (s *Store) OpenShard(id uint64, start, end []byte) (*Shard, error) {
	sh := &Shard{store: s, id: id, changed: make(chan struct{})}
	st, err := sh.loadState()
	if err != nil {
		return nil, err
	}
	if st.Bounds.Generation == 0 {
		st.Bounds = Bounds{Start: cloneOrNil(start), End: cloneOrNil(end), Generation: 1}
	}
	sh.state = st
	s.setCompacted(id, st.CompactRevision)
	return sh, nil
}

func (sh *Shard) loadState() (State, error) {
	txn := sh.store.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	st := State{Revision: InitialRevision, LastEntry: InitialRevision}
	item, err := txn.Get(stateKey(sh.id))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
	case err != nil:
		return State{}, fmt.Errorf("mvcc: load shard %d state: %w", sh.id, err)
	default:
		v, err := item.ValueCopy(nil)
		if err != nil {
			return State{}, err
		}
		if st, err = decodeState(v); err != nil {
			return State{}, err
		}
	}
	// A rejected entry after the last accepted one still counts as applied.
	item, err = txn.Get(indexKey(sh.id))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
	case err != nil:
		return State{}, fmt.Errorf("mvcc: load shard %d index: %w", sh.id, err)
	default:
		st.AppliedIndex = max(st.AppliedIndex, item.Version())
	}
	return st, nil
}

// RecordRejected records index as applied for an entry that changed
// nothing (a stale revision), so that the applied index Open reports never
// falls behind an index dragonboat took a snapshot at. The record is its
// own key versioned by the Raft index: the state record's version belongs
// to the last accepted entry's revision and is not written twice.
func (sh *Shard) RecordRejected(index uint64) error {
	st := sh.State()
	if index <= st.AppliedIndex {
		return nil // replayed
	}
	txn := sh.store.db.NewTransactionAt(index, true)
	defer txn.Discard()
	if err := txn.Set(indexKey(sh.id), nil); err != nil {
		return err
	}
	if err := txn.CommitAt(index, nil); err != nil {
		return fmt.Errorf("mvcc: shard %d record index %d: %w", sh.id, index, err)
	}
	st.AppliedIndex = index
	sh.setState(st, nil, false)
	return nil
}

// ID is the shard's ID.
func (sh *Shard) ID() uint64 { return sh.id }

// State returns the shard's last applied state.
func (sh *Shard) State() State {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.state
}

// Changed returns a channel that is closed at the next state change (an
// applied entry or a restored snapshot).
func (sh *Shard) Changed() <-chan struct{} {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.changed
}

// setState makes st the shard's state. events are those of the entry
// that made it (if any); a restored state (a snapshot install) drops the
// tail of recent changes, which no longer follows from it.
func (sh *Shard) setState(st State, events []*mvccpb.Event, restored bool) {
	sh.mu.Lock()
	if restored {
		sh.recent = recentChanges{}
	} else {
		sh.recent.advance(sh.state.LastEntry, st.LastEntry, events)
	}
	sh.state = st
	close(sh.changed)
	sh.changed = make(chan struct{})
	sh.mu.Unlock()
}

// Bounds is the shard's current key range and generation.
func (sh *Shard) Bounds() Bounds { return sh.State().Bounds }

// contains reports whether a user key is in the shard's range.
func (sh *Shard) contains(k []byte) bool { return sh.Bounds().contains(k) }

// clipUser intersects the request range [key, end) (end non-nil; empty is
// "to the end of the keyspace") with the shard's range, in user keys; an
// empty hi is the end of the keyspace.
func (sh *Shard) clipUser(key, end []byte) (lo, hi []byte, ok bool) {
	return sh.Bounds().clipUser(key, end)
}

func (b Bounds) clipUser(key, end []byte) (lo, hi []byte, ok bool) {
	if end == nil {
		end = []byte{} // the callers' empty end: to the end of the keyspace
	}
	s, ok := keyspan.Span{Key: key, End: end}.Clip(b.Start, b.End)
	if !ok {
		return nil, nil, false
	}
	return s.Key, s.End, true
}

// clip is clipUser in Badger keys. A nil end in the request means the
// single key.
func (sh *Shard) clip(key, end []byte) (lo, hi []byte, ok bool) { return sh.Bounds().clip(key, end) }

func (b Bounds) clip(key, end []byte) (lo, hi []byte, ok bool) {
	if end == nil {
		if !b.contains(key) {
			return nil, nil, false
		}
		return dataKey(key), append(dataKey(key), 0), true
	}
	key, end, ok = b.clipUser(key, end)
	if !ok {
		return nil, nil, false
	}
	lo = dataKey(key)
	if len(end) == 0 {
		hi = []byte{familyData + 1}
	} else {
		hi = dataKey(end)
	}
	return lo, hi, true
}

// reader is a view of the shard's live keys: a Badger read view, or one
// with an entry's pending writes laid over it.
type reader interface {
	// get returns the live KeyValue of one key, or nil.
	get(key []byte) (*mvccpb.KeyValue, error)
	// scan walks the live keys of [key, end) (end as RangeEnd returns it) in
	// key order, calling fn until it returns false.
	scan(key, end []byte, fn func(kv *mvccpb.KeyValue) (bool, error)) error
}

// snapshotView reads the shard through a Badger transaction.
type snapshotView struct {
	sh  *Shard
	txn *badger.Txn
}

var _ reader = snapshotView{}

func (v snapshotView) scan(key, end []byte, fn func(kv *mvccpb.KeyValue) (bool, error)) error {
	sh := v.sh
	if end == nil {
		// A point lookup: an iterator would step over every older version
		// of the key, which makes hot keys (Kubernetes objects updated in
		// a loop) slower with each write until the next compaction.
		if !sh.contains(key) {
			return nil
		}
		kv, err := v.get(key)
		if err != nil || kv == nil {
			return err
		}
		_, err = fn(kv)
		return err
	}
	lo, hi, ok := sh.clip(key, end)
	if !ok {
		return nil
	}
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	it := v.txn.NewIterator(opts)
	defer it.Close()
	for it.Seek(lo); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, hi) >= 0 {
			break
		}
		kv := &mvccpb.KeyValue{}
		if err := item.Value(func(v []byte) error { return proto.Unmarshal(v, kv) }); err != nil {
			return fmt.Errorf("mvcc: decode %q: %w", k, err)
		}
		kv.Key = bytes.Clone(k[1:])
		more, err := fn(kv)
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (v snapshotView) get(key []byte) (*mvccpb.KeyValue, error) {
	dk := dataKey(key)
	decode := func(b []byte) (*mvccpb.KeyValue, error) {
		kv := &mvccpb.KeyValue{}
		if err := proto.Unmarshal(b, kv); err != nil {
			return nil, fmt.Errorf("mvcc: decode %q: %w", key, err)
		}
		kv.Key = bytes.Clone(key)
		return kv, nil
	}
	if b, ok := v.sh.store.latest.get(dk, v.txn.ReadTs()); ok {
		if b == nil {
			return nil, nil // deleted
		}
		return decode(b)
	}
	item, err := v.txn.Get(dk)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var kv *mvccpb.KeyValue
	err = item.Value(func(b []byte) (err error) {
		kv, err = decode(b)
		return err
	})
	return kv, err
}

// reading admits a read of the shard's data: it fails with ErrRestoring
// while a snapshot is being installed, else holds installs off until done
// is called.
func (sh *Shard) reading() (done func(), err error) {
	sh.readers.RLock()
	if sh.restoring {
		sh.readers.RUnlock()
		return nil, ErrRestoring
	}
	return sh.readers.RUnlock, nil
}

// installing marks the shard as installing a snapshot once the reads in
// progress are done; the returned func ends the install.
func (sh *Shard) installing() (done func()) {
	sh.readers.Lock()
	sh.restoring = true
	sh.readers.Unlock()
	return func() {
		sh.readers.Lock()
		sh.restoring = false
		sh.readers.Unlock()
	}
}

// readTxn opens a read-only view at rev, checking it against the state.
// The caller must hold reading.
func (sh *Shard) readTxn(rev int64) (*badger.Txn, State, int64, error) {
	st := sh.State()
	switch {
	case rev <= 0:
		rev = st.Revision
	case rev > st.Revision:
		return nil, st, 0, ErrFutureRev
	case rev < st.CompactRevision:
		return nil, st, 0, ErrCompacted
	}
	return sh.store.db.NewTransactionAt(uint64(rev), false), st, rev, nil
}

// cloneOrNil copies b; empty is nil, so bounds compare alike however
// they were made.
func cloneOrNil(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}
