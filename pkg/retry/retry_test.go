package retry

import (
	"context"
	"testing"
	"time"
)

func TestBackoffDoublesToItsCap(t *testing.T) {
	b := Backoff{Base: 25 * time.Millisecond, Max: 400 * time.Millisecond}
	want := []time.Duration{25, 50, 100, 200, 400, 400, 400}
	for i, w := range want {
		if got := b.Delay(i); got != w*time.Millisecond {
			t.Errorf("attempt %d: %v, want %v", i, got, w*time.Millisecond)
		}
	}
	if got := b.Delay(1 << 30); got != b.Max {
		t.Errorf("a huge attempt: %v, want the cap", got)
	}
}

func TestSleepEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	began := time.Now()
	if err := Sleep(ctx, time.Minute); err == nil || time.Since(began) > time.Second {
		t.Fatalf("sleep on a cancelled context: %v after %v", err, time.Since(began))
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
