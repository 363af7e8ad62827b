package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// LeaseEpochs maps a lease ID to its epoch (the meta log index of its
// grant), as a txn's lease check saw it.
type LeaseEpochs map[int64]uint64

// RevokeLease deletes every key of the shard attached to the leases, as
// the entry at Raft index index with revision rev; it returns how many keys
// it deleted. Watches see one DELETE event per key, all at rev.
//
// It also records each lease as revoked at its epoch (epochs is parallel
// to leases; missing ones are 0): from this entry on, a put attaching a key
// to the lease fails with ErrLeaseNotFound unless the txn's lease check saw
// a later epoch (the ID granted again). So no key outlives its lease, even
// a put that passed the gateway's check just before the revoke.
func (sh *Shard) RevokeLease(index uint64, rev int64, leases []int64, epochs []uint64) (int64, error) {
	w, err := sh.newWriter(index, rev)
	if err != nil {
		return 0, err
	}
	marked := map[int64]bool{}
	for i, lease := range leases {
		var epoch uint64
		if i < len(epochs) {
			epoch = epochs[i]
		}
		err := w.revoke(lease)
		if err == nil && !marked[lease] {
			marked[lease] = true
			err = w.markRevoked(lease, epoch)
		}
		if err != nil {
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

// markRevoked records the lease as revoked at epoch (keeping a later
// epoch already recorded).
func (w *writer) markRevoked(lease int64, epoch uint64) error {
	prev, found, err := w.revokedEpoch(lease)
	if err != nil {
		return err
	}
	if found && prev >= epoch {
		return nil
	}
	w.set(revokedKey(w.sh.id, lease), binary.BigEndian.AppendUint64(nil, epoch))
	return nil
}

// revokedEpoch reads the epoch the lease was revoked at on this shard, as
// of the previous entry.
func (w *writer) revokedEpoch(lease int64) (uint64, bool, error) {
	item, err := w.view.txn.Get(revokedKey(w.sh.id, lease))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	var epoch uint64
	err = item.Value(func(v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("mvcc: revoked-lease record of %d bytes", len(v))
		}
		epoch = binary.BigEndian.Uint64(v)
		return nil
	})
	return epoch, true, err
}

// checkLease refuses a put to a lease this shard revoked at or after the
// epoch the txn's lease check saw.
func (w *writer) checkLease(lease int64) error {
	revoked, found, err := w.revokedEpoch(lease)
	if err != nil {
		return err
	}
	if found && w.leaseEpochs[lease] <= revoked {
		return fmt.Errorf("%w: lease %x revoked on shard %d", ErrLeaseNotFound, lease, w.sh.id)
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
