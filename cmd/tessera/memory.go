package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
