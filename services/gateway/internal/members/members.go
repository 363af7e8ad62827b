// Package members is the gateway tier as etcd clients see it: each gateway
// registers itself in the meta shard and renews the registration while it
// runs, so MemberList on any gateway lists every live one (clientv3's
// endpoint auto-sync and kube-apiserver keep them all), and every gateway
// names the same one as etcd's leader in Status.
package members

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tessera-kv/tessera/proto/metapb"
)

// TTL is how long a registration lives unless renewed; gateways renew it
// every TTL/3, so a gateway that stops is gone from member lists within
// TTL.
const TTL = 10 * time.Second

// cacheFor bounds how old a member list may be when it is served again
// (Status and MemberList are called often: health checks, auto-sync).
const cacheFor = 500 * time.Millisecond

// Meta is the meta shard's side of registration.
type Meta interface {
	Register(ctx context.Context, g *metapb.Gateway) error
	List(ctx context.Context) ([]*metapb.Gateway, error)
}

// Registry registers this gateway and answers who the members are.
type Registry struct {
	meta Meta
	self *metapb.Gateway
	log  *slog.Logger
	now  func() time.Time

	mu       sync.Mutex
	cached   []*metapb.Gateway
	cachedAt time.Time
}

// New returns the registry of a gateway with this member ID, name and the
// client URLs it advertises.
func New(meta Meta, id uint64, name string, clientURLs []string, log *slog.Logger) *Registry {
	return &Registry{meta: meta, self: &metapb.Gateway{MemberId: id, Name: name, ClientUrls: clientURLs, TtlMs: TTL.Milliseconds()}, log: log, now: time.Now}
}

// SetClientURLs sets the URLs the gateway advertises (known once its
// listeners are bound); call it before Run and before serving.
func (r *Registry) SetClientURLs(urls []string) { r.self.ClientUrls = urls }

// Run registers the gateway and renews the registration until ctx ends.
func (r *Registry) Run(ctx context.Context) {
	for {
		rctx, cancel := context.WithTimeout(ctx, TTL/3)
		err := r.register(rctx, r.now().Add(TTL))
		cancel()
		wait := TTL / 3
		if err != nil && ctx.Err() == nil {
			r.log.Warn("gateway registration failed; retrying", "err", err)
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (r *Registry) register(ctx context.Context, expires time.Time) error {
	g := &metapb.Gateway{MemberId: r.self.MemberId, Name: r.self.Name, ClientUrls: r.self.ClientUrls, TtlMs: r.self.TtlMs}
	if !expires.IsZero() {
		g.ExpiresUnixMs = expires.UnixMilli()
	}
	return r.meta.Register(ctx, g)
}

// Deregister removes the registration (a gateway shutting down), so
// clients stop listing it at once rather than after TTL.
func (r *Registry) Deregister(ctx context.Context) error { return r.register(ctx, time.Time{}) }

// Live returns the live gateways, this one always among them, by member
// ID (etcd lists members by ID).
func (r *Registry) Live(ctx context.Context) ([]*metapb.Gateway, error) {
	r.mu.Lock()
	if r.cached != nil && r.now().Sub(r.cachedAt) < cacheFor {
		out := r.cached
		r.mu.Unlock()
		return out, nil
	}
	r.mu.Unlock()
	all, err := r.meta.List(ctx)
	if err != nil {
		return nil, err
	}
	now := r.now().UnixMilli()
	var live []*metapb.Gateway
	selfListed := false
	for _, g := range all {
		if g.ExpiresUnixMs > now {
			live = append(live, g)
			selfListed = selfListed || g.MemberId == r.self.MemberId
		}
	}
	if !selfListed {
		live = append(live, r.self) // not registered yet (or the meta shard lost it): a client reached it
	}
	slices.SortFunc(live, func(a, b *metapb.Gateway) int { return cmp.Compare(a.MemberId, b.MemberId) })
	r.mu.Lock()
	r.cached, r.cachedAt = live, r.now()
	r.mu.Unlock()
	return live, nil
}

// Leader is the member every gateway reports as etcd's leader: the live
// gateway registered first (lowest registration index; unregistered ones
// last), so all of them agree while membership is stable.
func (r *Registry) Leader(ctx context.Context) (uint64, error) {
	live, err := r.Live(ctx)
	if err != nil {
		return 0, err
	}
	best := live[0]
	for _, g := range live[1:] {
		if rank(g) < rank(best) || rank(g) == rank(best) && g.MemberId < best.MemberId {
			best = g
		}
	}
	return best.MemberId, nil
}

func rank(g *metapb.Gateway) uint64 {
	if g.SinceIndex == 0 {
		return ^uint64(0)
	}
	return g.SinceIndex
}
