package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// writer is one entry being applied: it evaluates against the shard as of
// its previous entry plus its own pending writes, then flushes the writes
// at rev (see pending.go for the two phases and why they are safe).
type writer struct {
	sh   *Shard
	view snapshotView // read-only, at prev.LastEntry
	rd   reader       // view with pending laid over it
	pending
	prev   State
	rev    int64
	index  uint64
	events []*mvccpb.Event
	// leaseEpochs are the epochs of the leases the txn's puts attach keys to.
	leaseEpochs LeaseEpochs
	// bounds are the shard's bounds after the entry (a split changes them).
	bounds Bounds
}

// newWriter starts the entry at Raft index index with revision rev. An entry
// whose revision is not above the last one is rejected (ErrStaleRevision),
// but its index is still recorded as applied.
func (sh *Shard) newWriter(index uint64, rev int64) (*writer, error) {
	st := sh.State()
	if rev <= st.LastEntry {
		if err := sh.RecordRejected(index); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %d <= %d", ErrStaleRevision, rev, st.LastEntry)
	}
	w := &writer{sh: sh, prev: st, rev: rev, index: index, bounds: st.Bounds}
	w.view = snapshotView{sh: sh, txn: sh.store.db.NewTransactionAt(uint64(st.LastEntry), false)}
	w.rd = overlay{view: w.view, p: &w.pending}
	return w, nil
}

// reset drops everything the entry evaluated: a request error applies
// nothing but the state.
func (w *writer) reset() {
	w.pending = pending{}
	w.rd = overlay{view: w.view, p: &w.pending}
	w.events = nil
}

func (w *writer) discard() { w.view.txn.Discard() }

// evaluate runs fn, the evaluation phase of an entry. It has no side
// effects outside the writer, so a panic in it (a request shape nobody
// foresaw) is turned into ErrInvalidEntry on every replica alike instead of
// stopping the replica.
func (w *writer) evaluate(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrInvalidEntry, r)
		}
	}()
	return fn()
}

// commit persists the entry's changes, its change-log record and the new
// state at the entry's revision.
func (w *writer) commit(compact int64) (State, error) {
	defer w.discard()
	// Only an entry that changed a key moves etcd's revision.
	st := State{AppliedIndex: w.index, Revision: w.prev.Revision, CompactRevision: compact, LastEntry: w.rev, Bounds: w.bounds}
	if len(w.events) > 0 {
		st.Revision = w.rev
		final := func(ev *mvccpb.Event) bool { return w.puts[string(ev.Kv.Key)] == ev.Kv }
		for i, part := range encodeRecordParts(w.events, w.rev, changePartBytes, final) {
			w.appendUnique(mutation{key: changePartKey(w.sh.id, w.rev, i), value: part})
		}
	}
	w.appendUnique(mutation{key: stateKey(w.sh.id), value: st.encode()})
	if err := w.sh.store.flush(w.rev, w.muts, w.superseded); err != nil {
		return State{}, fmt.Errorf("mvcc: shard %d entry %d: %w", w.sh.id, w.index, err)
	}
	w.sh.setState(st, w.events, false)
	return st, nil
}

// ApplyTxn applies one etcd transaction at revision rev as the entry at Raft
// index index. A request error (ErrKeyNotFound, ErrCompacted, ErrFutureRev
// from a range inside the txn, ErrKeyTooLarge, ErrInvalidEntry) is returned
// after the entry is recorded as applied with no change, exactly as every
// replica will do. Any other error is a storage failure.
func (sh *Shard) ApplyTxn(index uint64, rev int64, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	return sh.ApplyTxnLeases(index, rev, req, nil)
}

// ApplyTxnLeases is ApplyTxn for a txn whose lease check saw the given
// lease epochs: a put to a lease the shard revoked at or after its epoch
// fails the txn with ErrLeaseNotFound (see RevokeLease).
func (sh *Shard) ApplyTxnLeases(index uint64, rev int64, req *pb.TxnRequest, epochs LeaseEpochs) (*pb.TxnResponse, error) {
	w, err := sh.newWriter(index, rev)
	if err != nil {
		return nil, err
	}
	w.leaseEpochs = epochs
	var resp *pb.TxnResponse
	reqErr := w.evaluate(func() (err error) {
		if err := checkKeys(req); err != nil {
			return err
		}
		if resp, err = w.runTxn(req); err == nil {
			resp.Header = w.header()
		}
		return err
	})
	if reqErr != nil {
		if !isRequestError(reqErr) {
			w.discard()
			return nil, reqErr
		}
		resp = nil
		w.reset() // nothing of the request is applied; only the state advances
	}
	if _, err := w.commit(w.prev.CompactRevision); err != nil {
		return nil, err
	}
	return resp, reqErr
}

