package replica

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// One expensive maintenance call at a time per store: the others wait their
// turn, and one whose context ends while waiting gets a clear error.
func TestMaintenanceGate(t *testing.T) {
	g := newMaintenanceGate()
	var running, most atomic.Int32
	done := make(chan struct{})
	for i := 0; i < 4; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			leave, err := g.enter(context.Background(), 1, "Defragment")
			if err != nil {
				t.Error(err)
				return
			}
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(20 * time.Millisecond)
			running.Add(-1)
			leave()
		}()
	}
	for i := 0; i < 4; i++ {
		<-done
	}
	if most.Load() != 1 {
		t.Fatalf("%d maintenance calls ran at once", most.Load())
	}

	leave, err := g.enter(context.Background(), 1, "Defragment")
	if err != nil {
		t.Fatal(err)
	}
	defer leave()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.enter(ctx, 1, "HashKV"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call waiting past its deadline: %v", err)
	}
}
