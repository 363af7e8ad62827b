// Package watcher runs the watcher tier: it follows every shard's change feed
// into a bounded in-memory history (internal/watchcache) and serves etcd's
// Watch API from it to gateways, so that many client watches cost one
// upstream subscription per shard.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/pkg/shardmap"
	"github.com/tessera-kv/tessera/pkg/telemetry"
	"github.com/tessera-kv/tessera/pkg/wirecodec"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/services/watcher/internal/feed"
	"github.com/tessera-kv/tessera/services/watcher/internal/watchcache"
)

// CacheConfig bounds the watcher's history and streams.
type CacheConfig = watchcache.Config

// DefaultCacheConfig returns the default bounds.
func DefaultCacheConfig() CacheConfig { return watchcache.DefaultConfig() }

// Config configures a watcher.
type Config struct {
	// Replicas are internal API addresses of replicas (seeds for the shard map).
	Replicas []string
	// APIAddress is where etcd's Watch service is served to gateways.
	APIAddress string
	// HTTPAddress serves /livez, /readyz and /metrics; empty disables it.
	HTTPAddress string
	// RefreshInterval is how often the shard map is re-read.
	RefreshInterval time.Duration
	// Cache bounds the history and the streams (watchcache.DefaultConfig
	// for zero fields).
	Cache CacheConfig
	// Peer is the transport to replicas and of the Watch API gateways call
	// (zero: plaintext TCP).
	Peer   rpcconn.Peer
	Logger *slog.Logger
}

// Watcher is a running watcher process.
type Watcher struct {
	cfg     Config
	log     *slog.Logger
	smap    *shardmap.Cache
	cache   *watchcache.Cache
	server  *watchServer
	grpcSrv *grpc.Server
	apiLis  net.Listener
	srv     *http.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// metricsReg is the metrics callback, unregistered at Close.
	metricsReg metric.Registration

	mu       sync.Mutex
	followed map[uint64]bool // shards whose feed is followed; guarded by mu
}

