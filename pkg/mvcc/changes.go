package mvcc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ChangeRecord is one revision's entry in a shard's change log: its events
// as serialized mvccpb.Events (each with prev_kv when the key existed), in
// the order the revision made them.
type ChangeRecord struct {
	Revision int64
	Events   [][]byte
}

// A change-log record names its events' versions instead of copying them
// (decision 0015): a put's key-value is the key's Badger version at the
// record's revision, its prev_kv the version at the prev mod revision the
// record keeps, both kept by Badger for every record at or above the
// compaction revision. Only what the data versions do not hold is inline:
// a key put and deleted by one txn (its put's version was replaced by the
// delete) and a prev_kv written by the same entry.
//
// The format: refsFormat, then per event a flags byte, the key (put or
// delete by reference) or the inline KeyValue, and the prev's mod revision
// or the inline prev KeyValue. Records written before this format (no
// refsFormat byte) are whole serialized Events, and read as such.
const refsFormat = 0x00

const (
	refDelete     = 1 << 0 // a DELETE event; else a PUT
	refKVInline   = 1 << 1 // the event's KeyValue follows, serialized
	refPrevRef    = 1 << 2 // prev_kv is the key's version at the revision that follows
	refPrevInline = 1 << 3 // prev_kv follows, serialized
	refFlags      = refDelete | refKVInline | refPrevRef | refPrevInline
)

// eventRef is one event of a record in the refsFormat.
type eventRef struct {
	flags   byte
	key     []byte // the event's key
	kv      []byte // refKVInline: the serialized KeyValue
	prevRev int64  // refPrevRef
	prevKV  []byte // refPrevInline: the serialized KeyValue
}

// refFlagsOf is the flags an event of an entry at rev is written with.
// final reports whether the Badger version of ev's key at rev is ev's own
// key-value (false for a put a later op of the same txn deleted).
func refFlagsOf(ev *mvccpb.Event, rev int64, final bool) byte {
	var flags byte
	if ev.Type == mvccpb.DELETE {
		flags |= refDelete
	}
	if !final && ev.Type == mvccpb.PUT {
		flags |= refKVInline
	}
	switch {
	case ev.PrevKv == nil:
	case ev.PrevKv.ModRevision < rev && flags&refKVInline == 0:
		flags |= refPrevRef
	default:
		flags |= refPrevInline
	}
	return flags
}

// appendEventRef appends an event written with flags (refFlagsOf).
func appendEventRef(buf []byte, ev *mvccpb.Event, flags byte) []byte {
	buf = append(buf, flags)
	if flags&refKVInline != 0 {
		buf = appendMessage(buf, ev.Kv)
	} else {
		buf = protowire.AppendBytes(buf, ev.Kv.Key)
	}
	switch {
	case flags&refPrevRef != 0:
		buf = protowire.AppendVarint(buf, uint64(ev.PrevKv.ModRevision))
	case flags&refPrevInline != 0:
		buf = appendMessage(buf, ev.PrevKv)
	}
	return buf
}

func appendMessage(buf []byte, m *mvccpb.KeyValue) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("mvcc: marshal KeyValue: %v", err)) // cannot fail for this message
	}
	return protowire.AppendBytes(buf, b)
}

// eventRefSize is the size appendEventRef gives ev.
func eventRefSize(ev *mvccpb.Event, flags byte) int {
	n := 1
	if flags&refKVInline != 0 {
		n += protowire.SizeBytes(proto.Size(ev.Kv))
	} else {
		n += protowire.SizeBytes(len(ev.Kv.Key))
	}
	switch {
	case flags&refPrevRef != 0:
		n += protowire.SizeVarint(uint64(ev.PrevKv.ModRevision))
	case flags&refPrevInline != 0:
		n += protowire.SizeBytes(proto.Size(ev.PrevKv))
	}
	return n
}

