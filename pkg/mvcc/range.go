package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"sort"

	"github.com/dgraph-io/badger/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Range answers an etcd RangeRequest from the shard's keys at req.Revision
// (0: the current revision). The header carries the shard's revision.
func (sh *Shard) Range(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	done, err := sh.reading()
	if err != nil {
		return nil, err
	}
	defer done()
	txn, st, _, err := sh.readTxn(req.Revision)
	if err != nil {
		return nil, err
	}
	defer txn.Discard()
	resp, err := rangeIn(snapshotView{sh, txn}, req)
	if err != nil {
		return nil, err
	}
	resp.Header = &pb.ResponseHeader{Revision: st.Revision}
	return resp, nil
}

// RangeClosed answers req at revision req.Revision as one part of a read of
// several shards at that revision: the revision may be above the shard's
// own (etcd) revision, up to its closed revision (the last applied entry's;
// the caller closes it first), since no entry at or below it can still
// apply here. The header carries the shard's revision as of req.Revision:
// reading there gives the same keys.
func (sh *Shard) RangeClosed(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	done, err := sh.reading()
	if err != nil {
		return nil, err
	}
	defer done()
	st := sh.State()
	rev := req.Revision
	switch {
	case rev <= 0 || rev > st.LastEntry:
		return nil, ErrFutureRev
	case rev < st.CompactRevision:
		return nil, ErrCompacted
	}
	txn := sh.store.db.NewTransactionAt(uint64(rev), false)
	defer txn.Discard()
	resp, err := rangeIn(snapshotView{sh, txn}, req)
	if err != nil {
		return nil, err
	}
	// The gateway answers with the cluster's revision; rev reads the same.
	resp.Header = &pb.ResponseHeader{Revision: rev}
	return resp, nil
}

// RevisionAt is the shard's etcd revision as of rev, a revision it has
// closed (see revisionAt).
func (sh *Shard) RevisionAt(rev int64) (int64, error) {
	st := sh.State()
	if st.Revision <= rev {
		return st.Revision, nil
	}
	txn := sh.store.db.NewTransactionAt(uint64(rev), false)
	defer txn.Discard()
	return sh.revisionAt(txn, st, rev)
}

// revisionAt is the shard's etcd revision as of rev (at most rev), read in
// txn (a view at rev): the newest change-log record at or below rev (each
// entry that changed a key has one), else the revision in its state as of
// rev (stateAt).
func (sh *Shard) revisionAt(txn *badger.Txn, st State, rev int64) (int64, error) {
	if st.Revision <= rev {
		return st.Revision, nil
	}
	prefix := changePrefix(sh.id)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true})
	it.Seek(changeKey(sh.id, rev+1))
	found := int64(0)
	for ; it.Valid(); it.Next() {
		k := it.Item().Key()
		if r := int64(binary.BigEndian.Uint64(k[9:17])); r <= rev {
			found = r
			break
		}
	}
	it.Close()
	if found > 0 && found >= st.CompactRevision {
		return found, nil
	}
	old, err := sh.stateAt(txn, rev)
	if err != nil {
		return 0, err
	}
	return old.Revision, nil
}

// stateAt is the shard's state as of rev, read in txn (a view at rev): the
// state record of the last entry at or below rev, or the initial state if
// no entry at or below rev applied here. Every entry writes a state record,
// and Badger keeps the newest version at or below any revision at or above
// the compaction's, so none means no such entry, unless the shard installed
// a snapshot above rev since (its older records are gone): ErrStateGone.
func (sh *Shard) stateAt(txn *badger.Txn, rev int64) (State, error) {
	item, err := txn.Get(stateKey(sh.id))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		if sh.restoredAbove(rev) {
			return State{}, ErrStateGone
		}
		return State{Revision: InitialRevision, LastEntry: InitialRevision}, nil
	case err != nil:
		return State{}, err
	}
	var st State
	if err := item.Value(func(v []byte) (err error) { st, err = decodeState(v); return err }); err != nil {
		return State{}, err
	}
	return st, nil
}

// restoredAbove reports whether the shard installed a snapshot whose last
// entry is above rev (its state records below that are gone).
func (sh *Shard) restoredAbove(rev int64) bool {
	txn := sh.store.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	item, err := txn.Get(restoredKey(sh.id))
	if err != nil {
		return false
	}
	return item.Version() > uint64(rev)
}

// RangeEnd converts a request's range_end to the form this package uses:
// nil for a single key, empty non-nil for "to the end of the keyspace"
// (etcd encodes that as "\x00").
func RangeEnd(end []byte) []byte {
	if len(end) == 1 && end[0] == 0 {
		return []byte{}
	}
	if len(end) == 0 {
		return nil
	}
	return end
}

// rangeIn evaluates req in txn with etcd's rules: count is the number of
// keys in the range before revision filters and limit; limit applies after
// filters and sorting; more says the limit cut the result.
func rangeIn(rd reader, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	fetch := max(req.Limit, 0) // a negative limit is no limit, as in etcd
	if !defaultOrdering(req.SortTarget, req.SortOrder) || hasRevisionFilters(req) {
		fetch = 0
	}
	if fetch > 0 && fetch < math.MaxInt64 {
		fetch++ // one more tells whether there is more
	}
	var kvs []*mvccpb.KeyValue
	var count int64
	err := rd.scan(req.Key, RangeEnd(req.RangeEnd), func(kv *mvccpb.KeyValue) (bool, error) {
		count++
		if !req.CountOnly && (fetch == 0 || int64(len(kvs)) < fetch) {
			kvs = append(kvs, kv)
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	kvs = filterKVs(kvs, req)
	sortKVs(kvs, req)
	resp := &pb.RangeResponse{Count: count}
	if req.Limit > 0 && int64(len(kvs)) > req.Limit {
		kvs = kvs[:req.Limit]
		resp.More = true
	}
	if req.KeysOnly {
		for _, kv := range kvs {
			kv.Value = nil
		}
	}
	resp.Kvs = kvs
	return resp, nil
}

func defaultOrdering(t pb.RangeRequest_SortTarget, o pb.RangeRequest_SortOrder) bool {
	return o == pb.RangeRequest_NONE || (t == pb.RangeRequest_KEY && o == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

func filterKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	if !hasRevisionFilters(r) {
		return kvs
	}
	out := kvs[:0]
	for _, kv := range kvs {
		switch {
		case r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision,
			r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision,
			r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision,
			r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// SortKVs orders kvs as r asks (etcd's sort target and order; ties keep
// the order they come in). A gateway merging several shards' answers sorts
// with it too, so a range across shards is ordered as one shard's is.
func SortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) { sortKVs(kvs, r) }

func sortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) {
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	if defaultOrdering(r.SortTarget, order) {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch r.SortTarget {
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	}
	if order == pb.RangeRequest_DESCEND {
		asc := less
		less = func(a, b *mvccpb.KeyValue) bool { return asc(b, a) }
	}
	// Stable, so ties keep key order: deterministic across replicas.
	sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[i], kvs[j]) })
}
