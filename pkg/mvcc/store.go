// Package mvcc keeps etcd's multi-version keyspace in a Badger DB opened in
// managed mode: a user key written at revision R is a Badger version of that
// key at timestamp R, so reading at revision R is a Badger read at R.
//
// One Store holds the data of every shard a replica process hosts; a Shard
// is a key range of it plus the shard's own change log and state record.
//
// Badger key layout (the first byte names the family):
//
//	'k' user-key                  -> KeyValue envelope (key omitted), tombstone on delete
//	'c' shard-id(8) revision(8)   -> the events of that revision (change log)
//	'c' shard-id(8) revision(8) part(4) -> more events of that revision (part >= 1)
//	's' shard-id(8)               -> shard state (applied index, revision, compaction)
//	'l' lease-id(8) user-key      -> empty: the lease index (keys attached to a lease)
//	'i' shard-id(8)               -> applied index of a rejected entry, at version = that index
//	'r' shard-id(8) lease-id(8)   -> epoch(8): the lease was revoked on this shard at that epoch
//	'p' shard-id(8) revision(8)   -> a split at that revision: the child's ID and bounds
//
// Every key of the 'k', 'c', 's' and 'l' families is written at most once
// per timestamp: each applied Raft entry writes at its own revision (in
// one or more Badger transactions, see pending.go).
package mvcc

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"path/filepath"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

const (
	familyData   = 'k'
	familyChange = 'c'
	familyState  = 's'
	familyLease  = 'l'
	familyIndex  = 'i'
	familyRevoke = 'r'
	familySplit  = 'p'
	// familyRestored marks a shard that installed a snapshot: its state
	// records below the snapshot's last entry are gone (the value is that
	// revision, the key versioned by it).
	familyRestored = 'h'
)

// MinMemTableSize is the smallest memtable the store runs with: Badger's
// transactions hold 15 % of it, and the largest single write an entry can
// make (a 65,000-byte key with a value just under Badger's 1 MiB inline
// threshold) must fit in one, or apply could fail on it.
const MinMemTableSize = 8 << 20

// Options sizes the Badger DB. The zero value is not valid; use DefaultOptions.
type Options struct {
	// MemTableSize bounds one memtable; a transaction (one Raft entry) may
	// use about 15 % of it.
	MemTableSize int64
	// NumMemtables is how many memtables may be held before writes stall.
	NumMemtables int
	// BlockCacheSize and IndexCacheSize are Badger's caches of table
	// blocks and of table indexes and Bloom filters. Tables are not
	// compressed, so blocks are read in place from the mapped files and
	// the block cache may be 0; the index cache bounds what indexes take
	// as the data grows (0 keeps every table's index in memory).
	BlockCacheSize, IndexCacheSize int64
	// LatestCacheSize bounds the cache of recently written keys' newest
	// versions (latest.go); 0 disables it.
	LatestCacheSize int64
	// Logger receives Badger's own log lines; nil silences them.
	Logger *slog.Logger
	// Knobs are testing hooks; the zero value is production behaviour.
	Knobs Knobs
}

// Knobs are hooks for tests.
type Knobs struct {
	// ChunkCommitted runs after each Badger transaction but the last of an
	// entry that needs several; an error stops the entry there, as a crash
	// would.
	ChunkCommitted func(chunk int) error
	// Wrote sees every Badger key an entry writes, as it writes it.
	Wrote func(key []byte)
	// SyncedValueLog runs after each sync of the value log that a write
	// of a large value made.
	SyncedValueLog func()
	// CompressTables writes Badger tables compressed with Snappy, as
	// stores did before decision 0014.
	CompressTables bool
}

// DefaultOptions returns options sized for a small process (Budget: about
// 320 MiB): Badger's own defaults (5 x 64 MiB memtables, a 256 MiB cache)
// take gigabytes under a burst of writes, since every table Badger builds is
// held whole in memory until written and the buffers of up to eight
// builders are kept for reuse (docs/decisions/0014-memory.md).
func DefaultOptions() Options {
	return Options{MemTableSize: 16 << 20, NumMemtables: 3, BlockCacheSize: 16 << 20, IndexCacheSize: 32 << 20, LatestCacheSize: 8 << 20}
}

// builderMemtables is what table builders hold, in memtables: Badger
// builds each table whole in memory (an L0 table is one memtable, a
// compaction builds several at once) in buffers that double as they grow,
// and keeps up to eight builders' buffers for reuse. Measured: about 12
// memtables' worth at the peak of a 1 GiB load (bench fill-64).
const builderMemtables = 12

// Budget is the memory the store may hold at most under any write load,
// by its options: the memtables (one more while the oldest is flushed),
// the caches, and the table builders' buffers. Reads add their own
// (iterators, values being returned), bounded by the request limits.
func (o Options) Budget() int64 {
	return int64(o.NumMemtables+1)*o.MemTableSize*115/100 + o.BlockCacheSize + o.IndexCacheSize + o.LatestCacheSize + builderMemtables*o.MemTableSize
}

// Store is one replica process's Badger DB.
type Store struct {
	db    *badger.DB
	dir   string
	knobs Knobs
	// valueLogThreshold: values of this size and more go to Badger's
	// value log, the rest stay in its tables.
	valueLogThreshold int64
	latest            *latestVersions

	mu struct {
		sync.Mutex
		// compacted is each open shard's compaction revision; the DB-wide
		// discard timestamp is their minimum.
		compacted map[uint64]int64
	}
}

