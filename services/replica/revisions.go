package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lni/dragonboat/v4"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/retry"
	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
	"github.com/tessera-kv/tessera/services/replica/internal/tso"
)

// metaLog gives the oracle the meta shard's Raft group.
type metaLog struct{ r *Replica }

var _ tso.Log = (*metaLog)(nil)

func (m *metaLog) Leadership() (uint64, bool) {
	id, term, valid, err := m.r.nh.GetLeaderID(MetaShardID)
	return term, err == nil && valid && id == m.r.cfg.StoreID
}

// ConfirmLeadership proves with a ReadIndex that this store still leads
// the meta shard in term (the lessor before expiring leases, the oracle
// before serving from memory).
func (m *metaLog) ConfirmLeadership(ctx context.Context, term uint64) error {
	ctx, cancel := m.r.withTimeout(ctx)
	defer cancel()
	if _, err := m.r.nh.SyncRead(ctx, MetaShardID, metasm.AlarmsQuery{}); err != nil {
		return err
	}
	if t, leader := m.Leadership(); !leader || t != term {
		return fmt.Errorf("meta leadership moved (term %d, leader %v)", t, leader)
	}
	return nil
}

func (m *metaLog) ReadLimit(ctx context.Context) (int64, error) {
	ctx, cancel := m.r.withTimeout(ctx)
	defer cancel()
	v, err := m.r.nh.SyncRead(ctx, MetaShardID, metasm.StateQuery{})
	if err != nil {
		return 0, err
	}
	return v.(*metapb.MetaState).TsoLimit, nil
}

func (m *metaLog) SaveLimit(ctx context.Context, prev, limit int64) error {
	ctx, cancel := m.r.withTimeout(ctx)
	defer cancel()
	b, err := proto.Marshal(&raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_ExtendTso{ExtendTso: &raftcmdpb.ExtendTSO{Limit: limit, Expect: prev}}})
	if err != nil {
		return err
	}
	res, err := m.r.nh.SyncPropose(ctx, m.r.nh.GetNoOPSession(MetaShardID), b)
	if err != nil {
		return err
	}
	if len(res.Data) == 0 {
		return fmt.Errorf("%w: saved limit is %d, not %d", tso.ErrLimitMoved, res.Value, prev)
	}
	return nil
}

// revisionRouter takes revisions from the local oracle when this store leads
// the meta shard, and from the leader's Meta API otherwise.
type revisionRouter struct {
	r *Replica
	// pool: this store's connections to the others (every call of the
	// replica to another store goes through it).
	pool *rpcconn.Pool
}

func newRevisionRouter(r *Replica) *revisionRouter {
	return &revisionRouter{r: r, pool: rpcconn.NewPool(r.cfg.Peer)}
}

func (rr *revisionRouter) Allocate(ctx context.Context, n int64) (int64, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		leader, _, valid, err := rr.r.nh.GetLeaderID(MetaShardID)
		if err != nil {
			return 0, err
		}
		if !valid {
			lastErr = dragonboat.ErrShardNotReady
		} else if leader == rr.r.cfg.StoreID {
			first, err := rr.r.oracle.Allocate(ctx, n)
			if err == nil || !errors.Is(err, tso.ErrNotLeader) {
				return first, err
			}
			lastErr = err
		} else {
			first, err := rr.remote(ctx, leader, n)
			if err == nil {
				return first, nil
			}
			lastErr = err
		}
		if err := retry.Sleep(ctx, electionBackoff(rr.r.cfg)); err != nil {
			return 0, err
		}
	}
	return 0, lastErr
}

func (rr *revisionRouter) remote(ctx context.Context, leader uint64, n int64) (int64, error) {
	addr := rr.r.storeAddress(leader)
	if addr == "" {
		return 0, fmt.Errorf("replica: no address for meta leader store %d", leader)
	}
	conn, err := rr.conn(addr)
	if err != nil {
		return 0, err
	}
	// One attempt gets two election timeouts: a meta leader cut off from
	// this store must not hold the write until the request times out, and
	// asking the next leader again only leaves a gap of revisions.
	ctx, cancel := context.WithTimeout(ctx, max(2*electionTimeout(rr.r.cfg), time.Second))
	defer cancel()
	resp, err := metapb.NewMetaClient(conn).AllocateRevisions(ctx, &metapb.AllocateRevisionsRequest{Count: uint32(n)})
	if err != nil {
		return 0, err
	}
	if int64(resp.Count) != n {
		return 0, fmt.Errorf("replica: oracle granted %d revisions, asked %d", resp.Count, n)
	}
	return resp.First, nil
}

func (rr *revisionRouter) conn(addr string) (*grpc.ClientConn, error) { return rr.pool.Conn(addr) }

func (rr *revisionRouter) close() { rr.pool.Close() }
