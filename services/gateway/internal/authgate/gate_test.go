package authgate

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/proto/metapb"
)

type fakeMeta struct {
	fetches atomic.Int32
	state   atomic.Pointer[metapb.AuthState]
	fail    atomic.Bool
}

func (f *fakeMeta) fetch(_ context.Context, known uint64) (*metapb.GetAuthStateResponse, error) {
	f.fetches.Add(1)
	if f.fail.Load() {
		return nil, errors.New("meta shard unreachable")
	}
	st := f.state.Load()
	resp := &metapb.GetAuthStateResponse{Generation: st.Generation}
	if known != st.Generation {
		resp.State = st
	}
	return resp, nil
}

// A copy is used for MaxStaleness after its fetch was sent, never longer,
// and an unreachable meta shard gives a retryable error, not a decision.
func TestViewFreshness(t *testing.T) {
	m := &fakeMeta{}
	m.state.Store(&metapb.AuthState{Generation: 1})
	tokens, _ := auth.ParseTokens("simple", 0)
	g := New(m.fetch, tokens, slog.Default())
	now := time.Unix(100, 0)
	g.now = func() time.Time { return now }
	ctx := context.Background()

	v, err := g.View(ctx)
	if err != nil || v.Generation() != 1 || m.fetches.Load() != 1 {
		t.Fatalf("first view: %v %v, %d fetches", v, err, m.fetches.Load())
	}
	now = now.Add(auth.MaxStaleness - time.Millisecond)
	if v, _ := g.View(ctx); v.Generation() != 1 || m.fetches.Load() != 1 {
		t.Fatalf("within the bound the copy is reused (%d fetches)", m.fetches.Load())
	}
	m.state.Store(&metapb.AuthState{Generation: 2, Enabled: true})
	now = now.Add(time.Millisecond)
	if v, _ := g.View(ctx); !v.Enabled() || v.Generation() != 2 || m.fetches.Load() != 2 {
		t.Fatalf("at the bound the store is fetched again: gen %d, %d fetches", v.Generation(), m.fetches.Load())
	}
	// Unchanged: the meta shard sends no state, and the copy lives on.
	now = now.Add(auth.MaxStaleness)
	if v, _ := g.View(ctx); v.Generation() != 2 || m.fetches.Load() != 3 {
		t.Fatalf("unchanged store: gen %d, %d fetches", v.Generation(), m.fetches.Load())
	}
	m.fail.Store(true)
	now = now.Add(auth.MaxStaleness)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	before := m.fetches.Load()
	if _, err := g.View(short); err != rpctypes.ErrGRPCTimeout {
		t.Fatalf("stale copy, meta unreachable: %v, want a timeout", err)
	}
	if n := m.fetches.Load() - before; n < 2 {
		t.Fatalf("%d fetches while the meta shard was out of reach: the gate should keep trying until the deadline", n)
	}
	m.fail.Store(false)
	if v, err := g.View(ctx); err != nil || v.Generation() != 2 {
		t.Fatalf("meta back: %v %v", v, err)
	}
}

// Changed returns only once every gateway's copy from before the change
// has expired.
func TestChangedWaitsOutTheBound(t *testing.T) {
	m := &fakeMeta{}
	m.state.Store(&metapb.AuthState{Generation: 1})
	g := New(m.fetch, nil, slog.Default())
	began := time.Now()
	if err := g.Changed(context.Background(), began); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d < auth.MaxStaleness {
		t.Fatalf("Changed returned after %s, before the staleness bound %s", d, auth.MaxStaleness)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := g.Changed(ctx, time.Now()); err != rpctypes.ErrGRPCTimeout {
		t.Fatalf("Changed past the caller's deadline: %v", err)
	}
}

func TestIdentityFromToken(t *testing.T) {
	st := &metapb.AuthState{Enabled: true, Revision: 2, TokenKey: []byte("k"), Users: map[string]*metapb.AuthUser{"alice": {Name: "alice", PasswordHash: "h"}}}
	v := auth.NewView(st)
	tokens, _ := auth.ParseTokens("simple", time.Minute)
	g := New(nil, tokens, slog.Default())
	tok, err := tokens.Issue(v, "alice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, md := range []metadata.MD{metadata.Pairs("token", tok), metadata.Pairs("authorization", "Bearer "+tok)} {
		id, err := g.Identity(metadata.NewIncomingContext(context.Background(), md), v)
		if err != nil || id.User != "alice" {
			t.Errorf("%v: %+v %v", md, id, err)
		}
	}
	if _, err := g.Identity(metadata.NewIncomingContext(context.Background(), metadata.Pairs("token", tok+"x")), v); err != rpctypes.ErrGRPCInvalidAuthToken {
		t.Errorf("tampered token: %v", err)
	}
	if id, err := g.Identity(context.Background(), v); err != nil || id.User != "" {
		t.Errorf("no token: %+v %v", id, err)
	}
}
