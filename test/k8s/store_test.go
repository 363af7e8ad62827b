package k8s

import (
	"testing"

	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// The storage conformance tests of k8s.io/apiserver, wired as Kubernetes'
// own etcd3 tests wire them (pkg/storage/etcd3/store_test.go), against
// Tessera. Tests that reach into the etcd3 store's unexported fields, or
// that test the etcd3 client code rather than the server (metrics, feature
// gate fallbacks, request counting by the client), are not here; the
// README of this module lists them.

func TestCreate(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestCreate(ctx, t, s, s.checkStorageInvariants())
}

func TestCreateWithTTL(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestCreateWithTTL(ctx, t, s)
}

func TestCreateWithKeyExist(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestCreateWithKeyExist(ctx, t, s)
}

func TestGet(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGet(ctx, t, s)
}

func TestUnconditionalDelete(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestUnconditionalDelete(ctx, t, s)
}

func TestConditionalDelete(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestConditionalDelete(ctx, t, s)
}

func TestDeleteWithSuggestion(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestion(ctx, t, s)
}

func TestDeleteWithSuggestionAndConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, s)
}

func TestDeleteWithSuggestionOfDeletedObject(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, s)
}

func TestValidateDeletionWithSuggestion(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, s)
}

func TestValidateDeletionWithOnlySuggestionValid(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, s)
}

func TestDeleteWithConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithConflict(ctx, t, s)
}

func TestPreconditionalDeleteWithSuggestion(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, s)
}

func TestPreconditionalDeleteWithOnlySuggestionPass(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, s)
}

func TestListPaging(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListPaging(ctx, t, s)
}

func TestGetListNonRecursive(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGetListNonRecursive(ctx, t, s.increaseRV(), s)
}

func TestGetListRecursivePrefix(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGetListRecursivePrefix(ctx, t, s)
}

func TestKeySchema(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestKeySchema(ctx, t, s)
}

func TestGuaranteedUpdate(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdate(ctx, t, s, s.checkStorageInvariants())
}

func TestGuaranteedUpdateWithTTL(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, s)
}

func TestGuaranteedUpdateChecksStoredData(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateChecksStoredData(ctx, t, s)
}

func TestGuaranteedUpdateWithConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, s)
}

func TestGuaranteedUpdateWithSuggestionAndConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, s)
}

func TestTransformationFailure(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestTransformationFailure(ctx, t, s)
}

func TestList(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestList(ctx, t, s, s.compaction(), false, s.client.Kubernetes.(*storagetesting.KubernetesRecorder))
}

func TestConsistentList(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestConsistentList(ctx, t, s, s.increaseRV(), false, true, false)
}

func TestNamespaceScopedList(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestNamespaceScopedList(ctx, t, s)
}

func TestListInconsistentContinuation(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListInconsistentContinuation(ctx, t, s, s.compaction())
}

func TestListResourceVersionMatch(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListResourceVersionMatch(ctx, t, s)
}

func TestStats(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestStats(ctx, t, s, s.codec, s.transformer, false)
}

// checkCalls is Kubernetes' check that paginated lists read what they must
// and call the server as few times as kube-apiserver's growing page sizes
// allow (etcd3's maxLimit is 10000).
func (s *store) checkCalls() storagetesting.CallsValidation {
	const maxLimit = 10000
	return func(t *testing.T, pageSize, estimatedProcessedObjects uint64) {
		if reads := s.transformer.get().(*storagetesting.PrefixTransformer).GetReadsAndReset(); reads != estimatedProcessedObjects {
			t.Errorf("unexpected reads: %d, expected: %d", reads, estimatedProcessedObjects)
		}
		estimatedGetCalls := uint64(1)
		if pageSize != 0 {
			currLimit := pageSize
			for sum := uint64(1); sum < estimatedProcessedObjects; {
				currLimit = min(currLimit*2, maxLimit)
				sum += currLimit
				estimatedGetCalls++
			}
		}
		rec := s.client.KV.(*storagetesting.KVRecorder)
		if reads := rec.GetReadsAndReset() + rec.GetStreamReadsAndReset(); reads != estimatedGetCalls {
			t.Fatalf("unexpected reads: %d, want: %d", reads, estimatedGetCalls)
		}
	}
}

func TestListContinuation(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListContinuation(ctx, t, s, s.checkCalls())
}

func TestListContinuationWithFilter(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListContinuationWithFilter(ctx, t, s, s.checkCalls())
}
