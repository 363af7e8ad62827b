package tso

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// memLog is an in-memory stand-in for the meta shard's Raft group that keeps
// its guarantees: the saved limit only grows, reads see every saved limit.
type memLog struct {
	mu      sync.Mutex
	term    uint64
	leader  bool
	limit   int64
	saves   int
	failErr error
	// current is the real current term, for views of a shared log (0:
	// every view's leadership confirms, as when a deposed leader's reads
	// are still forwarded).
	current uint64
}

func (m *memLog) ConfirmLeadership(_ context.Context, term uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.leader || term != m.term {
		return errors.New("not the leader")
	}
	return nil
}

func (m *memLog) Leadership() (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.term, m.leader
}

func (m *memLog) ReadLimit(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.limit, nil
}

func (m *memLog) SaveLimit(_ context.Context, prev, l int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failErr != nil {
		return m.failErr
	}
	m.saves++
	if prev != m.limit {
		return ErrLimitMoved // the meta state machine's compare-and-set
	}
	if l > m.limit {
		m.limit = l
	}
	return nil
}

func TestServedBelowSavedLimit(t *testing.T) {
	log := &memLog{term: 1, leader: true, limit: 2}
	o := New(log, Config{Window: 10})
	prev := int64(0)
	for i := 0; i < 100; i++ {
		first, err := o.Allocate(context.Background(), 3)
		if err != nil {
			t.Fatal(err)
		}
		if first <= prev {
			t.Fatalf("allocation %d: first %d not above previous %d", i, first, prev)
		}
		if first+3 > log.limit {
			t.Fatalf("served [%d,%d) beyond saved limit %d", first, first+3, log.limit)
		}
		prev = first + 2
	}
	if log.saves >= 100 {
		t.Fatalf("window not used: %d saves for 100 allocations", log.saves)
	}
}

func TestConsecutiveWithinLeadership(t *testing.T) {
	o := New(&memLog{term: 1, leader: true, limit: 2}, Config{Window: 1000})
	for want := int64(2); want < 50; want++ {
		got, err := o.Allocate(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("got %d, want %d", got, want)
		}
	}
}