// encodeRecordParts writes an entry's events at rev in the refsFormat, cut
// into parts of about maxPart bytes (an event is never cut). final tells
// whether a put's key-value is its key's version at rev.
func encodeRecordParts(evs []*mvccpb.Event, rev int64, maxPart int, final func(*mvccpb.Event) bool) [][]byte {
	// Sizes first, so that each part is allocated once at its final size
	// (a delete of a million keys writes tens of MiB of references).
	flags := make([]byte, len(evs))
	var parts [][]byte
	flush := func(from, upto, n int) {
		buf := make([]byte, 1, 1+n)
		buf[0] = refsFormat
		for i := from; i < upto; i++ {
			buf = appendEventRef(buf, evs[i], flags[i])
		}
		parts = append(parts, buf)
	}
	from, n := 0, 0
	for i, ev := range evs {
		flags[i] = refFlagsOf(ev, rev, ev.Type != mvccpb.PUT || final(ev))
		size := eventRefSize(ev, flags[i])
		if i > from && n+size > maxPart {
			flush(from, i, n)
			from, n = i, 0
		}
		n += size
	}
	flush(from, len(evs), n)
	return parts
}

// parseEventRefs reads a record part in the refsFormat (after its format
// byte).
func parseEventRefs(b []byte) ([]eventRef, error) {
	var out []eventRef
	for len(b) > 0 {
		e := eventRef{flags: b[0]}
		b = b[1:]
		// An inline event is whole: its prev_kv is inline too (a reference
		// would need the key, which is inside the inline KeyValue).
		if e.flags&^refFlags != 0 || e.flags&refPrevRef != 0 && e.flags&(refPrevInline|refKVInline) != 0 {
			return nil, errCorruptRecord
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return nil, errCorruptRecord
		}
		if e.flags&refKVInline != 0 {
			var kv mvccpb.KeyValue
			if proto.Unmarshal(v, &kv) != nil {
				return nil, errCorruptRecord
			}
			e.kv, e.key = v, kv.Key
		} else {
			e.key = v
		}
		b = b[n:]
		switch {
		case e.flags&refPrevRef != 0:
			r, n := protowire.ConsumeVarint(b)
			if n < 0 || r == 0 || r > 1<<62 {
				return nil, errCorruptRecord
			}
			e.prevRev, b = int64(r), b[n:]
		case e.flags&refPrevInline != 0:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !validKV(v) {
				return nil, errCorruptRecord
			}
			e.prevKV, b = v, b[n:]
		}
		out = append(out, e)
	}
	return out, nil
}

var errCorruptRecord = errors.New("mvcc: corrupt change record")

// validKV reports whether b is a serialized KeyValue: an inline one is
// passed on to feeds as it is, inside the event.
func validKV(b []byte) bool { return proto.Unmarshal(b, &mvccpb.KeyValue{}) == nil }

// ReadChanges reads the change log from revision from (inclusive) up to the
// shard's last applied entry, stopping once the events read hold maxBytes
// or more. Only events of keys in (in nil: every key) are returned; a
// revision with none is left out. It returns the records, the state they
// were read at, and the next revision to read (every revision below it
// with events was returned). Read to the end, next is above the last entry
// (the shard's closed revision), even where that entry changed no key (a
// tick): a feed reports the shard closed up to it.
//
// The newest revisions come from the writer's tail (recent.go) while it
// holds them, older ones from the log. from below the compaction revision
// is ErrCompacted: those records are gone, and so is a record a compaction
// overtook during the read.
func (sh *Shard) ReadChanges(from int64, maxBytes int, in func(key []byte) bool) ([]ChangeRecord, State, int64, error) {
	done, err := sh.reading()
	if err != nil {
		return nil, sh.State(), 0, err
	}
	defer done()
	st := sh.State()
	// Below the compaction records are gone, unless there were none to
	// lose: from above the shard's last write (one shard of several may
	// be compacted above its own revision).
	if from < st.CompactRevision && from <= st.Revision {
		return nil, st, 0, ErrCompacted
	}
	if from > st.Revision {
		return nil, st, max(from, st.LastEntry+1), nil
	}
	if recs, st, next, ok := sh.readRecent(from, maxBytes, in); ok {
		return recs, st, next, nil
	}
	return sh.readLog(st, from, maxBytes, in)
}

