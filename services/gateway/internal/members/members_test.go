package members

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/tessera-kv/tessera/proto/metapb"
)

type fakeMeta struct{ all []*metapb.Gateway }

func (f *fakeMeta) Register(context.Context, *metapb.Gateway) error { return nil }
func (f *fakeMeta) List(context.Context) ([]*metapb.Gateway, error) { return f.all, nil }

// Live lists unexpired registrations and this gateway; every gateway
// names the same leader, the live one registered first.
func TestLiveAndLeader(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	m := &fakeMeta{all: []*metapb.Gateway{
		{MemberId: 30, SinceIndex: 7, ExpiresUnixMs: now.UnixMilli() + 5000},
		{MemberId: 20, SinceIndex: 3, ExpiresUnixMs: now.UnixMilli() - 1}, // expired
		{MemberId: 10, SinceIndex: 9, ExpiresUnixMs: now.UnixMilli() + 5000},
	}}
	leaders := map[uint64]bool{}
	for _, self := range []uint64{10, 30, 40} { // 40: not registered yet
		r := New(m, self, "gw", []string{"http://x"}, slog.Default())
		r.now = func() time.Time { return now }
		live, err := r.Live(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for _, g := range live {
			ids = append(ids, g.MemberId)
		}
		want := []uint64{10, 30}
		if self == 40 {
			want = []uint64{10, 30, 40}
		}
		if len(ids) != len(want) {
			t.Fatalf("gateway %d lists %v, want %v", self, ids, want)
		}
		for i := range ids {
			if ids[i] != want[i] {
				t.Fatalf("gateway %d lists %v, want %v", self, ids, want)
			}
		}
		l, _ := r.Leader(context.Background())
		leaders[l] = true
	}
	if len(leaders) != 1 || !leaders[30] {
		t.Fatalf("leaders named: %v, want only 30 (live, registered first)", leaders)
	}
}
