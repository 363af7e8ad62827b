// Package router is the gateway's side of routing (CockroachDB's
// kvclient): over the shared shard-map cache (pkg/shardmap), the retry loop
// that heals the cache from typed routing errors (NotLeader, WrongShard)
// carried as gRPC status details.
package router

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/retry"
	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/pkg/shardmap"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
)

// Router routes requests to the stores holding a shard.
type Router struct {
	m   *shardmap.Cache
	log *slog.Logger

	// skip is, per shard, how many replicas to pass over before the first
	// one tried when no leader is known: bumped by a call that hung on a
	// replica (a blackholed link), so the next call starts elsewhere.
	skipMu sync.Mutex
	skip   map[uint64]int

	// local: replicas in this process, by API address; unary calls to
	// them run in-process (set before the first call).
	local map[string]*rpcconn.Local
}

// UseLocal makes unary calls to the replica at addr, in this process, skip
// the network. Call it before the first call.
func (r *Router) UseLocal(addr string, l *rpcconn.Local) {
	if r.local == nil {
		r.local = map[string]*rpcconn.Local{}
	}
	r.local[addr] = l
}

// New returns a router that bootstraps from the given replica API addresses
// and reaches replicas through peer.
func New(seeds []string, peer rpcconn.Peer, log *slog.Logger) *Router {
	return &Router{m: shardmap.New(seeds, peer), log: log, skip: map[uint64]int{}}
}

// Close closes every connection.
func (r *Router) Close() { r.m.Close() }

// AnyReplica is a connection that tries the known replicas in turn (for
// admin calls that any replica answers).
func (r *Router) AnyReplica() grpc.ClientConnInterface { return anyReplica{r.m} }

type anyReplica struct{ m *shardmap.Cache }

func (a anyReplica) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	var lastErr error = errors.New("no replica addresses")
	for _, addr := range a.m.Addresses() {
		c, err := a.m.Conn(addr)
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

// Install merges descriptors learned from a shard into the cached map
// (generation-checked: an older one never replaces a newer).
func (r *Router) Install(ds ...*metapb.ShardDescriptor) { r.m.Install(ds) }

// Refresh fetches the shard map; a map fetched after since is reused.
func (r *Router) Refresh(ctx context.Context, since time.Time) error { return r.m.Refresh(ctx, since) }

// Shards returns the descriptors overlapping [key, end) (end nil: the single
// key; empty non-nil end: to the end of the keyspace), in key order.
func (r *Router) Shards(ctx context.Context, key, end []byte) ([]*metapb.ShardDescriptor, error) {
	if len(r.m.Shards()) == 0 {
		if err := r.m.Refresh(ctx, time.Time{}); err != nil {
			return nil, err
		}
	}
	return r.m.Overlapping(key, end), nil
}

// All returns every data shard's descriptor.
func (r *Router) All(ctx context.Context) ([]*metapb.ShardDescriptor, error) {
	return r.Shards(ctx, []byte{0}, []byte{})
}

// Call runs fn against the leader of shard, retrying with a healed cache.
//
// A mutating call is retried only when the store proved it did not take the
// request (a NotLeader answer) or when the connection was down before the
// call, so nothing was sent. If the connection breaks while a write is in
// flight its outcome is unknown: the client gets etcd's "request timed out,
// possibly due to connection lost" rather than a second application.
func (r *Router) Call(ctx context.Context, shard *metapb.ShardDescriptor, mutating bool, fn func(context.Context, shardpb.ShardClient) error) error {
	return r.CallConn(ctx, shard, mutating, func(ctx context.Context, c grpc.ClientConnInterface) error {
		return fn(ctx, shardpb.NewShardClient(c))
	})
}

// CallMeta runs fn against the meta shard's leader (lease calls), with
// Call's retry rules.
func (r *Router) CallMeta(ctx context.Context, mutating bool, fn func(context.Context, metapb.MetaClient) error) error {
	if r.m.MetaShard() == nil {
		if err := r.m.Refresh(ctx, time.Time{}); err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
	}
	return r.CallConn(ctx, r.m.MetaShard(), mutating, func(ctx context.Context, c grpc.ClientConnInterface) error {
		return fn(ctx, metapb.NewMetaClient(c))
	})
}

// MetaShard describes the meta shard (nil if the map cannot be fetched).
func (r *Router) MetaShard() *metapb.ShardDescriptor {
	if r.m.MetaShard() == nil {
		_ = r.m.Refresh(context.Background(), time.Time{})
	}
	return r.m.MetaShard()
}

// Replicas lists the API addresses of a shard's replicas, followers first.
func (r *Router) Replicas(shardID uint64) []string { return r.m.Replicas(shardID) }

// LeaderHint is the store believed to lead a shard (0: none).
func (r *Router) LeaderHint(shardID uint64) uint64 { return r.m.Leader(shardID) }

// StoreAddr is a store's API address ("" if unknown).
func (r *Router) StoreAddr(store uint64) string { return r.m.StoreAddr(store) }

// StoreAddresses lists every store's API address.
func (r *Router) StoreAddresses() []string { return r.m.StoreAddresses() }

// CallStore runs fn against one store (for calls about the store itself).
func (r *Router) CallStore(ctx context.Context, addr string, fn func(context.Context, grpc.ClientConnInterface) error) error {
	c, err := r.m.Conn(addr)
	if err != nil {
		return err
	}
	return fn(ctx, c)
}

// CallConn is Call for any service a store serves.
func (r *Router) CallConn(ctx context.Context, shard *metapb.ShardDescriptor, mutating bool, fn func(context.Context, grpc.ClientConnInterface) error) error {
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
			retry.Sleep(ctx, callBackoff.Delay(attempt))
			continue
		}
		c, err := r.m.Conn(addr)
		if err != nil {
			return err
		}
		// Only over a connection that is up: a write must not be left
		// in a send buffer, and a read must not wait out the dial to a
		// store that went away (a restarting pod's address answers
		// nothing) when another replica can answer.
		if !connected(ctx, c, mutating) {
			r.m.SetLeader(shard.Id, 0)
			lastErr = rpctypes.ErrGRPCNoLeader
			retry.Sleep(ctx, callBackoff.Delay(attempt))
			continue
		}
		var cc grpc.ClientConnInterface = c
		if l := r.local[addr]; l != nil {
			cc = l.Conn(c)
		}
		err = fn(ctx, cc)
		if err == nil {
			return nil
		}
		lastErr = err
		st, _ := status.FromError(err)
		if nl, ok := detail[*shardpb.NotLeader](st); ok {
			r.m.SetLeader(shard.Id, nl.LeaderStoreId)
			if nl.LeaderStoreId == 0 || nl.LeaderStoreId == store {
				retry.Sleep(ctx, callBackoff.Delay(attempt))
			}
			continue
		}
		if ws, ok := detail[*shardpb.WrongShard](st); ok {
			// The shard split since the caller routed: learn the new
			// descriptors (or, if they are no news, the meta shard's
			// map) and let the caller route again (Rerouting).
			if !r.m.Install(ws.Descriptors) {
				_ = r.m.Refresh(ctx, time.Now())
			}
			return err
		}
		if ctx.Err() != nil {
			// The caller gave up waiting on this store (a blackholed link
			// holds a connection open): the next call finds the leader
			// again instead of waiting on it too, starting at another
			// replica.
			r.m.SetLeader(shard.Id, 0)
			r.skipMu.Lock()
			r.skip[shard.Id]++
			r.skipMu.Unlock()
			return err
		}
		if st.Code() == codes.Unavailable && !isEtcdError(st) {
			r.m.SetLeader(shard.Id, 0)
			if mutating {
				return rpctypes.ErrGRPCTimeoutDueToConnectionLost
			}
			retry.Sleep(ctx, callBackoff.Delay(attempt))
			continue
		}
		return err
	}
	if st, ok := status.FromError(lastErr); ok && st.Message() == "etcdserver: not leader" {
		return rpctypes.ErrGRPCNoLeader
	}
	return lastErr
}

