package lessor

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeStore is the replicated side in memory.
type fakeStore struct {
	mu      sync.Mutex
	term    uint64
	leader  bool
	leases  map[int64]Lease
	next    uint64
	deleted map[int64]int // DeleteKeys calls per lease
	batches []int         // leases per DeleteKeys call
	// deposed: ConfirmLeadership fails although Leadership says leader (a
	// leader back from a pause that a new leader replaced).
	deposed bool
	// failDrop makes Drop fail (the meta leader dies after the keys went).
	failDrop    bool
	checkpoints int // Checkpoint calls
}

func (f *fakeStore) ConfirmLeadership(_ context.Context, term uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deposed || !f.leader || term != f.term {
		return errors.New("not the leader")
	}
	return nil
}

func newFakeStore() *fakeStore {
	return &fakeStore{term: 1, leader: true, leases: map[int64]Lease{}, next: 1, deleted: map[int64]int{}}
}

func (f *fakeStore) Leadership() (uint64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.term, f.leader
}

func (f *fakeStore) Leases(context.Context) (map[int64]Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int64]Lease{}
	for k, v := range f.leases {
		out[k] = v
	}
	return out, nil
}

// Grant: the epoch is a counter, as the meta log index would be.
func (f *fakeStore) Grant(_ context.Context, id, ttl int64) (int64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	epoch := f.next
	f.next++
	if id == 0 {
		id = int64(epoch)
	} else if _, ok := f.leases[id]; ok {
		return 0, 0, nil
	}
	f.leases[id] = Lease{TTL: ttl, Epoch: epoch}
	return id, epoch, nil
}

func (f *fakeStore) StartRevoke(_ context.Context, ids []int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if l, ok := f.leases[id]; ok {
			l.Revoking = true
			f.leases[id] = l
		}
	}
	return nil
}

func (f *fakeStore) Checkpoint(_ context.Context, ids []int64, remaining []int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkpoints++
	for i, id := range ids {
		if l, ok := f.leases[id]; ok {
			l.Remaining = remaining[i]
			f.leases[id] = l
		}
	}
	return nil
}

func (f *fakeStore) lease(id int64) (Lease, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.leases[id]
	return l, ok
}

func (f *fakeStore) DeleteKeys(_ context.Context, ids []int64, _ []uint64) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		f.deleted[id]++
	}
	f.batches = append(f.batches, len(ids))
	return 7, nil
}

func (f *fakeStore) Drop(_ context.Context, ids []int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failDrop {
		return errors.New("meta leader lost")
	}
	for _, id := range ids {
		delete(f.leases, id)
	}
	return nil
}

func (f *fakeStore) deletes(id int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deleted[id]
}

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newLessor(t *testing.T, f *fakeStore) (*Lessor, *clock) {
	clk := &clock{t: time.Unix(1000, 0)}
	l := New(Config{MinTTL: 2, CheckInterval: 5 * time.Millisecond, CheckpointInterval: time.Minute, Now: clk.now}, f)
	t.Cleanup(l.Stop)
	return l, clk
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGrantBounds(t *testing.T) {
	l, _ := newLessor(t, newFakeStore())
	ctx := context.Background()
	id, ttl, err := l.Grant(ctx, 0, 1)
	if err != nil || id == 0 || ttl != 2 {
		t.Fatalf("grant below the minimum: id %d ttl %d err %v", id, ttl, err)
	}
	if _, _, err := l.Grant(ctx, id, 10); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, _, err := l.Grant(ctx, 0, MaxTTL+1); !errors.Is(err, ErrTTLTooLarge) {
		t.Fatalf("too large: %v", err)
	}
}

func TestOnlyTheLeaderAnswers(t *testing.T) {
	f := newFakeStore()
	f.leader = false
	l, _ := newLessor(t, f)
	if _, _, err := l.Grant(context.Background(), 0, 10); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("grant on a follower: %v", err)
	}
}

func TestExpiryRevokesAndKeepAliveHolds(t *testing.T) {
	f := newFakeStore()
	l, clk := newLessor(t, f)
	ctx := context.Background()
	short, _, _ := l.Grant(ctx, 0, 5)
	kept, _, _ := l.Grant(ctx, 0, 5)
	clk.advance(4 * time.Second)
	if _, err := l.KeepAlive(ctx, kept); err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Second) // short is past its deadline, kept is not
	waitFor(t, "the expired lease to be revoked", func() bool { return f.deletes(short) > 0 })
	waitFor(t, "the expired lease to be dropped", func() bool { _, ok := f.lease(short); return !ok })
	if _, _, _, err := l.TimeToLive(ctx, short); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired lease still known: %v", err)
	}
	if _, left, _, err := l.TimeToLive(ctx, kept); err != nil || left != 3 {
		t.Fatalf("kept lease: %d s left, err %v; want 3", left, err)
	}
}

// A new meta leader gives every lease its full TTL.
func TestLeaderChangeRestoresFullTTL(t *testing.T) {
	f := newFakeStore()
	l, clk := newLessor(t, f)
	ctx := context.Background()
	id, _, _ := l.Grant(ctx, 0, 10)
	clk.advance(8 * time.Second)
	f.mu.Lock()
	f.term = 2
	f.mu.Unlock()
	if _, left, _, err := l.TimeToLive(ctx, id); err != nil || left != 10 {
		t.Fatalf("after a new term: %d s left, err %v; want 10", left, err)
	}
}