func TestNewLeaderStartsAboveOldWindow(t *testing.T) {
	log := &memLog{term: 1, leader: true, limit: 2}
	old := New(log, Config{Window: 100})
	var maxServed int64
	for i := 0; i < 10; i++ {
		f, err := old.Allocate(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		maxServed = f
	}
	// Leadership moves to another oracle instance (another replica).
	log.mu.Lock()
	log.term = 2
	log.mu.Unlock()
	successor := New(log, Config{Window: 100})
	f, err := successor.Allocate(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if f <= maxServed {
		t.Fatalf("new leader served %d, old leader had served up to %d", f, maxServed)
	}
	// The old instance, on regaining leadership in a later term, re-reads too.
	log.mu.Lock()
	log.term = 3
	log.mu.Unlock()
	g, err := old.Allocate(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if g <= f {
		t.Fatalf("re-elected leader served %d after successor served %d", g, f)
	}
}

func TestNotLeader(t *testing.T) {
	o := New(&memLog{term: 1, leader: false, limit: 2}, Config{Window: 10})
	if _, err := o.Allocate(context.Background(), 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("got %v, want ErrNotLeader", err)
	}
}

func TestSaveFailureServesNothing(t *testing.T) {
	boom := errors.New("no quorum")
	log := &memLog{term: 1, leader: true, limit: 2, failErr: boom}
	o := New(log, Config{Window: 10})
	if _, err := o.Allocate(context.Background(), 1); !errors.Is(err, boom) {
		t.Fatalf("got %v, want %v", err, boom)
	}
	log.mu.Lock()
	log.failErr = nil
	log.mu.Unlock()
	f, err := o.Allocate(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if f < 2 || f+1 > log.limit {
		t.Fatalf("served %d with saved limit %d", f, log.limit)
	}
}

func TestConcurrentAllocationsUnique(t *testing.T) {
	o := New(&memLog{term: 1, leader: true, limit: 2}, Config{Window: 7})
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				f, err := o.Allocate(context.Background(), 2)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for r := f; r < f+2; r++ {
					if seen[r] {
						t.Errorf("revision %d served twice", r)
					}
					seen[r] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// view is one replica's view of a shared log: its own idea of the term and
// of whether it leads (a deposed leader that has not noticed still thinks
// it does).
type view struct {
	*memLog
	term   uint64
	leader bool
}

func (v *view) Leadership() (uint64, bool) { return v.term, v.leader }

func (v *view) ConfirmLeadership(_ context.Context, term uint64) error {
	v.memLog.mu.Lock()
	defer v.memLog.mu.Unlock()
	if !v.leader || term != v.term || (v.memLog.current != 0 && term != v.memLog.current) {
		return errors.New("not the leader")
	}
	return nil
}

type manualClock struct{ t time.Time }

func (c *manualClock) now() time.Time { return c.t }

// Invariant 6: once a new leader served revision R, a deposed leader whose
// lease has run out (a pause longer than the election timeout) serves no
// revision below R from the rest of its window: it must confirm its
// leadership first, and that fails. Before the lease, it served from
// memory and revisions went back in real time.
func TestDeposedOracleStopsAtTheEndOfItsLease(t *testing.T) {
	shared := &memLog{limit: 2, current: 1}
	clk := &manualClock{t: time.Unix(1000, 0)}
	oldO := New(&view{memLog: shared, term: 1, leader: true}, Config{Window: 100, Lease: 250 * time.Millisecond, Now: clk.now})
	newO := New(&view{memLog: shared, term: 2, leader: true}, Config{Window: 100})
	ctx := context.Background()
	if _, err := oldO.Allocate(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// The old leader pauses; a new one is elected and serves.
	shared.mu.Lock()
	shared.current = 2
	shared.mu.Unlock()
	r, err := newO.Allocate(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(time.Second) // the old leader wakes, its lease long gone
	if got, err := oldO.Allocate(ctx, 1); err == nil {
		t.Fatalf("the deposed oracle served %d after the new one served %d", got, r)
	} else if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed oracle: %v, want ErrNotLeader", err)
	}
}

// Invariant 5: a deposed meta leader that has not noticed (paused, or cut
// off while its proposals are still forwarded) and the new leader never
// serve overlapping revisions, however their allocations interleave. Before
// saves were conditional, the old oracle's extension "succeeded" on top of
// the new one's and both served the same window.
func TestDeposedAndNewOracleNeverOverlap(t *testing.T) {
	shared := &memLog{limit: 2}
	oldO := New(&view{memLog: shared, term: 1, leader: true}, Config{Window: 10})
	newO := New(&view{memLog: shared, term: 2, leader: true}, Config{Window: 10})
	type span struct{ lo, hi int64 }
	var served []span
	ctx := context.Background()
	alloc := func(o *Oracle, n int64) {
		if first, err := o.Allocate(ctx, n); err == nil {
			served = append(served, span{first, first + n})
		} else if !errors.Is(err, ErrLimitMoved) {
			t.Fatal(err)
		}
	}
	alloc(oldO, 3) // the old leader saves [2, 15) and serves from it
	alloc(newO, 4) // the new leader takes over: reads 15, saves [15, 29)
	for i := 0; i < 200; i++ {
		alloc(oldO, int64(1+i%7)) // still thinks it leads
		alloc(newO, int64(1+i%5))
	}
	for i, a := range served {
		for _, b := range served[i+1:] {
			if a.lo < b.hi && b.lo < a.hi {
				t.Fatalf("served [%d,%d) and [%d,%d): overlap", a.lo, a.hi, b.lo, b.hi)
			}
		}
	}
	if len(served) < 100 {
		t.Fatalf("only %d allocations served", len(served))
	}
}

// Allocating 0 revisions names the next one and serves none (a tick may
// close any revision below it).
func TestAllocateZeroServesNothing(t *testing.T) {
	o := New(&memLog{term: 1, leader: true, limit: 2}, Config{Window: 1000})
	ctx := context.Background()
	first, err := o.Allocate(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		next, err := o.Allocate(ctx, 0)
		if err != nil || next != first+3 {
			t.Fatalf("peek %d: %d %v, want %d", i, next, err, first+3)
		}
	}
	if got, err := o.Allocate(ctx, 1); err != nil || got != first+3 {
		t.Fatalf("after peeking: %d %v, want %d", got, err, first+3)
	}
	if _, err := o.Allocate(ctx, -1); err == nil {
		t.Fatal("a negative count was granted")
	}
}
