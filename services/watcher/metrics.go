package watcher

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/metric"

	"github.com/tessera-kv/tessera/pkg/telemetry"
)

// registerMetrics publishes the watcher's load as observable instruments,
// read from the cache when metrics are collected.
func (w *Watcher) registerMetrics() error {
	m := telemetry.Meter("tessera/watcher")
	var errs []error
	gauge := func(name, desc string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	streams := gauge("tessera.watcher.streams", "open watch streams")
	watches := gauge("tessera.watcher.watches", "watches on all streams")
	groups := gauge("tessera.watcher.groups", "distinct ranges of caught-up watches")
	unsynced := gauge("tessera.watcher.unsynced", "watches catching up")
	histRevs := gauge("tessera.watcher.history.revisions", "revisions held in memory")
	histBytes := gauge("tessera.watcher.history.bytes", "event bytes held in memory")
	released := gauge("tessera.watcher.released.revision", "revision up to which every shard's events are known")
	sent, err := m.Int64ObservableCounter("tessera.watcher.responses.sent", metric.WithDescription("watch responses sent to gateways"))
	if err := errors.Join(append(errs, err)...); err != nil {
		return err
	}
	w.metricsReg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := w.Stats()
		o.ObserveInt64(streams, int64(st.Streams))
		o.ObserveInt64(watches, int64(st.Watches))
		o.ObserveInt64(groups, int64(st.Groups))
		o.ObserveInt64(unsynced, int64(st.Unsynced))
		o.ObserveInt64(histRevs, int64(st.HistoryRevisions))
		o.ObserveInt64(histBytes, int64(st.HistoryBytes))
		o.ObserveInt64(released, st.Released)
		o.ObserveInt64(sent, st.ResponsesSent)
		return nil
	}, streams, watches, groups, unsynced, histRevs, histBytes, released, sent)
	return err
}
