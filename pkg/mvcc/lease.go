package mvcc

import (
	"bytes"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// RevokeLease deletes every key of the shard attached to the leases, as
// the entry at Raft index index with revision rev; it returns how many keys
// it deleted. Watches see one DELETE event per key, all at rev.
func (sh *Shard) RevokeLease(index uint64, rev int64, leases []int64) (int64, error) {
	w, err := sh.newWriter(index, rev)
	if err != nil {
		return 0, err
	}
	for _, lease := range leases {
		if err := w.revoke(lease); err != nil {
			w.discard()
			return 0, err
		}
	}
	if _, err := w.commit(w.prev.CompactRevision); err != nil {
		return 0, err
	}
	return int64(len(w.events)), nil
}

// revoke deletes the keys of one lease in the writer's transaction.
func (w *writer) revoke(lease int64) error {
	keys, err := w.sh.leaseKeys(w.view.txn, lease)
	if err != nil {
		return err
	}
	for _, k := range keys {
		kv, err := w.rd.get(k)
		if err != nil {
			return err
		}
		if kv == nil || kv.Lease != lease {
			continue // the index never lags the data; nothing to do
		}
		// No deletedSpan: a revoke entry reads nothing after its deletes
		// (a key is in one lease's index only), and a span per key would
		// cost a map entry for each of maybe millions of keys.
		bulk := w.deleteKey(k)
		w.del(leaseKey(lease, k), bulk)
		w.events = append(w.events, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: k, ModRevision: w.rev}, PrevKv: kv})
	}
	return nil
}

// LeaseKeys lists the shard's keys attached to lease, at the applied revision.
func (sh *Shard) LeaseKeys(lease int64) ([][]byte, error) {
	done, err := sh.reading()
	if err != nil {
		return nil, err
	}
	defer done()
	txn, _, _, err := sh.readTxn(0)
	if err != nil {
		return nil, err
	}
	defer txn.Discard()
	return sh.leaseKeys(txn, lease)
}

func (sh *Shard) leaseKeys(txn *badger.Txn, lease int64) ([][]byte, error) {
	prefix := leaseKey(lease, nil)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	var out [][]byte
	for it.Seek(prefix); it.Valid(); it.Next() {
		k := it.Item().Key()
		if !bytes.HasPrefix(k, prefix) {
			break
		}
		if uk := k[len(prefix):]; sh.contains(uk) {
			out = append(out, bytes.Clone(uk))
		}
	}
	return out, nil
}
