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
}

func (s State) encode() []byte {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b[0:], s.AppliedIndex)
	binary.BigEndian.PutUint64(b[8:], uint64(s.Revision))
	binary.BigEndian.PutUint64(b[16:], uint64(s.CompactRevision))
	binary.BigEndian.PutUint64(b[24:], uint64(s.LastEntry))
	return b
}

func decodeState(b []byte) (State, error) {
	if len(b) != 24 && len(b) != 32 {
		return State{}, fmt.Errorf("mvcc: shard state of %d bytes", len(b))
	}
	st := State{
		AppliedIndex:    binary.BigEndian.Uint64(b[0:]),
		Revision:        int64(binary.BigEndian.Uint64(b[8:])),
		CompactRevision: int64(binary.BigEndian.Uint64(b[16:])),
	}
	st.LastEntry = st.Revision // the 24-byte form predates LastEntry: they were equal
	if len(b) == 32 {
		st.LastEntry = int64(binary.BigEndian.Uint64(b[24:]))
	}
	return st, nil
}

// Shard is one shard's view of the store: the user keys in [start, end)
// (an empty end is the end of the keyspace), its change log and its state.
//
// Apply, Compact and Restore must be called by one goroutine at a time (the
// Raft apply loop); Range, State and snapshots may run concurrently with it.
type Shard struct {
	store      *Store
	id         uint64
	start, end []byte

	mu    sync.RWMutex // guards state and changed; held briefly, never across I/O
	state State
	// changed is closed (and replaced) whenever state changes: change
	// feeds wait on it instead of polling.
	changed chan struct{}
}

// OpenShard loads the shard's persisted state, or the initial one.
func (s *Store) OpenShard(id uint64, start, end []byte) (*Shard, error) {
	sh := &Shard{store: s, id: id, start: bytes.Clone(start), end: bytes.Clone(end), changed: make(chan struct{})}
	st, err := sh.loadState()
	if err != nil {
		return nil, err
	}
	sh.state = st
	s.setCompacted(id, st.CompactRevision)
	return sh, nil
}

func (sh *Shard) loadState() (State, error) {
	txn := sh.store.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	item, err := txn.Get(stateKey(sh.id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return State{Revision: InitialRevision, LastEntry: InitialRevision}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("mvcc: load shard %d state: %w", sh.id, err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return State{}, err
	}
	return decodeState(v)
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

func (sh *Shard) setState(st State) {
	sh.mu.Lock()
	sh.state = st
	close(sh.changed)
	sh.changed = make(chan struct{})
	sh.mu.Unlock()
}

// contains reports whether a user key is in the shard's range.
func (sh *Shard) contains(k []byte) bool {
	return bytes.Compare(k, sh.start) >= 0 && (len(sh.end) == 0 || bytes.Compare(k, sh.end) < 0)
}

// clip intersects the request range [key, end) with the shard's range and
// returns Badger keys. A nil end in the request means the single key; an
// empty non-nil end means "to the end of the keyspace".
func (sh *Shard) clip(key, end []byte) (lo, hi []byte, ok bool) {
	if end == nil {
		if !sh.contains(key) {
			return nil, nil, false
		}
		return dataKey(key), append(dataKey(key), 0), true
	}
	if bytes.Compare(key, sh.start) < 0 {
		key = sh.start
	}
	if len(sh.end) > 0 && (len(end) == 0 || bytes.Compare(end, sh.end) > 0) {
		end = sh.end
	}
	if len(end) > 0 && bytes.Compare(key, end) >= 0 {
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

// kvIter walks the live keys of [key, end) as seen by txn, in key order,
// calling fn until it returns false. Values are decoded only if withValue.
func (sh *Shard) kvIter(txn *badger.Txn, key, end []byte, fn func(kv *mvccpb.KeyValue) (bool, error)) error {
	if end == nil {
		// A point lookup: an iterator would step over every older version
		// of the key, which makes hot keys (Kubernetes objects updated in
		// a loop) slower with each write until the next compaction.
		if !sh.contains(key) {
			return nil
		}
		kv, err := sh.get(txn, key)
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
	it := txn.NewIterator(opts)
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

// get returns the live KeyValue of one key, or nil.
func (sh *Shard) get(txn *badger.Txn, key []byte) (*mvccpb.KeyValue, error) {
	item, err := txn.Get(dataKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	kv := &mvccpb.KeyValue{}
	if err := item.Value(func(v []byte) error { return proto.Unmarshal(v, kv) }); err != nil {
		return nil, fmt.Errorf("mvcc: decode %q: %w", key, err)
	}
	kv.Key = bytes.Clone(key)
	return kv, nil
}

// readTxn opens a read-only view at rev, checking it against the state.
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
