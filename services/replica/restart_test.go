package replica

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A data-shard entry rejected for a stale revision still counts as
// applied: dragonboat may take a snapshot at its index, and the store must
// start again afterwards (Open may not report an index below the
// snapshot's, which dragonboat refuses).
func TestRestartAfterStaleEntryAndSnapshot(t *testing.T) {
	cfg := DefaultConfig()
	cfg.StoreID, cfg.DataDir = 1, t.TempDir()
	cfg.RaftAddress, cfg.APIAddress = freeAddr(t), freeAddr(t)
	cfg.Cluster = []Member{{ID: 1, RaftAddress: cfg.RaftAddress, APIAddress: cfg.APIAddress}}
	cfg.RTTMillisecond, cfg.ElectionRTT = 10, 10
	cfg.Store.MemTableSize, cfg.Store.BlockCacheSize = 8<<20, 8<<20
	r, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Wait for the data shard's leader, then propose an entry whose
	// revision is below the shard's (what a deposed leader's sequencer can
	// leave in the log).
	stale, _ := proto.Marshal(&raftcmdpb.DataCommand{Revision: 1, Op: &raftcmdpb.DataCommand_Tick{Tick: &raftcmdpb.Tick{}}})
	for {
		_, err = r.nh.SyncPropose(ctx, r.nh.GetNoOPSession(FirstDataShardID), stale)
		if err == nil || !dragonboat.IsTempError(err) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("propose: %v", err)
	}
	idx, err := r.nh.SyncRequestSnapshot(ctx, FirstDataShardID, dragonboat.SnapshotOption{OverrideCompactionOverhead: true, CompactionOverhead: 0})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	t.Logf("snapshot at index %d", idx)
	r.Close()

	r, err = Start(cfg)
	if err != nil {
		t.Fatalf("restart after a stale entry and a snapshot: %v", err)
	}
	defer r.Close()
	for {
		st, err := r.ShardState(FirstDataShardID)
		if err == nil && st.AppliedIndex >= idx {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("shard not back at index %d: %+v %v", idx, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
