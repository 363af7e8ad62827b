package replica

import (
	"sync"
	"testing"
	"time"
)

// Puts that arrive together on a store that just started must all see the
// measured free space. A version that marked the check done before the
// measurement ended let the others read a free space of 0 and refuse puts
// with "database space exceeded" on a disk with 79 GB free.
func TestFreeSpaceNeverReportsUnmeasured(t *testing.T) {
	const free = 80 << 30
	f := &diskFigure{measure: func() int64 {
		time.Sleep(20 * time.Millisecond) // a slow statfs
		return free
	}}
	now := time.Now()
	var wg sync.WaitGroup
	got := make([]int64, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = f.bytes(now)
		}()
	}
	wg.Wait()
	for i, g := range got {
		if g != free {
			t.Fatalf("caller %d saw %d bytes free, want %d", i, g, free)
		}
	}
}

func TestFreeSpaceMeasuresAgainWhenOld(t *testing.T) {
	n := 0
	f := &diskFigure{measure: func() int64 { n++; return int64(n) }}
	now := time.Now()
	if f.bytes(now) != 1 || f.bytes(now.Add(freeSpaceMaxAge/2)) != 1 {
		t.Fatal("measured again within the max age")
	}
	if got := f.bytes(now.Add(2 * freeSpaceMaxAge)); got != 2 {
		t.Fatalf("after the max age: %d, want a new measurement", got)
	}
}
