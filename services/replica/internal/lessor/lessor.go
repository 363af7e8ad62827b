// Package lessor decides lease expiry on the meta shard's leader.
//
// Leases themselves (ID, granted TTL, epoch, revoking flag and a
// checkpointed remaining TTL) are replicated in the meta shard; their
// deadlines are not. The leader keeps deadlines in memory, refreshes them on
// keep-alive (no Raft entry, as in etcd), and revokes a lease whose deadline
// passed through the replicated path. The state machines never read a clock.
//
// Invariants:
//   - Only the meta leader answers; a lessor that is not leader refuses
//     (ErrNotLeader), and expiry waits for a ReadIndex that confirms the
//     leadership, so a leader back from a pause expires nothing.
//   - A revoke is three replicated steps: the lease is marked revoking (from
//     then on it cannot be kept alive and takes no new keys), its keys are
//     deleted on every shard (which then refuse puts to it at its epoch),
//     and it is dropped. A leader that takes over finishes a revoke it finds
//     begun; a lease whose keys were deleted never becomes alive again.
//   - When leadership moves (a new term), a lease gets the remaining TTL the
//     old leader last checkpointed (every CheckpointInterval, for leases
//     longer than that, as etcd's lease checkpoints), or its full TTL: a
//     failover never expires a lease early, and leases that expired apart
//     keep expiring apart instead of all at once one TTL after the failover.
//     A keep-alive of a checkpointed lease first resets the checkpoint, so a
//     new leader never uses a remaining TTL older than a renewal.
package lessor

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"
)

// Errors, mapped to etcd's by the caller.
var (
	ErrNotLeader   = errors.New("lessor: not the meta leader")
	ErrNotFound    = errors.New("lessor: lease not found")
	ErrExists      = errors.New("lessor: lease already exists")
	ErrTTLTooLarge = errors.New("lessor: lease TTL too large")
)

// MaxTTL is etcd's largest lease TTL in seconds.
const MaxTTL = 9000000000

// maxRevokeBatch bounds the expired leases revoked by one entry per shard
// (their keys' deletions share that entry's Badger transaction);
// maxCheckpointBatch bounds the leases of one checkpoint entry.
const (
	maxRevokeBatch     = 256
	maxCheckpointBatch = 1000
)

// Lease is a lease as the meta shard replicates it.
type Lease struct {
	TTL int64
	// Epoch is the log index of the grant (higher for each grant of an ID).
	Epoch uint64
	// Revoking: a revoke began and must be finished.
	Revoking bool
	// Remaining is the last checkpointed remaining TTL in seconds (0: none).
	Remaining int64
}

// Store is the replicated side the lessor works through.
type Store interface {
	// Leadership reports the meta shard's term and whether this process leads it.
	Leadership() (term uint64, leader bool)
	// ConfirmLeadership proves, with a quorum round trip (ReadIndex), that
	// this process still leads the meta shard in term: a leader waking from
	// a long pause still believes it leads while a new one keeps leases
	// alive (etcd-io/etcd#15247).
	ConfirmLeadership(ctx context.Context, term uint64) error
	// Leases reads the granted leases with a linearizable read.
	Leases(ctx context.Context) (map[int64]Lease, error)
	// Grant replicates a grant; id 0 lets the state machine choose. It
	// returns the lease's ID and epoch, or ID 0 if the ID was taken.
	Grant(ctx context.Context, id, ttl int64) (int64, uint64, error)
	// StartRevoke marks the leases as revoking.
	StartRevoke(ctx context.Context, ids []int64) error
	// DeleteKeys deletes the leases' keys on every shard, fencing later
	// puts to them at these epochs, and returns the highest revision it
	// wrote at.
	DeleteKeys(ctx context.Context, ids []int64, epochs []uint64) (int64, error)
	// Drop replicates the leases' removal.
	Drop(ctx context.Context, ids []int64) error
	// Checkpoint replicates remaining TTLs (0: reset to the full TTL).
	Checkpoint(ctx context.Context, ids []int64, remaining []int64) error
}

// Config tunes a lessor.
type Config struct {
	// MinTTL raises shorter requested TTLs (etcd: 1.5 election timeouts,
	// rounded up to a second).
	MinTTL int64
	// CheckInterval is how often deadlines are checked.
	CheckInterval time.Duration
	// CheckpointInterval is how often the remaining TTLs of leases longer
	// than it are checkpointed (etcd's default: 5 minutes).
	CheckpointInterval time.Duration
	Logger             *slog.Logger
	// Now is the clock (time.Now if nil); tests set it.
	Now func() time.Time
}

// Lessor is the lease manager of one replica process.
type Lessor struct {
	cfg   Config
	store Store
	now   func() time.Time
	stopc chan struct{}
	wg    sync.WaitGroup

	// cpMu orders checkpoint rounds and keep-alives: a round computes and
	// replicates remaining TTLs with no renewal in between, so none it
	// replicates is older than a renewal it did not see.
	cpMu sync.Mutex

	mu struct {
		sync.Mutex
		term   uint64 // the term the leases below belong to; 0: none loaded
		leases map[int64]*lease
		// checkpointed is when the last checkpoint round ran.
		checkpointed time.Time
	}
}

