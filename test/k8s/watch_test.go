package k8s

import (
	"testing"

	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// The watch conformance tests, as Kubernetes' etcd3 watcher_test.go runs them.
func TestWatch(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"Watch", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestWatch(ctx, t, s) }},
		{"ClusterScopedWatch", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestClusterScopedWatch(ctx, t, s) }},
		{"NamespaceScopedWatch", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestNamespaceScopedWatch(ctx, t, s) }},
		{"DeleteTriggerWatch", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestDeleteTriggerWatch(ctx, t, s) }},
		{"WatchFromZero", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunTestWatchFromZero(ctx, t, s, s.compaction())
		}},
		{"WatchFromNonZero", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestWatchFromNonZero(ctx, t, s) }},
		{"DelayedWatchDelivery", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestDelayedWatchDelivery(ctx, t, s) }},
		{"WatchError", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestWatchError(ctx, t, s) }},
		{"WatchContextCancel", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestWatchContextCancel(ctx, t, s) }},
		{"WatcherTimeout", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunTestWatcherTimeout(ctx, t, s) }},
		{"WatchDeleteEventObjectHaveLatestRV", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, s)
		}},
		{"WatchInitializationSignal", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunTestWatchInitializationSignal(ctx, t, s)
		}},
		{"ProgressNotify", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunOptionalTestProgressNotify(ctx, t, s, s.increaseRV())
		}},
		{"WatchDispatchBookmarkEvents", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, s, false)
		}},
		{"SendInitialEventsBackwardCompatibility", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, s)
		}},
		{"WatchSemantics", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunWatchSemantics(ctx, t, s) }},
		{"WatchSemanticInitialEventsExtended", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunWatchSemanticInitialEventsExtended(ctx, t, s)
		}},
		{"WatchListMatchSingle", func(t *testing.T) { ctx, s := newStore(t); storagetesting.RunWatchListMatchSingle(ctx, t, s) }},
		{"WatchErrorEventIsBlockingFurtherEvent", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunWatchErrorIsBlockingFurtherEvents(ctx, t, s)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}