// Rerouting runs fn, which resolves shards through the router and calls
// them, again while it fails with WrongShard: the shard that answered so
// changed nothing, and the router has learned the new descriptors.
func (r *Router) Rerouting(ctx context.Context, fn func() error) error {
	for attempt := 0; ; attempt++ {
		err := fn()
		if !IsWrongShard(err) {
			return err
		}
		if attempt == 8 {
			return status.Errorf(codes.Unavailable, "tessera: the shards of the request kept changing: %v", status.Convert(err).Message())
		}
		r.log.Debug("request rerouted after a split", "attempt", attempt, "err", err)
		retry.Sleep(ctx, callBackoff.Delay(attempt))
		if ctx.Err() != nil {
			return err
		}
	}
}

// IsWrongShard reports whether a shard refused a call routed by a stale
// descriptor.
func IsWrongShard(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	_, ok = detail[*shardpb.WrongShard](st)
	return ok
}

// connected waits for the connection to be usable, so a call is only sent
// over a connection that is up: up to a second for a write (which must go
// to the leader), a quarter of that for a read (another replica can take
// it, and the client's deadline runs meanwhile).
func connected(ctx context.Context, c *grpc.ClientConn, mutating bool) bool {
	c.Connect()
	wait := time.Second
	if !mutating {
		wait /= 4
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
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
	if l := r.m.Leader(shard.Id); l != 0 {
		if a := r.m.StoreAddr(l); a != "" {
			return a, l
		}
	}
	if len(shard.Replicas) == 0 {
		return "", 0
	}
	r.skipMu.Lock()
	attempt += r.skip[shard.Id]
	r.skipMu.Unlock()
	id := shard.Replicas[attempt%len(shard.Replicas)]
	return r.m.StoreAddr(id), id
}

// callBackoff spaces attempts at a shard while its leader or map settles.
var callBackoff = retry.Backoff{Base: 25 * time.Millisecond, Max: 400 * time.Millisecond}

// Stores is the meta leader's view of every store (liveness, shards held
// and led, sizes), for the callers that report on the stores.
func (r *Router) Stores(ctx context.Context) ([]*metapb.StoreStatus, error) {
	var resp *metapb.ListStoresResponse
	err := r.CallMeta(ctx, false, func(ctx context.Context, c metapb.MetaClient) (err error) {
		resp, err = c.ListStores(ctx, &metapb.ListStoresRequest{})
		return err
	})
	return resp.GetStores(), err
}
