// Package router is the gateway's side of routing (CockroachDB's
// kvclient): a cache of the shard map, the leader hint per shard, one client
// connection per store, and the retry loop that heals the cache from typed
// routing errors (NotLeader, WrongShard) carried as gRPC status details.
package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
)

// Router routes requests to the stores holding a shard.
type Router struct {
	seeds []string
	log   *slog.Logger

	refreshMu sync.Mutex // serializes refreshes: concurrent misses share one

	mu struct {
		sync.RWMutex
		shards  []*metapb.ShardDescriptor // sorted by start key
		stores  map[uint64]string         // store ID -> API address
		leaders map[uint64]uint64         // shard ID -> leader store hint
		conns   map[string]*grpc.ClientConn
		fetched time.Time
	}
}

// New returns a router that bootstraps from the given replica API addresses.
func New(seeds []string, log *slog.Logger) *Router {
	r := &Router{seeds: seeds, log: log}
	r.mu.stores = map[uint64]string{}
	r.mu.leaders = map[uint64]uint64{}
	r.mu.conns = map[string]*grpc.ClientConn{}
	return r
}

// Close closes every connection.
func (r *Router) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.mu.conns {
		c.Close()
	}
	r.mu.conns = map[string]*grpc.ClientConn{}
}

func (r *Router) conn(addr string) (*grpc.ClientConn, error) {
	r.mu.RLock()
	c, ok := r.mu.conns[addr]
	r.mu.RUnlock()
	if ok {
		return c, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.mu.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1), grpc.MaxCallSendMsgSize(1<<31-1)))
	if err != nil {
		return nil, err
	}
	r.mu.conns[addr] = c
	return c, nil
}

// AnyReplica is a connection that tries the known replicas in turn (for
// admin calls that any replica answers).
func (r *Router) AnyReplica() grpc.ClientConnInterface { return anyReplica{r} }

type anyReplica struct{ r *Router }

func (a anyReplica) addrs() []string {
	a.r.mu.RLock()
	defer a.r.mu.RUnlock()
	out := append([]string(nil), a.r.seeds...)
	for _, s := range a.r.mu.stores {
		out = append(out, s)
	}
	return out
}

func (a anyReplica) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	var lastErr error = errors.New("no replica addresses")
	for _, addr := range a.addrs() {
		c, err := a.r.conn(addr)
		if err != nil {
			lastErr = err
			continue
		}
		if lastErr = c.Invoke(ctx, method, args, reply, opts...); lastErr == nil || status.Code(lastErr) != codes.Unavailable {
			return lastErr
		}
	}
	return lastErr
}

func (a anyReplica) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "router: streams to any replica are not supported")
}

// Refresh fetches the shard map from any reachable store. Callers that miss
// concurrently share one fetch: a refresh newer than since is reused.
func (r *Router) Refresh(ctx context.Context, since time.Time) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	r.mu.RLock()
	fresh := r.mu.fetched.After(since)
	addrs := append([]string(nil), r.seeds...)
	for _, a := range r.mu.stores {
		addrs = append(addrs, a)
	}
	r.mu.RUnlock()
	if fresh {
		return nil
	}
	var lastErr error
	for _, addr := range addrs {
		c, err := r.conn(addr)
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
		r.install(resp)
		return nil
	}
	if lastErr == nil {
		lastErr = errors.New("no replica addresses")
	}
	return fmt.Errorf("router: fetch shard map: %w", lastErr)
}

func (r *Router) install(resp *metapb.GetShardMapResponse) {
	shards := append([]*metapb.ShardDescriptor(nil), resp.ShardMap.Shards...)
	sort.Slice(shards, func(i, j int) bool { return bytes.Compare(shards[i].StartKey, shards[j].StartKey) < 0 })
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.shards = shards
	for _, s := range resp.ShardMap.Stores {
		r.mu.stores[s.Id] = s.ApiAddress
	}
	for id, l := range resp.Leaders {
		if l != 0 {
			r.mu.leaders[id] = l
		}
	}
	r.mu.fetched = time.Now()
}

