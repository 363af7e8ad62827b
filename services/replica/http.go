package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tessera-kv/tessera/pkg/telemetry"
)

// serveHTTP serves /livez, /readyz (every data shard held here is open
// and has a leader) and /metrics on cfg.HTTPAddress.
func (r *Replica) serveHTTP() error {
	metricsHandler, err := telemetry.Handler()
	if err != nil {
		return err
	}
	if err := r.registerMetrics(); err != nil {
		return err
	}
	if r.cfg.HTTPAddress == "" {
		return nil
	}
	l, err := net.Listen("tcp", r.cfg.HTTPAddress)
	if err != nil {
		return fmt.Errorf("replica: listen %s: %w", r.cfg.HTTPAddress, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", metricsHandler)
	r.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go r.httpSrv.Serve(l)
	return nil
}

func (r *Replica) ready() error {
	if r.LeaderOf(MetaShardID) == 0 {
		return errors.New("meta shard has no leader")
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	for id, ds := range r.shards {
		if ds.shard() == nil {
			return fmt.Errorf("shard %d not open", id)
		}
		if r.LeaderOf(id) == 0 {
			return fmt.Errorf("shard %d has no leader", id)
		}
	}
	return nil
}

// registerMetrics publishes the store's size and each shard's revisions.
func (r *Replica) registerMetrics() error {
	m := telemetry.Meter("tessera/replica")
	size, err1 := m.Int64ObservableGauge("tessera.replica.store.bytes", metric.WithDescription("disk space of the store"))
	rev, err2 := m.Int64ObservableGauge("tessera.replica.shard.revision", metric.WithDescription("etcd revision of a data shard"))
	compact, err3 := m.Int64ObservableGauge("tessera.replica.shard.compact.revision", metric.WithDescription("compaction revision of a data shard"))
	applied, err4 := m.Int64ObservableGauge("tessera.replica.shard.applied.index", metric.WithDescription("last applied Raft index of a data shard"))
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return err
	}
	store := attribute.Int64("store", int64(r.cfg.StoreID))
	var err error
	r.metricsReg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(size, r.store.Size(), metric.WithAttributes(store))
		r.mu.RLock()
		defer r.mu.RUnlock()
		for id, ds := range r.shards {
			sh := ds.shard()
			if sh == nil {
				continue
			}
			st := sh.State()
			attrs := metric.WithAttributes(store, attribute.Int64("shard", int64(id)))
			o.ObserveInt64(rev, st.Revision, attrs)
			o.ObserveInt64(compact, st.CompactRevision, attrs)
			o.ObserveInt64(applied, int64(st.AppliedIndex), attrs)
		}
		return nil
	}, size, rev, compact, applied)
	return err
}