// lease is the leader's view of one lease.
type lease struct {
	ttl      int64
	epoch    uint64
	deadline time.Time
	// dead: a revoke began (replicated); the lease answers as gone.
	dead bool
	// inflight: this lessor is running a revoke of it now.
	inflight bool
	// checkpointed: a remaining TTL is replicated for it.
	checkpointed bool
}

// New starts a lessor; Stop ends its expiry loop.
func New(cfg Config, store Store) *Lessor {
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 2
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 250 * time.Millisecond
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Lessor{cfg: cfg, store: store, now: cfg.Now, stopc: make(chan struct{})}
	l.wg.Add(1)
	go l.run()
	return l
}

// Stop ends the expiry loop.
func (l *Lessor) Stop() {
	close(l.stopc)
	l.wg.Wait()
}

// ready makes sure this process leads the meta shard and holds deadlines
// for the current term, loading them after a leader change: the
// checkpointed remaining TTL or the full one, and "now" for a revoke to
// finish.
func (l *Lessor) ready(ctx context.Context) error {
	term, leader := l.store.Leadership()
	if !leader {
		l.mu.Lock()
		l.mu.term = 0
		l.mu.Unlock()
		return ErrNotLeader
	}
	l.mu.Lock()
	loaded := l.mu.term == term
	l.mu.Unlock()
	if loaded {
		return nil
	}
	replicated, err := l.store.Leases(ctx)
	if err != nil {
		return err
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.term = term
	l.mu.leases = make(map[int64]*lease, len(replicated))
	l.mu.checkpointed = now
	for id, r := range replicated {
		e := &lease{ttl: r.TTL, epoch: r.Epoch, deadline: now.Add(seconds(r.TTL)), dead: r.Revoking, checkpointed: r.Remaining > 0}
		switch {
		case r.Revoking:
			e.deadline = now
		case r.Remaining > 0:
			e.deadline = now.Add(seconds(min(r.Remaining, r.TTL)))
		}
		l.mu.leases[id] = e
	}
	return nil
}

func seconds(ttl int64) time.Duration { return time.Duration(ttl) * time.Second }

// live returns the lease unless it is unknown or being revoked. Call with
// l.mu held.
func (l *Lessor) live(id int64) (*lease, bool) {
	e, ok := l.mu.leases[id]
	if !ok || e.dead {
		return nil, false
	}
	return e, true
}

// Grant creates a lease (id 0: the server chooses) and returns its ID and TTL.
func (l *Lessor) Grant(ctx context.Context, id, ttl int64) (int64, int64, error) {
	if ttl > MaxTTL {
		return 0, 0, ErrTTLTooLarge
	}
	if err := l.ready(ctx); err != nil {
		return 0, 0, err
	}
	ttl = max(ttl, l.cfg.MinTTL)
	got, epoch, err := l.store.Grant(ctx, id, ttl)
	if err != nil {
		return 0, 0, err
	}
	if got == 0 {
		return 0, 0, ErrExists
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.leases != nil {
		l.mu.leases[got] = &lease{ttl: ttl, epoch: epoch, deadline: l.now().Add(seconds(ttl))}
	}
	return got, ttl, nil
}

// Revoke deletes the lease's keys on every shard, then the lease, and
// returns the revision of the deletion.
func (l *Lessor) Revoke(ctx context.Context, id int64) (int64, error) {
	if err := l.ready(ctx); err != nil {
		return 0, err
	}
	l.mu.Lock()
	e, ok := l.live(id)
	if ok && e.inflight {
		ok = false // another revoke of it is running
	}
	if ok {
		e.inflight = true
	}
	l.mu.Unlock()
	if !ok {
		return 0, ErrNotFound
	}
	return l.revoke(ctx, []int64{id})
}

// revoke runs the three replicated steps for leases this lessor marked
// inflight. If a step fails, the leases that were marked revoking are left
// for the expiry loop to finish (their deadline is now).
func (l *Lessor) revoke(ctx context.Context, ids []int64) (int64, error) {
	l.mu.Lock()
	epochs := make([]uint64, len(ids))
	for i, id := range ids {
		if e := l.mu.leases[id]; e != nil {
			epochs[i] = e.epoch
		}
	}
	l.mu.Unlock()
	started := false
	rev, err := func() (int64, error) {
		if err := l.store.StartRevoke(ctx, ids); err != nil {
			return 0, err
		}
		started = true
		l.mark(ids, func(e *lease) { e.dead = true })
		rev, err := l.store.DeleteKeys(ctx, ids, epochs)
		if err != nil {
			return 0, err
		}
		return rev, l.store.Drop(ctx, ids)
	}()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		e := l.mu.leases[id]
		switch {
		case e == nil:
		case err == nil:
			delete(l.mu.leases, id)
		default:
			e.inflight = false
			if started {
				e.deadline = time.Time{}
			}
		}
	}
	return rev, err
}

// mark applies f to the leases that are still known.
func (l *Lessor) mark(ids []int64, f func(*lease)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if e := l.mu.leases[id]; e != nil {
			f(e)
		}
	}
}

