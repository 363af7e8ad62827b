package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"github.com/tessera-kv/tessera/pkg/telemetry"
)

// cgroupMemoryLimit is the memory limit of the cgroup this process runs
// in (a container's limit), or 0 if none is set: cgroup v2's memory.max,
// else v1's memory.limit_in_bytes (which says "no limit" with a huge
// number), under root (/sys/fs/cgroup).
func cgroupMemoryLimit(root string) int64 {
	if b, err := os.ReadFile(filepath.Join(root, "memory.max")); err == nil {
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n <= 0 { // "max"
			return 0
		}
		return n
	}
	if b, err := os.ReadFile(filepath.Join(root, "memory", "memory.limit_in_bytes")); err == nil {
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0
		}
		return n
	}
	return 0
}

// softLimit is the soft memory limit to set: the budget, but below a
// container's hard limit (90 % of it), so that the runtime collects
// garbage harder before the kernel kills the process.
func softLimit(budget, hard int64) int64 {
	if hard > 0 && budget > hard/10*9 {
		return hard / 10 * 9
	}
	return budget
}

// The soft limit bounds garbage, not what is live. A derived limit (the
// budget of the flags) counts no client's memory: 10 000 watch streams
// keep about 650 MiB of buffers and stacks live in tessera dev, and with
// live memory past the limit the runtime collects without pause and
// spends half the CPU on it. So the governor lets the limit follow live
// memory up, at twice what is live as Go's default pacing does, and back
// down to the budget as it falls; never past the hard cap (90 % of a
// container's limit), where collecting hard is better than being killed.

// raisedLimit is the soft limit for live bytes of live memory: the budget
// while live memory leaves a quarter of it for garbage (a write burst's
// peak stays within that), else twice what is live (as Go's default
// GOGC=100 collects), within the hard cap (0: none).
func raisedLimit(budget, hardCap, live int64) int64 {
	n := budget
	if live > budget/4*3 {
		n = 2 * live
	}
	if hardCap > 0 && n > hardCap {
		n = max(hardCap, budget)
	}
	return n
}

// liveMemory is what the last collection found live, with goroutine
// stacks (which the limit counts too and no collection frees).
func liveMemory(samples []metrics.Sample) int64 {
	metrics.Read(samples)
	var n int64
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			n += int64(s.Value.Uint64())
		}
	}
	return n
}

// governMemory adjusts the soft limit every interval from budget, as
// raisedLimit says, logging each time it moves past the budget or back.
func governMemory(budget, hardCap int64, interval time.Duration, log *slog.Logger) {
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	cur := budget
	for range time.Tick(interval) {
		live := liveMemory(samples)
		n := raisedLimit(budget, hardCap, live)
		// Move by a sixteenth at least, so small swings do not churn.
		if d := n - cur; d > cur/16 || -d > cur/16 || (n == budget && cur != budget) {
			switch {
			case n > budget && cur == budget:
				log.Warn("live memory passed the budget of the flags: the soft memory limit follows it (more clients or watches than the budget counts)",
					"live_MiB", live>>20, "limit_MiB", n>>20, "budget_MiB", budget>>20)
			case n == budget && cur > budget:
				log.Info("live memory is back within the budget: the soft memory limit is the budget again", "limit_MiB", n>>20)
			}
			debug.SetMemoryLimit(n)
			telemetry.SetMemoryLimit(n)
			cur = n
		}
	}
}
