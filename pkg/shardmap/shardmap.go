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
	pool  *rpcconn.Pool

	refreshMu sync.Mutex // serializes refreshes: concurrent misses share one

	mu struct {
		sync.RWMutex
		shards  []*metapb.ShardDescriptor // sorted by start key
		stores  map[uint64]string         // store ID -> API address
		meta    *metapb.ShardDescriptor   // the meta shard, on every store
		leaders map[uint64]uint64         // shard ID -> leader store hint
		fetched time.Time
	}
}

// New returns a cache that bootstraps from the given replica API addresses
// and connects to replicas through peer.
func New(seeds []string, peer rpcconn.Peer) *Cache {
	c := &Cache{seeds: seeds, pool: rpcconn.NewPool(peer)}
	c.mu.stores = map[uint64]string{}
	c.mu.leaders = map[uint64]uint64{}
	return c
}

// Close closes every connection.
func (c *Cache) Close() { c.pool.Close() }

// Conn returns the connection to the replica process at addr.
func (c *Cache) Conn(addr string) (*grpc.ClientConn, error) { return c.pool.Conn(addr) }

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
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.shards = merge(c.mu.shards, resp.ShardMap.Shards)
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

// Install merges descriptors a shard sent with a WrongShard answer (its
// own, newer than the map the meta shard served, and those split from
// it) into the cache. It reports whether any was newer than the cache's.
func (c *Cache) Install(ds []*metapb.ShardDescriptor) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.mu.shards
	c.mu.shards = merge(before, ds)
	if len(before) != len(c.mu.shards) {
		return true
	}
	for i := range before {
		if before[i] != c.mu.shards[i] {
			return true
		}
	}
	return false
}

// merge combines two views of the shard map. Per shard ID the higher
// generation wins, so an older map (a meta shard behind the split a shard
// already applied, or a stale answer) never replaces a newer descriptor.
// A descriptor overlapping another that is newer by that rule is older
// than the split that cut it, and is dropped: the key range a split moved
// goes to the child.
func merge(have, in []*metapb.ShardDescriptor) []*metapb.ShardDescriptor {
	byID := map[uint64]*metapb.ShardDescriptor{}
	for _, list := range [][]*metapb.ShardDescriptor{have, in} {
		for _, d := range list {
			if d == nil {
				continue
			}
			if old, ok := byID[d.Id]; !ok || d.Generation > old.Generation {
				byID[d.Id] = d
			}
		}
	}
	all := make([]*metapb.ShardDescriptor, 0, len(byID))
	for _, d := range byID {
		all = append(all, d)
	}
	sort.Slice(all, func(i, j int) bool { return bytes.Compare(all[i].StartKey, all[j].StartKey) < 0 })
	out := all[:0]
	for _, d := range all {
		keep := true
		for _, o := range all {
			if o != d && overlapsRange(o, d) && newer(o, d) {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, d)
		}
	}
	return out
}

// newer reports whether a descriptor describes a later state of the range
// both cover: the one made by the later split, ties (a parent and the child
// its current descriptor made) to the narrower.
func newer(a, b *metapb.ShardDescriptor) bool {
	if a.SplitRevision != b.SplitRevision {
		return a.SplitRevision > b.SplitRevision
	}
	return a.Generation > b.Generation
}

func overlapsRange(a, b *metapb.ShardDescriptor) bool {
	aEndsBefore := len(a.EndKey) > 0 && bytes.Compare(a.EndKey, b.StartKey) <= 0
	bEndsBefore := len(b.EndKey) > 0 && bytes.Compare(b.EndKey, a.StartKey) <= 0
	return !aEndsBefore && !bEndsBefore
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