// Start connects to the replicas, follows every shard's feed and serves
// the Watch API.
func Start(cfg Config) (*Watcher, error) {
	if len(cfg.Replicas) == 0 {
		return nil, errors.New("watcher: at least one replica address required")
	}
	if cfg.APIAddress == "" {
		return nil, errors.New("watcher: API address required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Second
	}
	cfg.Cache.Logger = cfg.Logger
	w := &Watcher{cfg: cfg, log: cfg.Logger, smap: shardmap.New(cfg.Replicas, cfg.Peer), followed: map[uint64]bool{}}
	w.cache = watchcache.New(cfg.Cache, feed.Source{M: w.smap})
	metricsHandler, err := telemetry.Handler()
	if err != nil {
		return nil, err
	}
	if err := w.registerMetrics(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel

	if w.apiLis, err = net.Listen("tcp", cfg.APIAddress); err != nil {
		w.Close()
		return nil, fmt.Errorf("watcher: listen %s: %w", cfg.APIAddress, err)
	}
	w.grpcSrv = grpc.NewServer(append(cfg.Peer.ServerOptions(), grpc.MaxSendMsgSize(1<<31-1), grpc.ForceServerCodecV2(wirecodec.New()))...)
	w.server = &watchServer{cache: w.cache, maxResponseBytes: w.cache.Config().MaxResponseBytes}
	pb.RegisterWatchServer(w.grpcSrv, w.server)
	go w.grpcSrv.Serve(w.apiLis)

	if cfg.HTTPAddress != "" {
		l, err := net.Listen("tcp", cfg.HTTPAddress)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("watcher: listen %s: %w", cfg.HTTPAddress, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/livez", func(rw http.ResponseWriter, _ *http.Request) { fmt.Fprintln(rw, "ok") })
		mux.Handle("/metrics", metricsHandler)
		telemetry.Profiles(mux)
		mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
			if len(w.smap.Shards()) == 0 {
				http.Error(rw, "no shard map yet", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(rw, "ok")
		})
		w.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go w.srv.Serve(l)
	}
	w.wg.Add(1)
	go w.follow(ctx)
	w.log.Info("watcher serving", "api", w.APIAddr())
	return w, nil
}

// follow keeps the shard map fresh and a feed running for every shard.
func (w *Watcher) follow(ctx context.Context) {
	defer w.wg.Done()
	t := time.NewTicker(w.cfg.RefreshInterval)
	defer t.Stop()
	for {
		err := w.smap.Refresh(ctx, time.Now())
		if err != nil && ctx.Err() == nil {
			w.log.Warn("shard map refresh failed", "err", err)
		}
		w.followShards(ctx, w.smap.Shards())
		// Until every shard is followed, try again soon: feeds that start
		// late start "from now", and with several shards a watch placed
		// before then can miss what a late shard wrote in between.
		next := t.C
		if err != nil || len(w.smap.Shards()) == 0 {
			next = time.After(100 * time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-next:
		}
	}
}

func (w *Watcher) followShards(ctx context.Context, shards []*metapb.ShardDescriptor) {
	w.mu.Lock()
	defer w.mu.Unlock()
	first := len(w.followed) == 0
	for _, d := range shards {
		if w.followed[d.Id] {
			continue
		}
		if !first && d.SplitRevision > 0 {
			// Made by a split after this watcher started: from its split
			// on (its parent's feed had its events until then).
			w.followChildLocked(ctx, d)
			continue
		}
		w.followNowLocked(ctx, d)
	}
}

// followNowLocked follows a shard's feed from now.
func (w *Watcher) followNowLocked(ctx context.Context, d *metapb.ShardDescriptor) {
	w.followed[d.Id] = true
	w.cache.AddShard(d.Id)
	w.wg.Add(1)
	go func(id uint64) {
		defer w.wg.Done()
		feed.Follow(ctx, w.smap, id, w.sink(ctx), w.log.With("shard", id))
	}(d.Id)
}

func (w *Watcher) followChildLocked(ctx context.Context, d *metapb.ShardDescriptor) {
	if w.followed[d.Id] {
		return
	}
	w.smap.Install([]*metapb.ShardDescriptor{d})
	w.followed[d.Id] = true
	closed := d.SplitRevision
	if !w.cache.AddShardAt(d.Id, closed) {
		closed = -1 // found too late: from now, with every watch cancelled
	}
	w.log.Info("following a shard made by a split", "shard", d.Id, "parent", d.ParentId, "from", d.SplitRevision+1)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		feed.FollowFrom(ctx, w.smap, d.Id, closed, w.sink(ctx), w.log.With("shard", d.Id))
	}()
}

// sink is the watch cache, which also learns of splits from the feeds.
func (w *Watcher) sink(ctx context.Context) feed.Sink {
	return splitSink{Cache: w.cache, w: w, ctx: ctx}
}

type splitSink struct {
	*watchcache.Cache
	w   *Watcher
	ctx context.Context
}

func (s splitSink) Split(_ uint64, child *metapb.ShardDescriptor, fromNow bool) {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	if s.w.followed[child.Id] {
		return
	}
	if fromNow {
		// Its parent's feed starts from now: so does the child's (the
		// parent reports every split it made when it subscribes, even
		// old ones, whose history from the split on may be long gone).
		s.w.smap.Install([]*metapb.ShardDescriptor{child})
		s.w.followNowLocked(s.ctx, child)
		return
	}
	s.w.followChildLocked(s.ctx, child)
}

// Stats reports the watcher's load: streams, watches, history, and the
// responses sent to gateways since start.
type Stats struct {
	watchcache.Stats
	ResponsesSent int64
}

// Stats returns the current load.
func (w *Watcher) Stats() Stats {
	return Stats{Stats: w.cache.Stats(), ResponsesSent: w.server.responsesSent.Load()}
}

// APIAddr is the address of the Watch service.
func (w *Watcher) APIAddr() string { return w.apiLis.Addr().String() }

// Released is the revision up to which the watcher has every shard's events.
func (w *Watcher) Released() int64 { return w.cache.Released() }

// Close stops the watcher; open watch streams end.
func (w *Watcher) Close() {
	if w.grpcSrv != nil {
		w.grpcSrv.Stop()
	}
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
	if w.metricsReg != nil {
		w.metricsReg.Unregister()
	}
	if w.cache != nil {
		w.cache.Close()
	}
	if w.srv != nil {
		w.srv.Close()
	}
	w.smap.Close()
}
