package mvcc

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/dgraph-io/badger/v4"
)

// Snapshot format: a header, then every version of every Badger key of the
// shard (data keys in its range, its change log) in key order, newest
// version first, then an empty key as terminator. Badger's Stream/Backup is
// not used: it stops at the newest tombstone and is unsorted.
var snapshotMagic = []byte("TESSERA-SHARD-SNAP-2")

// Snapshot is a consistent view of a shard taken between two applied entries.
type Snapshot struct {
	sh    *Shard
	txn   *badger.Txn
	state State
}

// PrepareSnapshot captures the shard as of its last applied entry. It must be
// called from the apply goroutine; WriteTo may then run concurrently with
// later applies.
func (sh *Shard) PrepareSnapshot() *Snapshot {
	st := sh.State()
	return &Snapshot{sh: sh, state: st, txn: sh.store.db.NewTransactionAt(uint64(st.LastEntry), false)}
}

// State is the shard state the snapshot holds.
func (s *Snapshot) State() State { return s.state }

// Close releases the snapshot's read view.
func (s *Snapshot) Close() { s.txn.Discard() }

// WriteTo streams the snapshot; stop aborts it.
func (s *Snapshot) WriteTo(out io.Writer, stop <-chan struct{}) error {
	w := bufio.NewWriterSize(out, 1<<20)
	w.Write(snapshotMagic)
	var hdr []byte
	hdr = binary.BigEndian.AppendUint64(hdr, s.sh.id)
	hdr = append(hdr, s.state.encode()...)
	w.Write(hdr)

	ranges := [][2][]byte{changeRange(s.sh.id), {{familyLease}, {familyLease + 1}}}
	if lo, hi, ok := s.sh.clip(s.sh.start, []byte{}); ok {
		ranges = append([][2][]byte{{lo, hi}}, ranges...)
	}
	opts := badger.IteratorOptions{AllVersions: true, PrefetchValues: false}
	for _, r := range ranges {
		it := s.txn.NewIterator(opts)
		n := 0
		for it.Seek(r[0]); it.Valid() && bytes.Compare(it.Item().Key(), r[1]) < 0; it.Next() {
			if n++; n%4096 == 0 {
				select {
				case <-stop:
					it.Close()
					return errors.New("mvcc: snapshot stopped")
				default:
				}
			}
			item := it.Item()
			if k := item.Key(); k[0] == familyLease && !s.sh.contains(k[9:]) {
				continue // another shard's key in the lease index
			}
			var rec []byte
			rec = binary.AppendUvarint(rec, uint64(len(item.Key())))
			rec = append(rec, item.Key()...)
			rec = binary.AppendUvarint(rec, item.Version())
			if item.IsDeletedOrExpired() {
				rec = append(rec, 1)
				w.Write(rec)
				continue
			}
			rec = append(rec, 0)
			w.Write(rec)
			if err := item.Value(func(v []byte) error {
				var l []byte
				l = binary.AppendUvarint(l, uint64(len(v)))
				w.Write(l)
				_, err := w.Write(v)
				return err
			}); err != nil {
				it.Close()
				return err
			}
		}
		it.Close()
	}
	w.Write([]byte{0})
	return w.Flush()
}

func changeRange(shardID uint64) [2][]byte {
	p := changePrefix(shardID)
	end := bytes.Clone(p)
	binary.BigEndian.PutUint64(end[1:], shardID+1)
	return [2][]byte{p, end}
}

// Restore replaces the shard's contents with a snapshot written by WriteTo.
func (sh *Shard) Restore(in io.Reader, stop <-chan struct{}) error {
	if len(sh.start) != 0 || len(sh.end) != 0 {
		// Replacing part of the shared keyspace needs range deletion of all
		// versions, which Badger lacks; it arrives with shard splits.
		return fmt.Errorf("mvcc: restore of a partial-range shard %d is not supported", sh.id)
	}
	r := bufio.NewReaderSize(in, 1<<20)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic, snapshotMagic) {
		return fmt.Errorf("mvcc: not a shard snapshot")
	}
	hdr := make([]byte, 8+32)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return fmt.Errorf("mvcc: snapshot header: %w", err)
	}
	if id := binary.BigEndian.Uint64(hdr[:8]); id != sh.id {
		return fmt.Errorf("mvcc: snapshot of shard %d offered to shard %d", id, sh.id)
	}
	st, err := decodeState(hdr[8:])
	if err != nil {
		return err
	}
	db := sh.store.db
	if err := db.DropPrefix([]byte{familyData}, []byte{familyLease}, changePrefix(sh.id), stateKey(sh.id)); err != nil {
		return fmt.Errorf("mvcc: clear shard %d: %w", sh.id, err)
	}
	wb := db.NewManagedWriteBatch()
	defer wb.Cancel()
	for n := 0; ; n++ {
		if n%4096 == 0 {
			select {
			case <-stop:
				return errors.New("mvcc: restore stopped")
			default:
			}
		}
		klen, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("mvcc: snapshot record: %w", err)
		}
		if klen == 0 {
			break
		}
		key := make([]byte, klen)
		if _, err := io.ReadFull(r, key); err != nil {
			return err
		}
		ver, err := binary.ReadUvarint(r)
		if err != nil {
			return err
		}
		flag, err := r.ReadByte()
		if err != nil {
			return err
		}
		if flag == 1 {
			if err := wb.DeleteAt(key, ver); err != nil {
				return err
			}
			continue
		}
		vlen, err := binary.ReadUvarint(r)
		if err != nil {
			return err
		}
		val := make([]byte, vlen)
		if _, err := io.ReadFull(r, val); err != nil {
			return err
		}
		if err := wb.SetEntryAt(badger.NewEntry(key, val), ver); err != nil {
			return err
		}
	}
	if err := wb.SetEntryAt(badger.NewEntry(stateKey(sh.id), st.encode()), uint64(st.LastEntry)); err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("mvcc: restore shard %d: %w", sh.id, err)
	}
	sh.setState(st)
	sh.store.setCompacted(sh.id, st.CompactRevision)
	return nil
}
