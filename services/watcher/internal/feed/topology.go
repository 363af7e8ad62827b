// Package feed is the watcher's side of the replicas: it follows each
// shard's change feed into the watch cache (reconnecting and failing over
// between the shard's replicas, followers first), and reads history and the
// current revision for the cache.
package feed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tessera-kv/tessera/proto/metapb"
)

// Topology is the watcher's view of the cluster: the shard map, the leader
// hints, and one connection per replica process.
type Topology struct {
	seeds []string

	mu struct {
		sync.RWMutex
		shards  []*metapb.ShardDescriptor // sorted by start key
		stores  map[uint64]string         // store ID -> API address
		leaders map[uint64]uint64
		conns   map[string]*grpc.ClientConn
	}
}

// NewTopology starts from the given replica API addresses.
func NewTopology(seeds []string) *Topology {
	t := &Topology{seeds: seeds}
	t.mu.stores = map[uint64]string{}
	t.mu.leaders = map[uint64]uint64{}
	t.mu.conns = map[string]*grpc.ClientConn{}
	return t
}

// Close closes every connection.
func (t *Topology) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.mu.conns {
		c.Close()
	}
	t.mu.conns = map[string]*grpc.ClientConn{}
}

// Conn returns the connection to a replica process.
func (t *Topology) Conn(addr string) (*grpc.ClientConn, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.mu.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1)))
	if err != nil {
		return nil, err
	}
	t.mu.conns[addr] = c
	return c, nil
}

// Refresh reads the shard map from any reachable replica.
func (t *Topology) Refresh(ctx context.Context) error {
	t.mu.RLock()
	addrs := append([]string(nil), t.seeds...)
	for _, a := range t.mu.stores {
		addrs = append(addrs, a)
	}
	t.mu.RUnlock()
	lastErr := errors.New("no replica addresses")
	for _, a := range addrs {
		c, err := t.Conn(a)
		if err != nil {
			lastErr = err
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := metapb.NewMetaClient(c).GetShardMap(cctx, &metapb.GetShardMapRequest{})
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		t.install(resp)
		return nil
	}
	return fmt.Errorf("feed: fetch shard map: %w", lastErr)
}

func (t *Topology) install(resp *metapb.GetShardMapResponse) {
	shards := append([]*metapb.ShardDescriptor(nil), resp.ShardMap.Shards...)
	sort.Slice(shards, func(i, j int) bool { return bytes.Compare(shards[i].StartKey, shards[j].StartKey) < 0 })
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mu.shards = shards
	for _, s := range resp.ShardMap.Stores {
		t.mu.stores[s.Id] = s.ApiAddress
	}
	for id, l := range resp.Leaders {
		t.mu.leaders[id] = l
	}
}

// Shards returns the data shards, in key order (nil before a refresh).
func (t *Topology) Shards() []*metapb.ShardDescriptor {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.mu.shards
}

// Replicas returns the API addresses of a shard's replicas, followers
// first: change feeds are read there to keep load off the leader.
func (t *Topology) Replicas(shardID uint64) []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var followers, leader []string
	for _, d := range t.mu.shards {
		if d.Id != shardID {
			continue
		}
		for _, id := range d.Replicas {
			a := t.mu.stores[id]
			switch {
			case a == "":
			case id == t.mu.leaders[shardID]:
				leader = append(leader, a)
			default:
				followers = append(followers, a)
			}
		}
	}
	return append(followers, leader...)
}

// overlapping returns the shards that hold keys of [key, end) (etcd's
// conventions: end nil is the single key, empty is to the end).
func (t *Topology) overlapping(key, end []byte) []*metapb.ShardDescriptor {
	var out []*metapb.ShardDescriptor
	for _, d := range t.Shards() {
		if len(d.EndKey) > 0 && bytes.Compare(key, d.EndKey) >= 0 {
			continue
		}
		switch {
		case end == nil:
			if bytes.Compare(key, d.StartKey) < 0 {
				continue
			}
		case len(end) > 0:
			if bytes.Compare(end, d.StartKey) <= 0 {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}
