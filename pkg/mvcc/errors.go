package mvcc

import (
	"errors"

	"github.com/tessera-kv/tessera/pkg/limits"
)

// Errors of the MVCC layer. The replica maps them to etcd's rpctypes errors.
var (
	// ErrCompacted: the requested revision is below the compaction revision.
	ErrCompacted = errors.New("mvcc: required revision has been compacted")
	// ErrFutureRev: the requested revision is above the current revision.
	ErrFutureRev = errors.New("mvcc: required revision is a future revision")
	// ErrKeyNotFound: ignore_value or ignore_lease on a key that does not exist.
	ErrKeyNotFound = errors.New("mvcc: key not found")
	// ErrKeyTooLarge: a put's key is longer than MaxKeyBytes.
	ErrKeyTooLarge = errors.New("mvcc: key is too large")
	// ErrInvalidEntry: an entry that cannot be evaluated (its evaluation
	// failed the same way on every replica); nothing of it was applied.
	ErrInvalidEntry = errors.New("mvcc: invalid entry")
	// ErrLeaseNotFound: a put attaches a key to a lease the shard has
	// revoked (at the epoch the put was checked against, or later).
	ErrLeaseNotFound = errors.New("mvcc: requested lease not found")
	// ErrRestoring: the shard is installing a snapshot; it serves no read
	// until the install is complete (another replica can).
	ErrRestoring = errors.New("mvcc: shard is installing a snapshot")
	// ErrWrongShard: the request was routed by a stale descriptor (the
	// shard split since), or a split does not fit the shard; nothing
	// changed.
	ErrWrongShard = errors.New("mvcc: wrong shard")
	// ErrStaleRevision: an entry's revision is not above the shard's revision.
	ErrStaleRevision = errors.New("mvcc: entry revision not above applied revision")
)

// MaxKeyBytes is the longest user key the store holds (see limits).
const MaxKeyBytes = limits.MaxKeyBytes
