// Package watcher runs the watcher tier: it follows every shard's change feed
// and fans events out to gateways' watch streams. This first version has the
// process shape only: it learns the shard map from the replicas, keeps it
// fresh, and reports readiness; the change feeds and the Watch API are the
// subject of the watch work (see docs/ARCHITECTURE.md).
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tessera-kv/tessera/proto/metapb"
)

// Config configures a watcher.
type Config struct {
	// Replicas are internal API addresses of replicas.
	Replicas []string
	// HTTPAddress serves /livez and /readyz; empty disables it.
	HTTPAddress string
	// RefreshInterval is how often the shard map is re-read.
	RefreshInterval time.Duration
	Logger          *slog.Logger
}

// Watcher is a running watcher process.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	conns  []*grpc.ClientConn
	srv    *http.Server
	lis    net.Listener
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.RWMutex
	shmap *metapb.ShardMap // guarded by mu
}

// Start connects to the replicas and begins following the shard map.
func Start(cfg Config) (*Watcher, error) {
	if len(cfg.Replicas) == 0 {
		return nil, errors.New("watcher: at least one replica address required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Second
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger, done: make(chan struct{})}
	for _, a := range cfg.Replicas {
		c, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			w.Close()
			return nil, err
		}
		w.conns = append(w.conns, c)
	}
	if cfg.HTTPAddress != "" {
		l, err := net.Listen("tcp", cfg.HTTPAddress)
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("watcher: listen %s: %w", cfg.HTTPAddress, err)
		}
		w.lis = l
		mux := http.NewServeMux()
		mux.HandleFunc("/livez", func(rw http.ResponseWriter, _ *http.Request) { fmt.Fprintln(rw, "ok") })
		mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
			if w.ShardMap() == nil {
				http.Error(rw, "no shard map yet", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(rw, "ok")
		})
		w.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go w.srv.Serve(l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go w.follow(ctx)
	return w, nil
}

func (w *Watcher) follow(ctx context.Context) {
	defer close(w.done)
	t := time.NewTicker(w.cfg.RefreshInterval)
	defer t.Stop()
	for {
		w.refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *Watcher) refresh(ctx context.Context) {
	for _, c := range w.conns {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := metapb.NewMetaClient(c).GetShardMap(cctx, &metapb.GetShardMapRequest{})
		cancel()
		if err == nil {
			w.mu.Lock()
			w.shmap = resp.ShardMap
			w.mu.Unlock()
			return
		}
	}
}

// ShardMap is the last shard map read, or nil.
func (w *Watcher) ShardMap() *metapb.ShardMap {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.shmap
}

// Close stops the watcher.
func (w *Watcher) Close() {
	if w.cancel != nil {
		w.cancel()
		<-w.done
	}
	if w.srv != nil {
		w.srv.Close()
	}
	for _, c := range w.conns {
		c.Close()
	}
}