// isRequestError tells the errors a request causes (the same on every
// replica, answered as results) from storage failures.
func isRequestError(err error) bool {
	for _, e := range []error{ErrKeyNotFound, ErrCompacted, ErrFutureRev, ErrKeyTooLarge, ErrInvalidEntry, ErrLeaseNotFound, ErrWrongShard} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// checkKeys refuses keys the store cannot hold, anywhere in the txn (the
// gateway refuses them first; this keeps apply total for any entry).
func checkKeys(req *pb.TxnRequest) error {
	for _, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		for _, op := range ops {
			switch {
			case op.GetRequestPut() != nil && len(op.GetRequestPut().Key) > MaxKeyBytes:
				return fmt.Errorf("%w: %d bytes (max %d)", ErrKeyTooLarge, len(op.GetRequestPut().Key), MaxKeyBytes)
			case op.GetRequestTxn() != nil:
				if err := checkKeys(op.GetRequestTxn()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Tick records an entry that changes no data.
func (sh *Shard) Tick(index uint64, rev int64) error {
	w, err := sh.newWriter(index, rev)
	if err != nil {
		return err
	}
	_, err = w.commit(w.prev.CompactRevision)
	return err
}

// Compact drops history below revision compact, as the entry at index with
// revision rev. Reads below compact fail with ErrCompacted afterwards. A
// revision above the shard's is etcd's ErrFutureRev.
func (sh *Shard) Compact(index uint64, rev, compact int64) error {
	return sh.compact(index, rev, compact, false)
}

// CompactCluster is Compact at a revision checked against the whole
// cluster's: one shard of several may be asked to compact above its own
// revision (its keys at compact are its current ones), never at or above
// the entry's own revision.
func (sh *Shard) CompactCluster(index uint64, rev, compact int64) error {
	return sh.compact(index, rev, compact, true)
}

func (sh *Shard) compact(index uint64, rev, compact int64, clusterChecked bool) error {
	w, err := sh.newWriter(index, rev)
	if err != nil {
		return err
	}
	var reqErr error
	switch {
	case compact == 0 && w.prev.CompactRevision == 0:
		// etcd accepts a compaction at 0 on a store never compacted (it
		// changes nothing); unlike etcd, a second one is accepted too.
	case compact <= w.prev.CompactRevision:
		reqErr = ErrCompacted
	case compact > w.prev.Revision && !(clusterChecked && compact < rev):
		reqErr = ErrFutureRev
	default:
		if err := w.dropChanges(compact); err != nil {
			w.discard()
			return err
		}
	}
	newCompact := w.prev.CompactRevision
	if reqErr == nil {
		newCompact = compact
	}
	if _, err := w.commit(newCompact); err != nil {
		return err
	}
	sh.store.setCompacted(sh.id, newCompact)
	return reqErr
}

// dropChanges deletes the change-log records below compact (every part).
func (w *writer) dropChanges(compact int64) error {
	prefix := changePrefix(w.sh.id)
	it := w.view.txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Seek(prefix); it.Valid(); it.Next() {
		k := it.Item().KeyCopy(nil)
		if int64(binary.BigEndian.Uint64(k[9:17])) >= compact {
			break
		}
		w.appendUnique(mutation{key: k, del: true})
	}
	return nil
}

// runTxn evaluates a txn as etcd does: compares (choosing the branches),
// then the checks of the taken branches against the state before the txn,
// then the ops.
func (w *writer) runTxn(req *pb.TxnRequest) (*pb.TxnResponse, error) {
	path, err := w.comparePath(req)
	if err != nil {
		return nil, err
	}
	if err := w.check(req, path); err != nil {
		return nil, err
	}
	resp, _, err := w.execTxn(req, path)
	return resp, err
}

// comparePath evaluates the compares of req and of every nested txn on the
// taken branches, in etcd's order (one bool per txn, depth first).
func (w *writer) comparePath(req *pb.TxnRequest) ([]bool, error) {
	ok := true
	for _, c := range req.Compare {
		r, err := w.compare(c)
		if err != nil {
			return nil, err
		}
		if !r {
			ok = false
			break
		}
	}
	path := []bool{ok}
	ops := req.Success
	if !ok {
		ops = req.Failure
	}
	for _, op := range ops {
		if t := op.GetRequestTxn(); t != nil {
			sub, err := w.comparePath(t)
			if err != nil {
				return nil, err
			}
			path = append(path, sub...)
		}
	}
	return path, nil
}

func (w *writer) compare(c *pb.Compare) (bool, error) {
	var kvs []*mvccpb.KeyValue
	err := w.rd.scan(c.Key, RangeEnd(c.RangeEnd), func(kv *mvccpb.KeyValue) (bool, error) {
		kvs = append(kvs, kv)
		return true, nil
	})
	if err != nil {
		return false, err
	}
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			// A missing key has no value to compare, so it never matches.
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	for _, kv := range kvs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var r int
	switch c.Target {
	case pb.Compare_VALUE:
		r = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		r = cmpInt(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		r = cmpInt(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		r = cmpInt(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		r = cmpInt(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return r == 0
	case pb.Compare_NOT_EQUAL:
		return r != 0
	case pb.Compare_GREATER:
		return r > 0
	case pb.Compare_LESS:
		return r < 0
	}
	return true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// check validates the ops of the taken branches against the state before the
// txn, as etcd does before executing anything: ranges at a revision must be
// readable, ignore_value/ignore_lease need an existing key.
func (w *writer) check(req *pb.TxnRequest, path []bool) error {
	_, err := w.checkOps(req, path)
	return err
}

// readLimit is the highest revision a range of the txn may read at. The
// only data shard is etcd's store: its own revision. One of several reads
// any revision below the entry's: every one of those is assigned, and none
// can still apply here, so its keys there are its keys now (the cluster's
// revision, which a client may ask for, is above this shard's own).
func (w *writer) readLimit() int64 {
	if len(w.prev.Bounds.Start) == 0 && len(w.prev.Bounds.End) == 0 {
		return w.prev.Revision
	}
	return w.rev - 1
}

func (w *writer) checkOps(req *pb.TxnRequest, path []bool) (int, error) {
	ops := req.Success
	if !path[0] {
		ops = req.Failure
	}
	used := 1
	for _, op := range ops {
		switch {
		case op.GetRequestRange() != nil:
			r := op.GetRequestRange().Revision
			if r > w.readLimit() {
				return 0, ErrFutureRev
			}
			if r > 0 && r < w.prev.CompactRevision {
				return 0, ErrCompacted
			}
		case op.GetRequestPut() != nil:
			p := op.GetRequestPut()
			if p.IgnoreValue || p.IgnoreLease {
				kv, err := w.rd.get(p.Key)
				if err != nil {
					return 0, err
				}
				if kv == nil {
					return 0, ErrKeyNotFound
				}
			}
		case op.GetRequestTxn() != nil:
			n, err := w.checkOps(op.GetRequestTxn(), path[used:])
			if err != nil {
				return 0, err
			}
			used += n
		}
	}
	return used, nil
}

// execTxn runs the taken branch; it returns how many path entries it used.
func (w *writer) execTxn(req *pb.TxnRequest, path []bool) (*pb.TxnResponse, int, error) {
	ops := req.Success
	if !path[0] {
		ops = req.Failure
	}
	resp := &pb.TxnResponse{Succeeded: path[0], Responses: make([]*pb.ResponseOp, 0, len(ops))}
	used := 1
	for _, op := range ops {
		var ro *pb.ResponseOp
		switch {
		case op.GetRequestRange() != nil:
			r, err := w.rangeOp(op.GetRequestRange())
			if err != nil {
				return nil, 0, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: r}}
		case op.GetRequestPut() != nil:
			r, err := w.put(op.GetRequestPut())
			if err != nil {
				return nil, 0, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: r}}
		case op.GetRequestDeleteRange() != nil:
			r, err := w.deleteRange(op.GetRequestDeleteRange())
			if err != nil {
				return nil, 0, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: r}}
		case op.GetRequestTxn() != nil:
			r, n, err := w.execTxn(op.GetRequestTxn(), path[used:])
			if err != nil {
				return nil, 0, err
			}
			used += n
			r.Header = &pb.ResponseHeader{} // etcd leaves nested txn headers empty
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: r}}
		default:
			continue
		}
		resp.Responses = append(resp.Responses, ro)
	}
	return resp, used, nil
}

// header is the revision an op inside the txn observes: the new revision
// once the txn changed something, the previous one before.
func (w *writer) header() *pb.ResponseHeader {
	if len(w.events) > 0 {
		return &pb.ResponseHeader{Revision: w.rev}
	}
	return &pb.ResponseHeader{Revision: w.prev.Revision}
}

func (w *writer) rangeOp(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	rd := w.rd
	if r.Revision > 0 {
		// A historical read does not see this txn's writes.
		txn := w.sh.store.db.NewTransactionAt(uint64(r.Revision), false)
		defer txn.Discard()
		rd = snapshotView{sh: w.sh, txn: txn}
	}
	resp, err := rangeIn(rd, r)
	if err != nil {
		return nil, err
	}
	resp.Header = w.header()
	return resp, nil
}

func (w *writer) put(p *pb.PutRequest) (*pb.PutResponse, error) {
	if p.Lease != 0 && !p.IgnoreLease {
		if err := w.checkLease(p.Lease); err != nil {
			return nil, err
		}
	}
	prev, err := w.rd.get(p.Key)
	if err != nil {
		return nil, err
	}
	kv := &mvccpb.KeyValue{Key: p.Key, Value: p.Value, Lease: p.Lease, ModRevision: w.rev, CreateRevision: w.rev, Version: 1}
	if prev != nil {
		kv.CreateRevision = prev.CreateRevision
		kv.Version = prev.Version + 1
		if p.IgnoreValue {
			kv.Value = prev.Value
		}
		if p.IgnoreLease {
			kv.Lease = prev.Lease
		}
	}
	w.putKV(kv)
	w.reindexLease(p.Key, prev, kv.Lease, false)
	// The change log refers to both versions, so watches with prev_kv are
	// served without scanning history.
	w.events = append(w.events, &mvccpb.Event{Type: mvccpb.PUT, Kv: kv, PrevKv: prev})
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: w.rev}}
	if p.PrevKv {
		resp.PrevKv = prev
	}
	return resp, nil
}

func (w *writer) deleteRange(d *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	var kvs []*mvccpb.KeyValue
	err := w.rd.scan(d.Key, RangeEnd(d.RangeEnd), func(kv *mvccpb.KeyValue) (bool, error) {
		kvs = append(kvs, kv)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	w.muts = slices.Grow(w.muts, 2*len(kvs))
	w.events = slices.Grow(w.events, len(kvs))
	for _, kv := range kvs {
		bulk := w.deleteKey(kv.Key)
		w.reindexLease(kv.Key, kv, 0, bulk)
		w.events = append(w.events, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: w.rev}, PrevKv: kv})
	}
	w.deletedSpan(keyspan.FromRequest(d.Key, d.RangeEnd))
	resp := &pb.DeleteRangeResponse{Deleted: int64(len(kvs)), Header: w.header()}
	if d.PrevKv {
		resp.PrevKvs = kvs
	}
	return resp, nil
}

// reindexLease moves key in the lease index from prev's lease to lease
// (0: none); bulk as deleteKey answered for a deleted key.
func (w *writer) reindexLease(key []byte, prev *mvccpb.KeyValue, lease int64, bulk bool) {
	var old int64
	if prev != nil {
		old = prev.Lease
	}
	if old == lease {
		return
	}
	if old != 0 {
		w.del(leaseKey(old, key), bulk)
	}
	if lease != 0 {
		w.set(leaseKey(lease, key), nil)
	}
}

// encodeKV stores a KeyValue without its key (the Badger key holds it).
func encodeKV(kv *mvccpb.KeyValue) []byte {
	c := &mvccpb.KeyValue{CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version, Value: kv.Value, Lease: kv.Lease}
	b, err := proto.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("mvcc: marshal KeyValue: %v", err)) // cannot fail for this message
	}
	return b
}

// changePartBytes bounds one part of a change-log record: a revision with
// many events (a delete of a million keys) is stored in several parts.
const changePartBytes = 4 << 20

// ReadTxn evaluates a txn whose branches only read, at the current revision,
// without a Raft entry (etcd serves read-only txns the same way).
func (sh *Shard) ReadTxn(req *pb.TxnRequest) (*pb.TxnResponse, error) {
	return sh.readTxnAt(req, sh.State(), 0)
}

// ReadTxnAt is ReadTxn at revision at, which the shard has closed (at or
// below its last entry): the keys, and the header's revision, as of it.
func (sh *Shard) ReadTxnAt(req *pb.TxnRequest, at int64) (*pb.TxnResponse, error) {
	st := sh.State()
	switch {
	case at > st.LastEntry:
		return nil, ErrFutureRev
	case at < st.CompactRevision:
		return nil, ErrCompacted
	}
	return sh.readTxnAt(req, st, at)
}

func (sh *Shard) readTxnAt(req *pb.TxnRequest, st State, at int64) (*pb.TxnResponse, error) {
	ts := st.LastEntry
	if at > 0 {
		ts = at
	}
	view := sh.store.db.NewTransactionAt(uint64(ts), false)
	if at > 0 {
		// The txn's reads see the cluster at revision at, and a read
		// inside it may name any revision up to there.
		st.Revision = at
	}
	w := &writer{sh: sh, view: snapshotView{sh: sh, txn: view}, prev: st, rev: st.Revision}
	w.rd = w.view
	defer w.discard()
	var resp *pb.TxnResponse
	err := w.evaluate(func() (err error) {
		resp, err = w.runTxn(req)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp.Header = &pb.ResponseHeader{Revision: st.Revision}
	return resp, nil
}
