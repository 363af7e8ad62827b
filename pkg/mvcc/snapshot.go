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
// snapshotMagic starts a shard snapshot; its header is the shard ID and the
// state record, length-prefixed. The previous format ("-SNAP-2") had a
// fixed 32-byte state and is still read.
var (
	snapshotMagic   = []byte("TESSERA-SHARD-SNAP-3")
	snapshotMagicV2 = []byte("TESSERA-SHARD-SNAP-2")
)

// maxStateBytes bounds a snapshot header's state record: two keys and the
// fixed fields.
const maxStateBytes = stateFixed + 64 + 2*maxSnapshotKey

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

// ErrStateGone: the shard's state record as of a revision is no longer
// kept (the replica installed a snapshot since); another replica may have it.
var ErrStateGone = errors.New("mvcc: the shard's state at that revision is gone")

// PrepareSnapshotAt captures the shard as of revision rev, which it must
// have closed (rev at or below its last entry): the keys, change log and
// state of the last entry at or below rev. Backups of several shards take
// it at one revision, a consistent cut of all of them.
func (sh *Shard) PrepareSnapshotAt(rev int64) (*Snapshot, error) {
	st := sh.State()
	switch {
	case rev > st.LastEntry:
		return nil, ErrFutureRev
	case rev < st.CompactRevision:
		return nil, ErrCompacted
	}
	txn := sh.store.db.NewTransactionAt(uint64(rev), false)
	old, err := sh.stateAt(txn, rev)
	if err != nil {
		txn.Discard()
		return nil, err
	}
	// A compaction applied since dropped history below its revision from
	// this view too: the copy is compacted there.
	old.CompactRevision = max(old.CompactRevision, st.CompactRevision)
	return &Snapshot{sh: sh, state: old, txn: txn}, nil
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
	enc := s.state.encode()
	hdr = binary.AppendUvarint(hdr, uint64(len(enc)))
	hdr = append(hdr, enc...)
	w.Write(hdr)

	ranges := [][2][]byte{changeRange(s.sh.id), {{familyLease}, {familyLease + 1}}, familyRange(familyRevoke, s.sh.id), familyRange(familySplit, s.sh.id)}
	bounds := s.state.Bounds
	if lo, hi, ok := bounds.clip(bounds.Start, []byte{}); ok {
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
			if k := item.Key(); k[0] == familyLease && !bounds.contains(k[9:]) {
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

// familyRange is the key range of a shard's records in a per-shard
// family keyed by shard ID.
func familyRange(family byte, shardID uint64) [2][]byte {
	r := changeRange(shardID)
	r[0][0], r[1][0] = family, family
	return r
}

// Restore replaces the shard's contents with a snapshot written by WriteTo.
func (sh *Shard) Restore(in io.Reader, stop <-chan struct{}) error {
	return sh.restore(in, stop, false)
}

// RestoreFresh is Restore for the first start of a cluster restored from a
// backup: the shard keeps the snapshot's data and revisions, but its Raft
// log starts empty, so its applied index starts at 0.
func (sh *Shard) RestoreFresh(in io.Reader) error { return sh.restore(in, nil, true) }

// record is one Badger version in a snapshot stream.
type record struct {
	key     []byte
	version uint64
	deleted bool
	value   []byte
}

// readHeader checks the magic and returns the shard ID and state.
func readHeader(r *bufio.Reader) (uint64, State, error) {
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil {
		return 0, State{}, fmt.Errorf("mvcc: not a shard snapshot")
	}
	v2 := bytes.Equal(magic, snapshotMagicV2)
	if !v2 && !bytes.Equal(magic, snapshotMagic) {
		return 0, State{}, fmt.Errorf("mvcc: not a shard snapshot")
	}
	var id [8]byte
	if _, err := io.ReadFull(r, id[:]); err != nil {
		return 0, State{}, fmt.Errorf("mvcc: snapshot header: %w", err)
	}
	n := uint64(32)
	if !v2 {
		var err error
		if n, err = binary.ReadUvarint(r); err != nil {
			return 0, State{}, fmt.Errorf("mvcc: snapshot header: %w", err)
		}
	}
	enc, err := ReadClaimed(r, n, maxStateBytes)
	if err != nil {
		return 0, State{}, fmt.Errorf("mvcc: snapshot header: %w", err)
	}
	st, err := decodeState(enc)
	return binary.BigEndian.Uint64(id[:]), st, err
}

// readRecord reads the next record; ok is false at the terminator.
func readRecord(r *bufio.Reader) (rec record, ok bool, err error) {
	klen, err := binary.ReadUvarint(r)
	if err != nil {
		return rec, false, fmt.Errorf("mvcc: snapshot record: %w", err)
	}
	if klen == 0 {
		return rec, false, nil
	}
	if rec.key, err = ReadClaimed(r, klen, maxSnapshotKey); err != nil {
		return rec, false, err
	}
	if rec.version, err = binary.ReadUvarint(r); err != nil {
		return rec, false, err
	}
	flag, err := r.ReadByte()
	if err != nil {
		return rec, false, err
	}
	if rec.deleted = flag == 1; rec.deleted {
		return rec, true, nil
	}
	vlen, err := binary.ReadUvarint(r)
	if err != nil {
		return rec, false, err
	}
	rec.value, err = ReadClaimed(r, vlen, maxSnapshotValue)
	return rec, err == nil, err
}

// Bounds of one snapshot record: Badger's key limit, and its value log
// file size (no value is larger).
const (
	maxSnapshotKey   = 65000
	maxSnapshotValue = 1 << 30
)

// ReadClaimed reads n bytes whose count came from untrusted input (a file
// header, a length prefix): n above max is an error, and memory grows with
// the bytes actually read, never with what the header claims.
func ReadClaimed(r io.Reader, n, max uint64) ([]byte, error) {
	if n > max {
		return nil, fmt.Errorf("mvcc: length %d over the limit %d", n, max)
	}
	if n <= 64<<10 {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		return b, err
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err == nil && uint64(len(b)) != n {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}

// SnapshotInfo describes a shard snapshot stream.
type SnapshotInfo struct {
	ShardID  uint64
	State    State
	Keys     int // live keys at the snapshot's revision
	Versions int // versions of keys kept, tombstones included
}

// InspectSnapshot reads one shard snapshot stream from r (and no further:
// r must be the only reader of the stream, at least 1 MiB buffered).
func InspectSnapshot(r *bufio.Reader) (SnapshotInfo, error) {
	var info SnapshotInfo
	var err error
	if info.ShardID, info.State, err = readHeader(r); err != nil {
		return info, err
	}
	var last []byte
	for {
		rec, ok, err := readRecord(r)
		if err != nil || !ok {
			return info, err
		}
		if rec.key[0] != familyData {
			continue
		}
		info.Versions++
		if !bytes.Equal(rec.key, last) { // the newest version of a key comes first
			last = rec.key
			if !rec.deleted {
				info.Keys++
			}
		}
	}
}

// restore replaces the shard with a snapshot. The shard's own records
// (change log, revoked leases, state) are dropped first. Its keys and
// lease index live in families shared with the store's other shards, which
// Badger cannot drop by range: a shard over the whole keyspace drops them
// too, one over part of it writes the snapshot's versions over its own.
// That is the same history either way: a replica that installs a snapshot
// holds a prefix of the shard's committed log, so every version it has is
// one the snapshot has too (with the same value), or one below the
// compaction revision that no read at or above it can reach; and a fresh
// store (a backup restore) has no versions at all.
func (sh *Shard) restore(in io.Reader, stop <-chan struct{}, fresh bool) error {
	r := bufio.NewReaderSize(in, 1<<20)
	id, st, err := readHeader(r)
	if err != nil {
		return err
	}
	if id != sh.id {
		return fmt.Errorf("mvcc: snapshot of shard %d offered to shard %d", id, sh.id)
	}
	if fresh {
		st.AppliedIndex = 0
	}
	// Readers see the old contents until here and nothing until the new
	// ones are complete (a failed install leaves the shard refusing reads:
	// dragonboat installs the snapshot again or stops).
	cur := sh.Bounds()
	if st.Bounds.Generation == 0 {
		st.Bounds = cur // a snapshot from before states held bounds
	}
	finished := sh.installing()
	// The install rewrites the range's versions: recently written keys'
	// cached versions may be stale. Nothing else writes the range
	// meanwhile (this shard's applier is here; no other shard owns it).
	sh.store.latest.clear()
	db := sh.store.db
	drop := [][]byte{changePrefix(sh.id), revokedPrefix(sh.id), splitPrefix(sh.id), stateKey(sh.id), indexKey(sh.id)}
	if whole(cur) && whole(st.Bounds) {
		drop = append(drop, []byte{familyData}, []byte{familyLease})
	}
	if err := db.DropPrefix(drop...); err != nil {
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
		rec, ok, err := readRecord(r)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if rec.deleted {
			err = wb.DeleteAt(rec.key, rec.version)
		} else {
			err = wb.SetEntryAt(badger.NewEntry(rec.key, rec.value), rec.version)
		}
		if err != nil {
			return err
		}
	}
	if err := wb.SetEntryAt(badger.NewEntry(stateKey(sh.id), st.encode()), uint64(st.LastEntry)); err != nil {
		return err
	}
	if err := wb.SetEntryAt(badger.NewEntry(restoredKey(sh.id), binary.BigEndian.AppendUint64(nil, uint64(st.LastEntry))), uint64(st.LastEntry)); err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("mvcc: restore shard %d: %w", sh.id, err)
	}
	sh.setState(st, nil, true)
	sh.store.setCompacted(sh.id, st.CompactRevision)
	finished()
	return nil
}

// whole reports whether the bounds are the whole keyspace.
func whole(b Bounds) bool { return len(b.Start) == 0 && len(b.End) == 0 }
