package mvcc

import "sync"

// latestVersions caches the newest version of recently written keys, so a
// read of a key written lately (a CAS's compare, a put's previous value, a
// point read of a hot key) does not search every Badger level: Badger's
// Get returns the newest version at or below the read timestamp only after
// looking in every memtable and level, unless one holds that exact
// timestamp. The store's versions only grow with time, so the version a
// flush wrote last is the newest a key has; a read at or above it is
// answered here, an older read goes to Badger.
//
// It is updated by each flush after its commits and before the entry's
// state is published, so no reader can be at a revision whose write it
// does not have yet; a snapshot install clears it.
type latestVersions struct {
	mu    sync.RWMutex
	max   int // bytes; 0 disables the cache
	bytes int
	m     map[string]latestVersion
	// order is the keys in the order they came in (FIFO eviction); an
	// element is stale once its key left or came in again (seq differs).
	order []orderedKey
	seq   uint64
}

type latestVersion struct {
	rev   int64
	value []byte // the stored KeyValue (encodeKV); nil: deleted at rev
	seq   uint64
}

type orderedKey struct {
	key string
	seq uint64
}

// latestValueMax: larger values are not cached (their reads are not
// dominated by the search of the levels).
const latestValueMax = 4 << 10

func newLatestVersions(max int) *latestVersions {
	return &latestVersions{max: max, m: map[string]latestVersion{}}
}

func entrySize(key string, value []byte) int { return 64 + len(key) + len(value) }

// get returns key's (a Badger data key) newest version if it is cached
// and at or below readTs: found, and value nil if the key is deleted.
func (l *latestVersions) get(key []byte, readTs uint64) (value []byte, found bool) {
	if l.max == 0 {
		return nil, false
	}
	l.mu.RLock()
	v, ok := l.m[string(key)]
	l.mu.RUnlock()
	if !ok || uint64(v.rev) > readTs {
		return nil, false
	}
	return v.value, true
}

// wrote records the data-key mutations a flush at rev committed.
func (l *latestVersions) wrote(rev int64, muts []mutation, superseded map[string]struct{}) {
	if l.max == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range muts {
		if len(m.key) == 0 || m.key[0] != familyData {
			continue
		}
		if _, ok := superseded[string(m.key)]; ok && m.bulk {
			continue // not written: a later write of the key replaced it
		}
		switch {
		case m.bulk, !m.del && len(m.value) > latestValueMax:
			// Not kept (a bulk delete may cover millions of keys); an
			// older cached version would be stale now.
			l.dropLocked(string(m.key))
		case m.del:
			l.setLocked(string(m.key), rev, nil)
		default:
			l.setLocked(string(m.key), rev, m.value)
		}
	}
	l.evictLocked()
}

func (l *latestVersions) setLocked(key string, rev int64, value []byte) {
	old, ok := l.m[key]
	if ok {
		l.bytes -= entrySize(key, old.value)
	} else {
		l.seq++
		old.seq = l.seq
		l.order = append(l.order, orderedKey{key: key, seq: old.seq})
	}
	l.m[key] = latestVersion{rev: rev, value: value, seq: old.seq}
	l.bytes += entrySize(key, value)
}

func (l *latestVersions) dropLocked(key string) {
	if old, ok := l.m[key]; ok {
		l.bytes -= entrySize(key, old.value)
		delete(l.m, key)
	}
}

func (l *latestVersions) evictLocked() {
	n := 0
	for ; n < len(l.order) && l.bytes > l.max; n++ {
		o := l.order[n]
		if v, ok := l.m[o.key]; ok && v.seq == o.seq {
			l.dropLocked(o.key)
		}
	}
	if n > 0 {
		clear(l.order[:n])
		l.order = l.order[n:]
	}
	// Keys dropped or evicted leave stale elements behind: compact once
	// they are most of the queue.
	if len(l.order) > 2*len(l.m)+1024 {
		live := make([]orderedKey, 0, len(l.m))
		for _, o := range l.order {
			if v, ok := l.m[o.key]; ok && v.seq == o.seq {
				live = append(live, o)
			}
		}
		l.order = live
	}
}

// clear forgets every key (a snapshot install rewrote a range).
func (l *latestVersions) clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.m, l.order, l.bytes = map[string]latestVersion{}, nil, 0
}