// A revoke whose keys were deleted but whose drop failed (the meta leader
// died in between) leaves a lease that is dead: no keep-alive revives it,
// TimeToLive does not find it, and the next leader finishes the revoke.
// (Before revokes were replicated in three steps, the next leader gave the
// lease a full TTL and keep-alives renewed a lease with no keys that puts
// could attach keys to again.)
func TestRevokeInterruptedAfterDeletingKeys(t *testing.T) {
	f := newFakeStore()
	l, _ := newLessor(t, f)
	ctx := context.Background()
	id, _, _ := l.Grant(ctx, 0, 60)
	f.mu.Lock()
	f.failDrop = true
	f.mu.Unlock()
	if _, err := l.Revoke(ctx, id); err == nil {
		t.Fatal("revoke with a failing drop succeeded")
	}
	if f.deletes(id) == 0 {
		t.Fatal("the keys were not deleted")
	}
	if _, err := l.KeepAlive(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("keep-alive of a half-revoked lease: %v, want ErrNotFound", err)
	}
	if _, _, _, err := l.TimeToLive(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("TimeToLive of a half-revoked lease: %v", err)
	}
	// A new leader (a new term) loads it as revoking and finishes.
	f.mu.Lock()
	f.term++
	f.failDrop = false
	f.mu.Unlock()
	if _, err := l.KeepAlive(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("keep-alive under the new leader: %v, want ErrNotFound", err)
	}
	waitFor(t, "the new leader to finish the revoke", func() bool { _, ok := f.lease(id); return !ok })
}

// After a failover, a lease gets the remaining TTL last checkpointed, not a
// full one: leases granted apart expire apart. A keep-alive resets the
// checkpoint first, so a renewed lease gets its full TTL from a new leader.
func TestFailoverKeepsCheckpointedTTL(t *testing.T) {
	f := newFakeStore()
	l, clk := newLessor(t, f)
	ctx := context.Background()
	early, _, _ := l.Grant(ctx, 0, 3600)
	clk.advance(30 * time.Minute)
	late, _, _ := l.Grant(ctx, 0, 3600)
	renewed, _, _ := l.Grant(ctx, 0, 3600)
	short, _, _ := l.Grant(ctx, 0, 30) // not longer than the interval: never checkpointed
	clk.advance(2 * time.Minute)       // a checkpoint round is due
	waitFor(t, "a checkpoint", func() bool { r, _ := f.lease(late); return r.Remaining > 0 })
	if r, _ := f.lease(early); r.Remaining != 1800-120 {
		t.Fatalf("early lease checkpointed at %d s, want %d", r.Remaining, 1800-120)
	}
	if r, _ := f.lease(short); r.Remaining != 0 {
		t.Fatalf("a short lease was checkpointed (%d s)", r.Remaining)
	}
	clk.advance(10 * time.Second)
	if _, err := l.KeepAlive(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	if r, _ := f.lease(renewed); r.Remaining != 0 {
		t.Fatalf("keep-alive left the checkpoint at %d s", r.Remaining)
	}
	f.mu.Lock()
	f.term++
	f.mu.Unlock()
	for _, c := range []struct {
		id   int64
		want int64
	}{{early, 1800 - 120}, {late, 3600 - 120}, {renewed, 3600}} {
		if _, left, _, err := l.TimeToLive(ctx, c.id); err != nil || left != c.want {
			t.Fatalf("lease %d after the failover: %d s left, err %v; want %d", c.id, left, err, c.want)
		}
	}
}

// Leases that expire together are revoked together, in bounded batches.
func TestExpiryRevokesInBatches(t *testing.T) {
	f := newFakeStore()
	l, clk := newLessor(t, f)
	ctx := context.Background()
	const n = maxRevokeBatch + 10
	for i := 0; i < n; i++ {
		if _, _, err := l.Grant(ctx, 0, 5); err != nil {
			t.Fatal(err)
		}
	}
	clk.advance(6 * time.Second)
	waitFor(t, "every lease revoked", func() bool {
		ids, _ := l.Leases(ctx)
		return len(ids) == 0
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for _, b := range f.batches[:2] {
		if b > maxRevokeBatch {
			t.Fatalf("a batch of %d leases", b)
		}
		total += b
	}
	if total != n {
		t.Fatalf("first two batches %v revoked %d leases, want all %d", f.batches, total, n)
	}
}

// A meta leader back from a pause still believes it leads: it must not
// expire leases the new leader kept alive. Expiry waits for a confirmed
// leadership (before this, the lease below was revoked).
func TestDeposedLeaderDoesNotExpire(t *testing.T) {
	f := newFakeStore()
	l, clk := newLessor(t, f)
	id, _, err := l.Grant(context.Background(), 0, 5)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.deposed = true
	f.mu.Unlock()
	clk.advance(time.Minute)           // the pause: every deadline has passed
	time.Sleep(100 * time.Millisecond) // about 20 expiry checks
	if n := f.deletes(id); n != 0 {
		t.Fatalf("a deposed leader revoked the lease (%d deletes)", n)
	}
	f.mu.Lock()
	f.deposed = false
	f.mu.Unlock()
	waitFor(t, "expiry once leadership is confirmed", func() bool { return f.deletes(id) > 0 })
}
