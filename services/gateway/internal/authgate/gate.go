// Package authgate is the gateway's side of etcd's auth: it keeps a fresh
// copy of the auth store, tells who makes each request (token, or client
// certificate common name) and allows or refuses it with etcd's errors.
//
// Freshness: a copy fetched by a request sent at time t is used until
// t + auth.MaxStaleness at most, and every change to the store returns to
// its caller only after that long (see Changed). So a request that starts
// after a change (say, a revoked permission) returned is always checked
// against the changed store, on every gateway: enforcement is
// linearizable, as etcd's, without a round trip per request.
package authgate

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/pkg/tlsconf"
	"github.com/tessera-kv/tessera/proto/metapb"
)

// Fetch reads the auth store from the meta shard (linearizably); known is
// the revision the gateway holds, so an unchanged store is not resent.
type Fetch func(ctx context.Context, known uint64) (*metapb.GetAuthStateResponse, error)

// Gate holds the gateway's copy of the auth store.
type Gate struct {
	fetch  Fetch
	tokens auth.Tokens
	leases LeaseKeys
	log    *slog.Logger
	now    func() time.Time

	mu         sync.Mutex
	view       *auth.View
	validUntil time.Time
	inflight   chan struct{} // closed when the running fetch ends
}

// New returns a gate; Run keeps its copy fresh.
func New(fetch Fetch, tokens auth.Tokens, log *slog.Logger) *Gate {
	return &Gate{fetch: fetch, tokens: tokens, log: log, now: time.Now}
}

// Tokens is the token provider (for Authenticate).
func (g *Gate) Tokens() auth.Tokens { return g.tokens }

// Run refreshes the copy ahead of its expiry until ctx ends, so requests
// rarely wait for a fetch.
func (g *Gate) Run(ctx context.Context) {
	t := time.NewTicker(auth.MaxStaleness / 4)
	defer t.Stop()
	for {
		if _, err := g.refresh(ctx); err != nil && ctx.Err() == nil {
			g.log.Debug("auth store refresh failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// patience bounds how long a request without a deadline waits for the
// auth store (as a watch creation waits for the current revision).
const patience = 10 * time.Second

// View returns a copy of the auth store fresh enough to check a request
// that starts now, fetching one if needed. While the meta shard cannot
// answer (an election), it keeps trying until ctx ends; the error is then
// Unavailable (retryable), never a decision about the request.
func (g *Gate) View(ctx context.Context) (*auth.View, error) {
	g.mu.Lock()
	if g.view != nil && g.now().Before(g.validUntil) {
		v := g.view
		g.mu.Unlock()
		return v, nil
	}
	g.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, patience)
		defer cancel()
	}
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		v, err := g.refresh(ctx)
		if err == nil {
			return v, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// refresh fetches the store (joining a fetch already running).
func (g *Gate) refresh(ctx context.Context) (*auth.View, error) {
	for {
		g.mu.Lock()
		if wait := g.inflight; wait != nil {
			g.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return nil, rpctypes.ErrGRPCTimeout
			}
			g.mu.Lock()
			v, ok := g.view, g.view != nil && g.now().Before(g.validUntil)
			g.mu.Unlock()
			if ok {
				return v, nil
			}
			if ctx.Err() != nil {
				return nil, rpctypes.ErrGRPCTimeout
			}
			continue // that fetch failed, or answered too long ago: fetch again
		}
		done := make(chan struct{})
		g.inflight = done
		var known uint64
		if g.view != nil {
			known = g.view.Generation()
		}
		prev := g.view
		g.mu.Unlock()

		sent := g.now()
		resp, err := g.fetch(ctx, known)
		g.mu.Lock()
		g.inflight = nil
		var v *auth.View
		switch {
		case err != nil:
		case resp.State != nil:
			v = auth.NewView(resp.State)
		case prev != nil && resp.Generation == prev.Generation():
			v = prev
		default:
			err = errors.New("authgate: the meta shard sent no auth store")
		}
		// A fetch answers for the store as of its send time, and a newer
		// copy is never replaced by an older one.
		if v != nil && (g.view == nil || v.Generation() >= g.view.Generation()) {
			g.view, g.validUntil = v, sent.Add(auth.MaxStaleness)
		}
		close(done)
		g.mu.Unlock()
		if err != nil {
			return nil, unavailable(err)
		}
		return v, nil
	}
}

// unavailable is what a request gets when the auth store cannot be read:
// a retryable error, never a decision.
func unavailable(err error) error {
	if rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(rpctypes.ErrGRPCNoLeader) {
		return rpctypes.ErrGRPCNoLeader
	}
	return rpctypes.ErrGRPCTimeout
}

// Changed is called after a change to the store through this gateway
// returned: it drops the local copy, then waits until no gateway can still
// hold a copy from before the change, so the caller's next request, on any
// gateway, sees it.
func (g *Gate) Changed(ctx context.Context, returned time.Time) error {
	g.mu.Lock()
	g.validUntil = time.Time{}
	g.mu.Unlock()
	// A little longer than the bound: clocks of other machines run at
	// slightly different rates.
	wait := time.Until(returned.Add(auth.MaxStaleness + auth.MaxStaleness/10))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return rpctypes.ErrGRPCTimeout
	}
}

// Identity is who makes the request in ctx: the user its token names, or
// with no token the common name of its verified client certificate
// (etcd's rule; the REST gateway's own requests carry no certificate, so
// REST clients use tokens). The zero Identity is nobody.
func (g *Gate) Identity(ctx context.Context, v *auth.View) (auth.Identity, error) {
	if !v.Enabled() {
		return auth.Identity{}, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	tok := md.Get(rpctypes.TokenFieldNameGRPC)
	if len(tok) == 0 {
		tok = md.Get(rpctypes.TokenFieldNameSwagger)
	}
	if len(tok) > 0 {
		return g.tokens.Verify(v, strings.TrimPrefix(tok[0], "Bearer "), g.now())
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if cn := tlsconf.CommonName(ti.State); cn != "" {
				return auth.Identity{User: cn}, nil
			}
		}
	}
	return auth.Identity{}, nil
}

// Who returns a fresh view and the request's identity.
func (g *Gate) Who(ctx context.Context) (*auth.View, auth.Identity, error) {
	v, err := g.View(ctx)
	if err != nil {
		return nil, auth.Identity{}, err
	}
	id, err := g.Identity(ctx, v)
	return v, id, err
}