// KeepAlive renews a lease to its full TTL and returns the TTL. A lease
// with a checkpointed remaining TTL has it reset first (one Raft entry per
// checkpoint interval at most), so that a new leader cannot expire it from
// a remaining TTL older than this renewal.
func (l *Lessor) KeepAlive(ctx context.Context, id int64) (int64, error) {
	if err := l.ready(ctx); err != nil {
		return 0, err
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	l.mu.Lock()
	e, ok := l.live(id)
	reset := ok && e.checkpointed
	l.mu.Unlock()
	if !ok {
		return 0, ErrNotFound
	}
	if reset {
		if err := l.store.Checkpoint(ctx, []int64{id}, []int64{0}); err != nil {
			return 0, err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok = l.live(id); !ok {
		return 0, ErrNotFound
	}
	if reset {
		e.checkpointed = false
	}
	e.deadline = l.now().Add(seconds(e.ttl))
	return e.ttl, nil
}

// TimeToLive returns the granted and remaining TTL of a lease, in seconds,
// and its epoch.
func (l *Lessor) TimeToLive(ctx context.Context, id int64) (granted, remaining int64, epoch uint64, err error) {
	if err := l.ready(ctx); err != nil {
		return 0, 0, 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.live(id)
	if !ok {
		return 0, 0, 0, ErrNotFound
	}
	left := e.deadline.Sub(l.now())
	return e.ttl, max(int64(math.Ceil(left.Seconds())), 0), e.epoch, nil
}

// Leases lists the live lease IDs in order.
func (l *Lessor) Leases(ctx context.Context) ([]int64, error) {
	if err := l.ready(ctx); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int64, 0, len(l.mu.leases))
	for id, e := range l.mu.leases {
		if !e.dead {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// run revokes leases whose deadline passed and checkpoints remaining TTLs,
// while this process leads.
func (l *Lessor) run() {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stopc:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if l.ready(ctx) == nil {
			if l.anyExpired() && l.confirm(ctx) {
				l.expire(ctx)
			}
			if l.checkpointDue() && l.confirm(ctx) {
				l.checkpoint(ctx)
			}
		}
		cancel()
	}
}

func (l *Lessor) expire(ctx context.Context) {
	expired := l.expired()
	for len(expired) > 0 {
		batch := expired[:min(len(expired), maxRevokeBatch)]
		expired = expired[len(batch):]
		if _, err := l.revoke(ctx, batch); err != nil {
			l.cfg.Logger.Warn("lease expiry: revoke failed; retrying", "leases", len(batch), "err", err)
		}
	}
}

// anyExpired reports whether some lease is past its deadline (so that an
// idle lessor does not confirm its leadership every check).
func (l *Lessor) anyExpired() bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.mu.leases {
		if !now.Before(e.deadline) && !e.inflight {
			return true
		}
	}
	return false
}

// confirm proves this process still leads in the term its deadlines belong
// to before it expires or checkpoints anything.
func (l *Lessor) confirm(ctx context.Context) bool {
	l.mu.Lock()
	term := l.mu.term
	l.mu.Unlock()
	if err := l.store.ConfirmLeadership(ctx, term); err != nil {
		l.cfg.Logger.Warn("lease expiry skipped: leadership not confirmed", "term", term, "err", err)
		return false
	}
	return true
}

// expired marks inflight and returns the leases past their deadline.
func (l *Lessor) expired() []int64 {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int64
	for id, e := range l.mu.leases {
		if !now.Before(e.deadline) && !e.inflight {
			e.inflight = true
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (l *Lessor) checkpointDue() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.now().Sub(l.mu.checkpointed) >= l.cfg.CheckpointInterval
}

// checkpoint replicates the remaining TTL of every live lease longer than
// the checkpoint interval, in bounded entries.
func (l *Lessor) checkpoint(ctx context.Context) {
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	now := l.now()
	var ids, remaining []int64
	l.mu.Lock()
	l.mu.checkpointed = now
	for id, e := range l.mu.leases {
		if e.dead || e.inflight || seconds(e.ttl) <= l.cfg.CheckpointInterval {
			continue
		}
		ids = append(ids, id)
		remaining = append(remaining, max(int64(math.Ceil(e.deadline.Sub(now).Seconds())), 1))
	}
	l.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), maxCheckpointBatch)
		if err := l.store.Checkpoint(ctx, ids[:n], remaining[:n]); err != nil {
			l.cfg.Logger.Warn("lease checkpoint failed", "leases", n, "err", err)
			return
		}
		l.mark(ids[:n], func(e *lease) { e.checkpointed = true })
		ids, remaining = ids[n:], remaining[n:]
	}
}
