// Package retry holds the waiting between attempts that every tier's calls
// to another share: exponential backoff with a cap, and a sleep that ends
// with its context.
package retry

import (
	"context"
	"time"
)

// Backoff doubles from Base on each attempt, up to Max.
type Backoff struct {
	Base, Max time.Duration
}

// Delay is the wait before attempt (0-based) is tried again.
func (b Backoff) Delay(attempt int) time.Duration {
	d := b.Base
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Sleep waits d or until ctx ends, and returns ctx's error if it ended.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