// readLog is ReadChanges from the records in Badger, as of st.
func (sh *Shard) readLog(st State, from int64, maxBytes int, in func([]byte) bool) ([]ChangeRecord, State, int64, error) {
	txn := sh.store.db.NewTransactionAt(uint64(st.LastEntry), false)
	defer txn.Discard()
	prefix := changePrefix(sh.id)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
	defer it.Close()
	var (
		out  []ChangeRecord
		size int
		rd   *versionReader
	)
	defer func() { rd.close() }()
	next := st.LastEntry + 1
	for it.Seek(changeKey(sh.id, from)); it.Valid(); it.Next() {
		item := it.Item()
		rev := int64(binary.BigEndian.Uint64(item.Key()[9:17]))
		// A record in several parts is returned whole.
		more := len(out) > 0 && out[len(out)-1].Revision == rev
		if size >= maxBytes && !more {
			next = rev
			break
		}
		if rd == nil || rd.rev != rev {
			rd.close()
			rd = &versionReader{sh: sh, rev: rev}
		}
		var evs [][]byte
		err := item.Value(func(v []byte) (err error) {
			evs, err = rd.events(v, in)
			return err
		})
		if errors.Is(err, ErrCompacted) {
			return nil, sh.State(), 0, err
		}
		if err != nil {
			return nil, st, 0, fmt.Errorf("mvcc: shard %d change record %d: %w", sh.id, rev, err)
		}
		for _, ev := range evs {
			size += len(ev)
		}
		switch {
		case more:
			out[len(out)-1].Events = append(out[len(out)-1].Events, evs...)
		case len(evs) > 0:
			out = append(out, ChangeRecord{Revision: rev, Events: evs})
		default:
			// Nothing in the keys asked for: the record still counts
			// towards the batch, by its size, so a filtered read of a
			// long log is bounded too.
			size += int(item.ValueSize())
		}
	}
	return out, st, next, nil
}

// versionReader serializes the events of one record, reading the versions
// it refers to from views at the record's revision and the one below.
type versionReader struct {
	sh       *Shard
	rev      int64
	at, prev *badger.Txn
}

func (r *versionReader) close() {
	if r == nil {
		return
	}
	for _, t := range []*badger.Txn{r.at, r.prev} {
		if t != nil {
			t.Discard()
		}
	}
}

