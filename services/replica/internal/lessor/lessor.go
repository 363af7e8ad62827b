// Package lessor decides lease expiry on the meta shard's leader.
//
// Leases themselves (ID and granted TTL) are replicated in the meta shard;
// their deadlines are not. The leader keeps deadlines in memory, refreshes
// them on keep-alive (no Raft entry, as in etcd), and revokes a lease whose
// deadline passed through the replicated path (keys deleted shard by shard,
// then the lease dropped). The state machines never read a clock.
//
// Invariants:
//   - Only the meta leader answers; a lessor that is not leader refuses
//     (ErrNotLeader), so two leaders never both expire leases.
//   - When leadership moves (a new term), every lease gets its full granted
//     TTL from the new leader: a failover never expires leases early (etcd
//     does the same without lease checkpoints).
//   - A revoked lease's keys are deleted a second time once writes that
//     passed the gateway's lease check before the revoke have had time to
//     apply, so no key stays attached to a dead lease.
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
// (their keys' deletions share that entry's Badger transaction).
const maxRevokeBatch = 256

// Store is the replicated side the lessor works through.
type Store interface {
	// Leadership reports the meta shard's term and whether this process leads it.
	Leadership() (term uint64, leader bool)
	// ConfirmLeadership proves, with a quorum round trip (ReadIndex), that
	// this process still leads the meta shard in term: a leader waking from
	// a long pause still believes it leads while a new one keeps leases
	// alive (etcd-io/etcd#15247).
	ConfirmLeadership(ctx context.Context, term uint64) error
	// Leases reads the granted leases (ID -> TTL) with a linearizable read.
	Leases(ctx context.Context) (map[int64]int64, error)
	// Grant replicates a grant; id 0 lets the state machine choose. It
	// returns the lease's ID, or 0 if the ID was taken.
	Grant(ctx context.Context, id, ttl int64) (int64, error)
	// DeleteKeys deletes the leases' keys on every shard and returns the
	// highest revision it wrote at.
	DeleteKeys(ctx context.Context, ids []int64) (int64, error)
	// Drop replicates the leases' removal.
	Drop(ctx context.Context, ids []int64) error
}

// Config tunes a lessor.
type Config struct {
	// MinTTL raises shorter requested TTLs (etcd: 1.5 election timeouts,
	// rounded up to a second).
	MinTTL int64
	// CheckInterval is how often deadlines are checked.
	CheckInterval time.Duration
	// SweepDelay is how long after a revoke its keys are deleted again.
	SweepDelay time.Duration
	Logger     *slog.Logger
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

	mu struct {
		sync.Mutex
		term      uint64 // the term the deadlines below belong to; 0: none loaded
		ttls      map[int64]int64
		deadlines map[int64]time.Time
		revoking  map[int64]bool
	}
}

