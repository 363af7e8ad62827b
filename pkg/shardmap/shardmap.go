// Package shardmap caches what a stateless process knows of the cluster: the
// shard map read from any replica's Meta API, a leader hint per shard, and
// one gRPC connection per replica process. Gateways route requests with it;
// watchers follow shards' change feeds with it.
package shardmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/proto/metapb"
)

// fetchTimeout bounds one GetShardMap call to one replica.
const fetchTimeout = 2 * time.Second

// Cache is the cached shard map and the connections to replicas.
type Cache struct {
	seeds []string
	peer  rpcconn.Peer

	refreshMu sync.Mutex // serializes refreshes: concurrent misses share one

	mu struct {
		sync.RWMutex
		shards  []*metapb.ShardDescriptor // sorted by start key
		stores  map[uint64]string         // store ID -> API address
		meta    *metapb.ShardDescriptor   // the meta shard, on every store
		leaders map[uint64]uint64         // shard ID -> leader store hint
		conns   map[string]*grpc.ClientConn
		fetched time.Time
	}
}

// New returns a cache that bootstraps from the given replica API addresses
// and connects to replicas through peer.
func New(seeds []string, peer rpcconn.Peer) *Cache {
	c := &Cache{seeds: seeds, peer: peer}
	c.mu.stores = map[uint64]string{}
	c.mu.leaders = map[uint64]uint64{}
	c.mu.conns = map[string]*grpc.ClientConn{}
	return c
}

// Close closes every connection.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.mu.conns {
		cc.Close()
	}
	c.mu.conns = map[string]*grpc.ClientConn{}
}

// Conn returns the connection to the replica process at addr.
func (c *Cache) Conn(addr string) (*grpc.ClientConn, error) {
	c.mu.RLock()
	cc, ok := c.mu.conns[addr]
	c.mu.RUnlock()
	if ok {
		return cc, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.mu.conns[addr]; ok {
		return cc, nil
	}
	cc, err := c.peer.Dial(addr)
	if err != nil {
		return nil, err
	}
	c.mu.conns[addr] = cc
	return cc, nil
}

// Addresses returns the seeds and every known replica address.
func (c *Cache) Addresses() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := append([]string(nil), c.seeds...)
	for _, a := range c.mu.stores {
		out = append(out, a)
	}
	return out
}

// StoreAddresses returns the API address of every known store, in store ID
// order.
func (c *Cache) StoreAddresses() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ids := make([]uint64, 0, len(c.mu.stores))
	for id := range c.mu.stores {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = c.mu.stores[id]
	}
	return out
}

// Refresh fetches the shard map from any reachable replica. Callers that
// miss concurrently share one fetch: a map fetched after since is reused.
func (c *Cache) Refresh(ctx context.Context, since time.Time) error {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	c.mu.RLock()
	fresh := c.mu.fetched.After(since)
	c.mu.RUnlock()
	if fresh {
		return nil
	}
	lastErr := errors.New("no replica addresses")
	for _, addr := range c.Addresses() {
		cc, err := c.Conn(addr)
		if err != nil {
			lastErr = err
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		resp, err := metapb.NewMetaClient(cc).GetShardMap(fctx, &metapb.GetShardMapRequest{})
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		c.install(resp)
		return nil
	}
	return fmt.Errorf("shardmap: fetch shard map: %w", lastErr)
}

func (c *Cache) install(resp *metapb.GetShardMapResponse) {
	shards := append([]*metapb.ShardDescriptor(nil), resp.ShardMap.Shards...)
	sort.Slice(shards, func(i, j int) bool { return bytes.Compare(shards[i].StartKey, shards[j].StartKey) < 0 })
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.shards = shards
	meta := &metapb.ShardDescriptor{Id: resp.ShardMap.MetaShardId}
	for _, s := range resp.ShardMap.Stores {
		c.mu.stores[s.Id] = s.ApiAddress
		meta.Replicas = append(meta.Replicas, s.Id)
	}
	c.mu.meta = meta
	for id, l := range resp.Leaders {
		if l != 0 {
			c.mu.leaders[id] = l
		}
	}
	c.mu.fetched = time.Now()
}

// Shards returns every data shard, in key order (nil before a refresh).
func (c *Cache) Shards() []*metapb.ShardDescriptor {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.mu.shards
}

// MetaShard describes the meta shard (nil before a refresh).
func (c *Cache) MetaShard() *metapb.ShardDescriptor {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.mu.meta
}

// Overlapping returns the shards holding keys of [key, end) with etcd's
// conventions: end nil is the single key; empty or "\0" is to the end of
// the keyspace.
func (c *Cache) Overlapping(key, end []byte) []*metapb.ShardDescriptor {
	var out []*metapb.ShardDescriptor
	for _, d := range c.Shards() {
		if Overlaps(d, key, end) {
			out = append(out, d)
		}
	}
	return out
}

// Overlaps reports whether shard d holds keys of [key, end) (conventions as
// in Overlapping).
func Overlaps(d *metapb.ShardDescriptor, key, end []byte) bool {
	if len(d.EndKey) > 0 && bytes.Compare(key, d.EndKey) >= 0 {
		return false
	}
	switch {
	case end == nil:
		return bytes.Compare(key, d.StartKey) >= 0
	case len(end) == 0 || (len(end) == 1 && end[0] == 0):
		return true
	}
	return bytes.Compare(end, d.StartKey) > 0 && bytes.Compare(key, end) < 0
}

// StoreAddr is the API address of a store ("" if unknown).
func (c *Cache) StoreAddr(store uint64) string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.mu.stores[store]
}

// Leader is the leader hint of a shard (0: none).
func (c *Cache) Leader(shardID uint64) uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.mu.leaders[shardID]
}

// SetLeader records a leader hint; 0 forgets it.
func (c *Cache) SetLeader(shardID, store uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if store == 0 {
		delete(c.mu.leaders, shardID)
		return
	}
	c.mu.leaders[shardID] = store
}

// Replicas returns the API addresses of a shard's replicas (the meta
// shard's too), followers first (reads that any replica can serve keep
// load off the leader).
func (c *Cache) Replicas(shardID uint64) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var followers, leader []string
	for _, d := range append(c.mu.shards[:len(c.mu.shards):len(c.mu.shards)], c.mu.meta) {
		if d == nil || d.Id != shardID {
			continue
		}
		for _, id := range d.Replicas {
			a := c.mu.stores[id]
			switch {
			case a == "":
			case id == c.mu.leaders[shardID]:
				leader = append(leader, a)
			default:
				followers = append(followers, a)
			}
		}
	}
	return append(followers, leader...)
}