// Open opens (or creates) the store in dir.
func Open(dir string, o Options) (*Store, error) {
	if o.MemTableSize < MinMemTableSize || o.NumMemtables <= 0 || o.BlockCacheSize < 0 || o.IndexCacheSize < 0 || o.LatestCacheSize < 0 {
		return nil, fmt.Errorf("mvcc: open %s: memtable size must be at least %d, memtable count positive, cache sizes not negative", dir, MinMemTableSize)
	}
	opts := badger.DefaultOptions(dir).
		WithMemTableSize(o.MemTableSize).
		WithNumMemtables(o.NumMemtables).
		WithBlockCacheSize(o.BlockCacheSize).
		WithIndexCacheSize(o.IndexCacheSize).
		// No compression, as etcd's bbolt: a compressed table is built
		// twice in memory and every block read is a decode into the cache;
		// Kubernetes' values are mostly protobuf already. Each table
		// records its own compression, so stores written before read on.
		WithCompression(compression(o.Knobs)).
		// Small memtables make many small L0 tables: let ten gather (and
		// a 64 MiB first level) before compacting, so each compaction
		// merges more at once. A 100 000 x 4 KiB load took 17 % less CPU
		// than with Badger's 5 and 10 MiB (bench fill-64).
		WithNumLevelZeroTables(10).
		WithNumLevelZeroTablesStall(30).
		WithBaseLevelSize(64 << 20).
		WithDetectConflicts(false). // one applier per shard; no concurrent writers
		WithNumCompactors(2).
		WithSyncWrites(false). // durability comes from the fsynced Raft log
		WithLogger(badgerLogger{o.Logger})
	db, err := badger.OpenManaged(opts)
	if err != nil {
		return nil, fmt.Errorf("mvcc: open %s: %w", dir, err)
	}
	s := &Store{db: db, dir: dir, knobs: o.Knobs, valueLogThreshold: db.Opts().ValueThreshold, latest: newLatestVersions(int(o.LatestCacheSize))}
	s.mu.compacted = map[uint64]int64{}
	if err := s.loadCompacted(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func compression(k Knobs) options.CompressionType {
	if k.CompressTables {
		return options.Snappy
	}
	return options.None
}

// Close closes the DB.
func (s *Store) Close() error { return s.db.Close() }

// Sync flushes Badger's write-ahead files to disk.
func (s *Store) Sync() error { return s.db.Sync() }

// Size reports the disk space the store takes in bytes: every file in its
// directory (Badger's own counters are refreshed only once a minute).
func (s *Store) Size() int64 {
	var n int64
	filepath.WalkDir(s.dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += allocated(info)
			}
		}
		return nil // a file removed while walking is not an error here
	})
	return n
}

// setCompacted records a shard's compaction revision and lets Badger drop
// versions below the smallest one of all shards of the store (0 while any
// shard has not compacted: nothing may be dropped then).
func (s *Store) setCompacted(shardID uint64, rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.compacted[shardID] = rev
	s.updateDiscardLocked()
}

func (s *Store) updateDiscardLocked() {
	min := int64(-1)
	for _, r := range s.mu.compacted {
		if min < 0 || r < min {
			min = r
		}
	}
	if min < 0 {
		min = 0
	}
	s.db.SetDiscardTs(uint64(min))
}

// loadCompacted reads the compaction revision of every shard persisted in
// the store, so that the discard timestamp protects shards not opened yet.
func (s *Store) loadCompacted() error {
	txn := s.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{familyState}, PrefetchValues: false})
	defer it.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		var st State
		err := item.Value(func(v []byte) (err error) {
			st, err = decodeState(v)
			return err
		})
		if err != nil {
			return fmt.Errorf("mvcc: load shard states: %w", err)
		}
		s.mu.compacted[binary.BigEndian.Uint64(item.Key()[1:])] = st.CompactRevision
	}
	s.updateDiscardLocked()
	return nil
}

func dataKey(userKey []byte) []byte {
	k := make([]byte, 1+len(userKey))
	k[0] = familyData
	copy(k[1:], userKey)
	return k
}

func changeKey(shardID uint64, rev int64) []byte {
	k := make([]byte, 17)
	k[0] = familyChange
	binary.BigEndian.PutUint64(k[1:], shardID)
	binary.BigEndian.PutUint64(k[9:], uint64(rev))
	return k
}

func leaseKey(lease int64, userKey []byte) []byte {
	k := make([]byte, 9+len(userKey))
	k[0] = familyLease
	binary.BigEndian.PutUint64(k[1:], uint64(lease))
	copy(k[9:], userKey)
	return k
}

// changePartKey is the key of part n of a revision's change-log record.
func changePartKey(shardID uint64, rev int64, n int) []byte {
	k := changeKey(shardID, rev)
	if n == 0 {
		return k
	}
	return binary.BigEndian.AppendUint32(k, uint32(n))
}

func restoredKey(shardID uint64) []byte {
	k := stateKey(shardID)
	k[0] = familyRestored
	return k
}

func indexKey(shardID uint64) []byte {
	k := stateKey(shardID)
	k[0] = familyIndex
	return k
}

func changePrefix(shardID uint64) []byte { return changeKey(shardID, 0)[:9] }

func revokedKey(shardID uint64, lease int64) []byte {
	k := changeKey(shardID, lease)
	k[0] = familyRevoke
	return k
}

func revokedPrefix(shardID uint64) []byte { return revokedKey(shardID, 0)[:9] }

func stateKey(shardID uint64) []byte {
	k := make([]byte, 9)
	k[0] = familyState
	binary.BigEndian.PutUint64(k[1:], shardID)
	return k
}

// badgerLogger forwards Badger's warnings and errors to slog.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	if b.l != nil {
		b.l.Error(fmt.Sprintf(f, a...))
	}
}
func (b badgerLogger) Warningf(f string, a ...any) {
	if b.l != nil {
		b.l.Warn(fmt.Sprintf(f, a...))
	}
}
func (b badgerLogger) Infof(string, ...any)  {}
func (b badgerLogger) Debugf(string, ...any) {}