// events returns a record part's events of keys in in (nil: all).
func (r *versionReader) events(part []byte, in func([]byte) bool) ([][]byte, error) {
	if len(part) == 0 || part[0] != refsFormat {
		return wholeEvents(part, in)
	}
	refs, err := parseEventRefs(part[1:])
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(refs))
	for _, e := range refs {
		if in != nil && !in(e.key) {
			continue
		}
		ev, err := r.event(e)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// event serializes one event as an mvccpb.Event, its fields in number
// order as proto.Marshal writes them.
func (r *versionReader) event(e eventRef) ([]byte, error) {
	var kvItem, prevItem *badger.Item
	var kvInline []byte
	switch {
	case e.kv != nil:
		kvInline = e.kv
	case e.flags&refDelete != 0:
		kvInline = deletedKV(e.key, r.rev)
	default:
		item, err := r.version(&r.at, r.rev, e.key, r.rev)
		if err != nil {
			return nil, err
		}
		kvItem = item
	}
	prevInline := e.prevKV
	if e.prevRev > 0 {
		item, err := r.version(&r.prev, r.rev-1, e.key, e.prevRev)
		switch {
		case errors.Is(err, errVersionGone):
			// Compacted away with its revision: etcd, which reads the
			// previous version at mod_revision-1, has no prev_kv there
			// either.
		case err != nil:
			return nil, err
		default:
			prevItem = item
		}
	}
	var out []byte
	build := func(kvStored, prevStored []byte) {
		kvLen, prevLen := len(kvInline), len(prevInline)
		if kvItem != nil {
			kvLen = storedKVSize(e.key, kvStored)
		}
		if prevItem != nil {
			prevLen = storedKVSize(e.key, prevStored)
		}
		n := 1 + protowire.SizeBytes(kvLen)
		if prevItem != nil || prevInline != nil {
			n += 1 + protowire.SizeBytes(prevLen)
		}
		if e.flags&refDelete != 0 {
			n += 2
		}
		out = make([]byte, 0, n)
		if e.flags&refDelete != 0 {
			out = protowire.AppendTag(out, 1, protowire.VarintType)
			out = protowire.AppendVarint(out, uint64(mvccpb.DELETE))
		}
		out = protowire.AppendTag(out, 2, protowire.BytesType)
		if kvItem != nil {
			out = appendStoredKV(out, e.key, kvStored)
		} else {
			out = protowire.AppendBytes(out, kvInline)
		}
		switch {
		case prevItem != nil:
			out = protowire.AppendTag(out, 3, protowire.BytesType)
			out = appendStoredKV(out, e.key, prevStored)
		case prevInline != nil:
			out = protowire.AppendTag(out, 3, protowire.BytesType)
			out = protowire.AppendBytes(out, prevInline)
		}
	}
	// The items' values are valid only inside their callbacks.
	withValue := func(item *badger.Item, fn func([]byte) error) error {
		if item == nil {
			return fn(nil)
		}
		return item.Value(fn)
	}
	err := withValue(kvItem, func(kv []byte) error {
		return withValue(prevItem, func(prev []byte) error {
			build(kv, prev)
			return nil
		})
	})
	return out, err
}

// errVersionGone: the version a record refers to is no longer in Badger,
// because a compaction above it let Badger drop it.
var errVersionGone = errors.New("mvcc: version compacted")

// version reads key's version at exactly rev from *txn, a view at at
// (opened on first use). A version missing below the shard's compaction
// revision is errVersionGone, or ErrCompacted for the record's own
// version; one missing above it is a corrupt store.
func (r *versionReader) version(txn **badger.Txn, at int64, key []byte, rev int64) (*badger.Item, error) {
	if *txn == nil {
		*txn = r.sh.store.db.NewTransactionAt(uint64(at), false)
	}
	item, err := (*txn).Get(dataKey(key))
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		return nil, err
	}
	if err == nil && item.Version() == uint64(rev) {
		return item, nil
	}
	// Badger keeps every version above the discard timestamp and the
	// newest at or below it, so only a compaction that passed the
	// version's successor can have dropped it.
	switch c := r.sh.State().CompactRevision; {
	case rev == r.rev && rev < c:
		return nil, ErrCompacted
	case rev != r.rev && r.rev-1 < c:
		return nil, errVersionGone
	}
	return nil, fmt.Errorf("mvcc: key %q has no version at revision %d for the change record at %d: %w", key, rev, r.rev, errCorruptRecord)
}

// deletedKV is a DELETE event's KeyValue: the key and the deleting revision.
func deletedKV(key []byte, rev int64) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, key)
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(rev))
}

// storedKVSize is the size of the KeyValue a data version holds (encodeKV:
// every field but the key, which is field 1) once its key is added.
func storedKVSize(key, stored []byte) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(len(key)) + len(stored)
}

// appendStoredKV appends the KeyValue with its key, length-prefixed.
func appendStoredKV(b, key, stored []byte) []byte {
	b = protowire.AppendVarint(b, uint64(storedKVSize(key, stored)))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, key)
	return append(b, stored...)
}

// wholeEvents copies the events of a record part written before the
// refsFormat: length-prefixed serialized Events.
func wholeEvents(b []byte, in func([]byte) bool) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, errCorruptRecord
		}
		ev := b[k : k+int(n)]
		b = b[k+int(n):]
		var e mvccpb.Event
		if err := proto.Unmarshal(ev, &e); err != nil {
			return nil, errCorruptRecord
		}
		if in != nil && !in(e.GetKv().GetKey()) {
			continue
		}
		out = append(out, append([]byte(nil), ev...))
	}
	return out, nil
}
