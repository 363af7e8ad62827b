package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/lni/dragonboat/v4/raftio"
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
	telemetry.Profiles(mux)
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

// registerMetrics publishes the store's size and each shard's revisions,
// and etcd's own names where they mean the same (operators alert on them):
// etcd_server_has_leader, etcd_server_is_leader (per shard),
// etcd_mvcc_db_total_size_in_bytes, etcd_server_quota_backend_bytes; leader changes are counted as they
// happen (leaderEvents).
func (r *Replica) registerMetrics() error {
	m := telemetry.Meter("tessera/replica")
	size, err1 := m.Int64ObservableGauge("tessera.replica.store.bytes", metric.WithDescription("disk space of the store"))
	rev, err2 := m.Int64ObservableGauge("tessera.replica.shard.revision", metric.WithDescription("etcd revision of a data shard"))
	compact, err3 := m.Int64ObservableGauge("tessera.replica.shard.compact.revision", metric.WithDescription("compaction revision of a data shard"))
	applied, err4 := m.Int64ObservableGauge("tessera.replica.shard.applied.index", metric.WithDescription("last applied Raft index of a data shard"))
	hasLeader, err5 := m.Int64ObservableGauge("etcd_server_has_leader", metric.WithDescription("1 if every shard of this store has a leader, else 0 (etcd's)"))
	isLeader, err6 := m.Int64ObservableGauge("etcd_server_is_leader", metric.WithDescription("1 if this store leads the shard, else 0 (etcd's, per shard)"))
	dbSize, err7 := m.Int64ObservableGauge("etcd_mvcc_db_total_size_in_bytes", metric.WithDescription("disk space of the store (etcd's)"))
	quota, err8 := m.Int64ObservableGauge("etcd_server_quota_backend_bytes", metric.WithDescription("store size past which NOSPACE is raised (etcd's)"))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7, err8); err != nil {
		return err
	}
	store := attribute.Int64("store", int64(r.cfg.StoreID))
	var err error
	r.metricsReg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		used := r.used.bytes(time.Now())
		o.ObserveInt64(size, used, metric.WithAttributes(store))
		o.ObserveInt64(dbSize, used, metric.WithAttributes(store))
		o.ObserveInt64(quota, r.cfg.QuotaBytes, metric.WithAttributes(store))
		all := int64(1)
		for _, id := range r.hostedShards() {
			l := r.LeaderOf(id)
			if l == 0 {
				all = 0
			}
			leads := int64(0)
			if l == r.cfg.StoreID {
				leads = 1
			}
			o.ObserveInt64(isLeader, leads, metric.WithAttributes(store, attribute.Int64("shard", int64(id))))
		}
		o.ObserveInt64(hasLeader, all, metric.WithAttributes(store))
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
	}, size, rev, compact, applied, hasLeader, isLeader, dbSize, quota)
	return err
}

// leaderEvents counts leader changes as dragonboat reports them
// (etcd_server_leader_changes_seen_total, per shard).
type leaderEvents struct {
	store   attribute.KeyValue
	changes metric.Int64Counter
}

func newLeaderEvents(store uint64) (*leaderEvents, error) {
	c, err := telemetry.Meter("tessera/replica").Int64Counter("etcd_server_leader_changes_seen_total",
		metric.WithDescription("leader changes this store has seen, per shard (etcd's)"))
	if err != nil {
		return nil, err
	}
	return &leaderEvents{store: attribute.Int64("store", int64(store)), changes: c}, nil
}

// LeaderUpdated is dragonboat's raftio.IRaftEventListener.
func (l *leaderEvents) LeaderUpdated(info raftio.LeaderInfo) {
	if info.LeaderID != 0 {
		l.changes.Add(context.Background(), 1, metric.WithAttributes(l.store, attribute.Int64("shard", int64(info.ShardID))))
	}
}
