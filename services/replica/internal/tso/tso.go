// Package tso is the revision oracle (PD's timestamp-oracle design): the meta
// shard's leader hands out revisions from memory and persists only a
// high-water mark, a window ahead, through Raft.
//
// Invariants (each is tested):
//  1. The saved limit only grows (the meta state machine ignores smaller ones).
//  2. Every revision served is below the saved limit: the limit is raised
//     through Raft before any revision at or above it is handed out.
//  3. A new leader starts at the saved limit it read linearizably, so it is
//     above everything any earlier leader served; revisions are never reused.
//  4. Within one leadership, revisions are served in strictly increasing order.
//  5. Windows never overlap, even between a deposed leader that has not
//     noticed and the new one: a limit is saved only over the limit the
//     oracle knows (a compare-and-set in the log), so every window
//     [known, saved) belongs to the one oracle whose save succeeded.
//  6. Revisions increase in real time across leaders: an oracle serves
//     from memory only within a leader lease, Lease after the start of a
//     ReadIndex that confirmed its leadership. Followers that acknowledged
//     that round elect no one for an election timeout, so with Lease below
//     it no new leader serves while the old one still does; a leader back
//     from a pause, its lease run out, confirms again (and fails) before
//     serving anything from its old window.
package tso

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrNotLeader is returned when this replica does not lead the meta shard.
var ErrNotLeader = errors.New("tso: not the meta shard leader")

// ErrLimitMoved is SaveLimit's answer when the saved limit is no longer the
// one the oracle knew: another oracle extended it.
var ErrLimitMoved = errors.New("tso: the saved limit moved")

// Log is what the oracle needs of the meta shard's Raft group.
type Log interface {
	// Leadership reports the meta shard's current term and whether this
	// replica is its leader.
	Leadership() (term uint64, leader bool)
	// ReadLimit reads the saved limit with a linearizable read.
	ReadLimit(ctx context.Context) (int64, error)
	// SaveLimit proposes limit, to apply only if the saved limit is still
	// prev, and returns once it is applied; ErrLimitMoved if it was not.
	SaveLimit(ctx context.Context, prev, limit int64) error
	// ConfirmLeadership proves with a quorum round trip (ReadIndex) that
	// this replica still leads the meta shard in term.
	ConfirmLeadership(ctx context.Context, term uint64) error
}

// Config tunes an oracle.
type Config struct {
	// Window is how many revisions one saved limit covers (DefaultWindow
	// if zero).
	Window int64
	// Lease is how long a confirmed leadership lets the oracle serve from
	// memory; it must be below the election timeout (DefaultLease if zero).
	Lease time.Duration
	// Now is the clock (time.Now if nil); tests set it.
	Now func() time.Time
}

// Oracle serves revisions on the meta leader.
type Oracle struct {
	log Log
	cfg Config

	mu struct {
		sync.Mutex
		term  uint64 // leadership term the fields below belong to; 0: none
		next  int64  // next revision to serve
		limit int64  // saved limit: next+n must stay <= limit
		// leaseUntil is when the confirmed leadership stops covering
		// serving from memory.
		leaseUntil time.Time
	}
}

// DefaultWindow is how many revisions one saved limit covers. A restart or
// leader change skips at most this many.
const DefaultWindow = 10000

// DefaultLease is the leader lease for the default election timeout
// (500 ms): half of it, leaving the rest for clock drift between replicas.
const DefaultLease = 250 * time.Millisecond

// New returns an oracle over the meta shard's log.
func New(log Log, cfg Config) *Oracle {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Oracle{log: log, cfg: cfg}
}

// Allocate grants n consecutive revisions and returns the first. With n
// 0 it grants none and returns the next it will serve: every revision
// served before the call is below it.
func (o *Oracle) Allocate(ctx context.Context, n int64) (int64, error) {
	if n < 0 {
		return 0, fmt.Errorf("tso: allocate %d revisions", n)
	}
	term, leader := o.log.Leadership()
	if !leader {
		return 0, ErrNotLeader
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.mu.term != term {
		// New leadership: start above everything served before (invariant 3).
		limit, err := o.log.ReadLimit(ctx)
		if err != nil {
			return 0, fmt.Errorf("tso: read saved limit: %w", err)
		}
		o.mu.term, o.mu.next, o.mu.limit, o.mu.leaseUntil = term, limit, limit, time.Time{}
	}
	if now := o.cfg.Now(); !now.Before(o.mu.leaseUntil) {
		// Invariant 6: no revision from memory without a current lease.
		if err := o.log.ConfirmLeadership(ctx, term); err != nil {
			o.mu.term = 0
			return 0, fmt.Errorf("%w: leadership not confirmed: %v", ErrNotLeader, err)
		}
		o.mu.leaseUntil = now.Add(o.cfg.Lease)
	}
	if o.mu.next+n > o.mu.limit {
		limit := o.mu.next + n + o.cfg.Window
		if err := o.log.SaveLimit(ctx, o.mu.limit, limit); err != nil {
			// Forget the leadership state: the next call re-reads the limit.
			o.mu.term = 0
			return 0, fmt.Errorf("tso: save limit: %w", err)
		}
		o.mu.limit = limit
	}
	first := o.mu.next
	o.mu.next += n
	return first, nil
}