// New starts a lessor; Stop ends its expiry loop.
func New(cfg Config, store Store) *Lessor {
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 2
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 250 * time.Millisecond
	}
	if cfg.SweepDelay <= 0 {
		cfg.SweepDelay = 15 * time.Second
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
// for the current term, loading them (full TTLs) after a leader change.
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
	leases, err := l.store.Leases(ctx)
	if err != nil {
		return err
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.term = term
	l.mu.ttls = leases
	l.mu.deadlines = make(map[int64]time.Time, len(leases))
	l.mu.revoking = map[int64]bool{}
	for id, ttl := range leases {
		l.mu.deadlines[id] = now.Add(seconds(ttl))
	}
	return nil
}

func seconds(ttl int64) time.Duration { return time.Duration(ttl) * time.Second }

// Grant creates a lease (id 0: the server chooses) and returns its ID and TTL.
func (l *Lessor) Grant(ctx context.Context, id, ttl int64) (int64, int64, error) {
	if ttl > MaxTTL {
		return 0, 0, ErrTTLTooLarge
	}
	if err := l.ready(ctx); err != nil {
		return 0, 0, err
	}
	ttl = max(ttl, l.cfg.MinTTL)
	got, err := l.store.Grant(ctx, id, ttl)
	if err != nil {
		return 0, 0, err
	}
	if got == 0 {
		return 0, 0, ErrExists
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.ttls != nil {
		l.mu.ttls[got] = ttl
		l.mu.deadlines[got] = l.now().Add(seconds(ttl))
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
	_, ok := l.mu.ttls[id]
	l.mu.Unlock()
	if !ok {
		return 0, ErrNotFound
	}
	return l.revoke(ctx, []int64{id})
}

// revoke deletes the leases' keys on every shard (one entry per shard for
// the whole batch), then the leases.
func (l *Lessor) revoke(ctx context.Context, ids []int64) (int64, error) {
	rev, err := l.store.DeleteKeys(ctx, ids)
	if err != nil {
		return 0, err
	}
	if err := l.store.Drop(ctx, ids); err != nil {
		return 0, err
	}
	l.mu.Lock()
	for _, id := range ids {
		delete(l.mu.ttls, id)
		delete(l.mu.deadlines, id)
		delete(l.mu.revoking, id)
	}
	l.mu.Unlock()
	l.scheduleSweep(ids)
	return rev, nil
}

// scheduleSweep deletes the leases' keys once more after SweepDelay,
// except those granted again meanwhile: a put that passed the lease check
// just before the revoke may apply just after it.
func (l *Lessor) scheduleSweep(revoked []int64) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		t := time.NewTimer(l.cfg.SweepDelay)
		defer t.Stop()
		select {
		case <-l.stopc:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if l.ready(ctx) != nil {
			return // the next leader has no record of it; see package doc
		}
		var ids []int64
		l.mu.Lock()
		for _, id := range revoked {
			if _, regranted := l.mu.ttls[id]; !regranted {
				ids = append(ids, id)
			}
		}
		l.mu.Unlock()
		if len(ids) == 0 {
			return
		}
		if _, err := l.store.DeleteKeys(ctx, ids); err != nil {
			l.cfg.Logger.Warn("lease sweep failed", "leases", len(ids), "err", err)
		}
	}()
}

// KeepAlive renews a lease to its full TTL and returns the TTL.
func (l *Lessor) KeepAlive(ctx context.Context, id int64) (int64, error) {
	if err := l.ready(ctx); err != nil {
		return 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ttl, ok := l.mu.ttls[id]
	if !ok || l.mu.revoking[id] {
		return 0, ErrNotFound
	}
	l.mu.deadlines[id] = l.now().Add(seconds(ttl))
	return ttl, nil
}

// TimeToLive returns the granted and remaining TTL of a lease, in seconds.
func (l *Lessor) TimeToLive(ctx context.Context, id int64) (granted, remaining int64, err error) {
	if err := l.ready(ctx); err != nil {
		return 0, 0, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ttl, ok := l.mu.ttls[id]
	if !ok {
		return 0, 0, ErrNotFound
	}
	left := l.mu.deadlines[id].Sub(l.now())
	return ttl, max(int64(math.Ceil(left.Seconds())), 0), nil
}

// Leases lists the live lease IDs in order.
func (l *Lessor) Leases(ctx context.Context) ([]int64, error) {
	if err := l.ready(ctx); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int64, 0, len(l.mu.ttls))
	for id := range l.mu.ttls {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// run revokes leases whose deadline passed, while this process leads.
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
		if l.ready(ctx) == nil && l.anyExpired() && l.confirm(ctx) {
			expired := l.expired()
			for len(expired) > 0 {
				batch := expired[:min(len(expired), maxRevokeBatch)]
				expired = expired[len(batch):]
				if _, err := l.revoke(ctx, batch); err != nil {
					l.cfg.Logger.Warn("lease expiry: revoke failed; retrying", "leases", len(batch), "err", err)
					l.mu.Lock()
					for _, id := range batch {
						delete(l.mu.revoking, id)
					}
					l.mu.Unlock()
				}
			}
		}
		cancel()
	}
}

// anyExpired reports whether some lease is past its deadline (so that an
// idle lessor does not confirm its leadership every check).
func (l *Lessor) anyExpired() bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, d := range l.mu.deadlines {
		if now.After(d) && !l.mu.revoking[id] {
			return true
		}
	}
	return false
}

// confirm proves this process still leads in the term its deadlines belong
// to before it expires anything.
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

// expired marks and returns the leases past their deadline.
func (l *Lessor) expired() []int64 {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int64
	for id, d := range l.mu.deadlines {
		if now.After(d) && !l.mu.revoking[id] {
			l.mu.revoking[id] = true
			out = append(out, id)
		}
	}
	return out
}
