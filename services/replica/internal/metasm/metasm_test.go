package metasm

import (
	"bytes"
	"testing"
	"time"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

func apply(t *testing.T, s sm.IStateMachine, cmd *raftcmdpb.MetaCommand) sm.Result {
	t.Helper()
	b, err := proto.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Update(sm.Entry{Cmd: b})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func state(t *testing.T, s sm.IStateMachine) *metapb.MetaState {
	t.Helper()
	v, err := s.Lookup(StateQuery{})
	if err != nil {
		t.Fatal(err)
	}
	return v.(*metapb.MetaState)
}

func extend(l int64) *raftcmdpb.MetaCommand {
	return &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_ExtendTso{ExtendTso: &raftcmdpb.ExtendTSO{Limit: l}}}
}

func TestSavedLimitOnlyGrows(t *testing.T) {
	s := Factory(&metapb.MetaState{ShardMap: &metapb.ShardMap{}, TsoLimit: 2})(1, 1)
	for _, tc := range []struct{ propose, want int64 }{{100, 100}, {50, 100}, {100, 100}, {250, 250}} {
		if r := apply(t, s, extend(tc.propose)); int64(r.Value) != tc.want {
			t.Fatalf("extend to %d: result %d, want %d", tc.propose, r.Value, tc.want)
		}
		if got := state(t, s).TsoLimit; got != tc.want {
			t.Fatalf("extend to %d: limit %d, want %d", tc.propose, got, tc.want)
		}
	}
}

func TestRegisterStoreAndSnapshot(t *testing.T) {
	boot := &metapb.MetaState{ShardMap: &metapb.ShardMap{MetaShardId: 1, Stores: []*metapb.Store{{Id: 1, ApiAddress: "a:1"}}}, TsoLimit: 2}
	s := Factory(boot)(1, 1)
	apply(t, s, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_RegisterStore{RegisterStore: &raftcmdpb.RegisterStore{StoreId: 1, ApiAddress: "a:2"}}})
	apply(t, s, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_RegisterStore{RegisterStore: &raftcmdpb.RegisterStore{StoreId: 2, ApiAddress: "b:1"}}})
	apply(t, s, extend(500))
	st := state(t, s)
	if len(st.ShardMap.Stores) != 2 || st.ShardMap.Stores[0].ApiAddress != "a:2" || st.ShardMap.Stores[1].Id != 2 {
		t.Fatalf("stores %v", st.ShardMap.Stores)
	}
	if boot.ShardMap.Stores[0].ApiAddress != "a:1" {
		t.Fatal("the state machine changed the bootstrap state it was built from")
	}
	var buf bytes.Buffer
	if err := s.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	restored := Factory(&metapb.MetaState{ShardMap: &metapb.ShardMap{}})(1, 2)
	if err := restored.RecoverFromSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(state(t, restored), st) {
		t.Fatalf("snapshot round trip: %v vs %v", state(t, restored), st)
	}
	// Garbage is rejected identically by every replica: no change.
	if r, err := s.Update(sm.Entry{Cmd: []byte{0xff, 0xff}}); err != nil || r.Value != 0 {
		t.Fatalf("garbage entry: %v %v", r, err)
	}
	if !proto.Equal(state(t, s), st) {
		t.Fatal("garbage entry changed the state")
	}
}

// A renewal while live keeps a gateway's place; coming back after expiry
// is a new registration; expiry 0 removes it; long-expired ones are dropped.
func TestGatewayRegistrations(t *testing.T) {
	s := Factory(&metapb.MetaState{ShardMap: &metapb.ShardMap{}})(1, 1)
	index := uint64(0)
	reg := func(id uint64, expires int64) {
		index++
		b, _ := proto.Marshal(&raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_RegisterGateway{RegisterGateway: &metapb.Gateway{
			MemberId: id, Name: "gw", ExpiresUnixMs: expires, TtlMs: 10_000}}})
		if _, err := s.Update(sm.Entry{Index: index, Cmd: b}); err != nil {
			t.Fatal(err)
		}
	}
	gws := func() map[uint64]*metapb.Gateway {
		v, err := s.Lookup(GatewaysQuery{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[uint64]*metapb.Gateway{}
		for _, g := range v.([]*metapb.Gateway) {
			out[g.MemberId] = g
		}
		return out
	}
	reg(1, 100_000) // index 1
	reg(2, 101_000) // index 2
	reg(1, 105_000) // renewed while live: keeps index 1
	if g := gws(); g[1].SinceIndex != 1 || g[2].SinceIndex != 2 {
		t.Fatalf("renewal: %v", g)
	}
	reg(1, 200_000) // back long after its expiry at 105 000: a new registration (index 4)
	if g := gws(); g[1].SinceIndex != 4 {
		t.Fatalf("return after expiry kept index %d", g[1].SinceIndex)
	}
	reg(2, 0)
	if _, ok := gws()[2]; ok {
		t.Fatal("expiry 0 did not remove the gateway")
	}
	reg(3, 101_000)
	reg(1, 101_000+int64(time.Hour/time.Millisecond)+1)
	if _, ok := gws()[3]; ok {
		t.Fatal("a registration expired for over an hour was kept")
	}
}

// Apply is total: empty or malformed commands are answered, never a panic,
// and change nothing.
func TestMalformedCommandsApply(t *testing.T) {
	s := Factory(&metapb.MetaState{ShardMap: &metapb.ShardMap{}})(1, 1)
	before := state(t, s)
	for _, cmd := range []*raftcmdpb.MetaCommand{
		{Op: &raftcmdpb.MetaCommand_Auth{}},
		{Op: &raftcmdpb.MetaCommand_Auth{Auth: &metapb.AuthRequest{Op: &metapb.AuthRequest_UserAdd{UserAdd: []byte{0xff, 0xff, 0xff}}}}},
		{Op: &raftcmdpb.MetaCommand_Auth{Auth: &metapb.AuthRequest{Op: &metapb.AuthRequest_UserGet{}}}}, // a read, not a change
		{Op: &raftcmdpb.MetaCommand_RegisterGateway{}},
		{Op: &raftcmdpb.MetaCommand_SetAlarm{}},
	} {
		r := apply(t, s, cmd)
		if ar := (&raftcmdpb.AuthResult{}); len(r.Data) > 0 && proto.Unmarshal(r.Data, ar) == nil && cmd.GetAuth() != nil && ar.Error == "" {
			t.Errorf("%v: no error", cmd)
		}
	}
	after := state(t, s)
	after.Auth = nil // an auth entry may create the empty store
	if !proto.Equal(before, after) {
		t.Errorf("malformed commands changed the state: %v", after)
	}
}