// Shards returns the descriptors overlapping [key, end) (end nil: the single
// key; empty non-nil end: to the end of the keyspace), in key order.
func (r *Router) Shards(ctx context.Context, key, end []byte) ([]*metapb.ShardDescriptor, error) {
	r.mu.RLock()
	n := len(r.mu.shards)
	r.mu.RUnlock()
	if n == 0 {
		if err := r.Refresh(ctx, time.Time{}); err != nil {
			return nil, err
		}
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*metapb.ShardDescriptor
	for _, d := range r.mu.shards {
		if overlaps(d, key, end) {
			out = append(out, d)
		}
	}
	return out, nil
}

// All returns every data shard's descriptor.
func (r *Router) All(ctx context.Context) ([]*metapb.ShardDescriptor, error) {
	return r.Shards(ctx, []byte{0}, []byte{})
}

func overlaps(d *metapb.ShardDescriptor, key, end []byte) bool {
	// The shard is [d.StartKey, d.EndKey); the request [key, end).
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

// Call runs fn against the leader of shard, retrying with a healed cache.
//
// A mutating call is retried only when the store proved it did not take the
// request (a NotLeader answer) or when the connection was down before the
// call, so nothing was sent. If the connection breaks while a write is in
// flight its outcome is unknown: the client gets etcd's "request timed out,
// possibly due to connection lost" rather than a second application.
func (r *Router) Call(ctx context.Context, shard *metapb.ShardDescriptor, mutating bool, fn func(context.Context, shardpb.ShardClient) error) error {
	var lastErr error
	for attempt := 0; attempt < 12; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		addr, store := r.target(shard, attempt)
		if addr == "" {
			lastErr = rpctypes.ErrGRPCNoLeader
			if err := r.Refresh(ctx, time.Now().Add(-100*time.Millisecond)); err != nil {
				lastErr = err
			}
			sleep(ctx, backoff(attempt))
			continue
		}
		c, err := r.conn(addr)
		if err != nil {
			return err
		}
		if mutating && !connected(ctx, c) {
			r.setLeader(shard.Id, 0)
			lastErr = rpctypes.ErrGRPCNoLeader
			sleep(ctx, backoff(attempt))
			continue
		}
		err = fn(ctx, shardpb.NewShardClient(c))
		if err == nil {
			return nil
		}
		lastErr = err
		st, _ := status.FromError(err)
		if nl, ok := detail[*shardpb.NotLeader](st); ok {
			r.setLeader(shard.Id, nl.LeaderStoreId)
			if nl.LeaderStoreId == 0 || nl.LeaderStoreId == store {
				sleep(ctx, backoff(attempt))
			}
			continue
		}
		if _, ok := detail[*shardpb.WrongShard](st); ok {
			return err // the caller re-resolves the keys; descriptors changed
		}
		if st.Code() == codes.Unavailable && !isEtcdError(st) {
			r.setLeader(shard.Id, 0)
			if mutating {
				return rpctypes.ErrGRPCTimeoutDueToConnectionLost
			}
			sleep(ctx, backoff(attempt))
			continue
		}
		return err
	}
	if st, ok := status.FromError(lastErr); ok && st.Message() == "etcdserver: not leader" {
		return rpctypes.ErrGRPCNoLeader
	}
	return lastErr
}

// connected waits (briefly) for the connection to be usable, so a write is
// only sent over a connection that is up.
func connected(ctx context.Context, c *grpc.ClientConn) bool {
	c.Connect()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for {
		switch s := c.GetState(); s {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		default:
			if !c.WaitForStateChange(ctx, s) {
				return false
			}
		}
	}
}

// isEtcdError tells an etcd error passed on by a replica (to return to the
// client as is) from a transport failure.
func isEtcdError(st *status.Status) bool {
	return strings.HasPrefix(st.Message(), "etcdserver: ") && st.Message() != "etcdserver: not leader"
}

func detail[T any](st *status.Status) (T, bool) {
	var zero T
	if st == nil {
		return zero, false
	}
	for _, d := range st.Details() {
		if v, ok := d.(T); ok {
			return v, true
		}
	}
	return zero, false
}

// target picks the store to call: the leader hint, else the replicas in turn.
func (r *Router) target(shard *metapb.ShardDescriptor, attempt int) (string, uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if l, ok := r.mu.leaders[shard.Id]; ok && l != 0 {
		if a := r.mu.stores[l]; a != "" {
			return a, l
		}
	}
	if len(shard.Replicas) == 0 {
		return "", 0
	}
	id := shard.Replicas[attempt%len(shard.Replicas)]
	return r.mu.stores[id], id
}

func (r *Router) setLeader(shardID, store uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if store == 0 {
		delete(r.mu.leaders, shardID)
		return
	}
	r.mu.leaders[shardID] = store
}

func backoff(attempt int) time.Duration {
	d := 25 * time.Millisecond << min(attempt, 4)
	return d
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
