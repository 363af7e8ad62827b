package replica

import (
	"errors"
	"fmt"
	"testing"

	"github.com/lni/dragonboat/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/tessera-kv/tessera/services/replica/internal/sequencer"
)

// Overload and uncertainty get etcd's answers: busy is "too many
// requests" (nothing applied), an outcome nobody knows is "request timed
// out" (it may still apply), never a definite failure such as "no leader".
func TestToStatusOverloadAndUncertainty(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{fmt.Errorf("%w: %v", sequencer.ErrBusy, dragonboat.ErrSystemBusy), rpctypes.ErrGRPCRequestTooManyRequests},
		{dragonboat.ErrSystemBusy, rpctypes.ErrGRPCRequestTooManyRequests},
		{sequencer.ErrIndeterminate, rpctypes.ErrGRPCTimeout},
		{dragonboat.ErrAborted, rpctypes.ErrGRPCTimeout},
		{sequencer.ErrTimeout, rpctypes.ErrGRPCTimeout},
		// A read or proposal whose caller left it less than a Raft tick.
		{dragonboat.ErrTimeoutTooSmall, rpctypes.ErrGRPCTimeout},
		{dragonboat.ErrPayloadTooBig, rpctypes.ErrGRPCRequestTooLarge},
		{fmt.Errorf("%w: no leader", sequencer.ErrUnavailable), rpctypes.ErrGRPCNoLeader},
		{sequencer.ErrStopped, rpctypes.ErrGRPCNoLeader},
	} {
		if got := toStatus(tc.err); !errors.Is(got, tc.want) {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
