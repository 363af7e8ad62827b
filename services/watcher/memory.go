package watcher

// baseMemoryBytes is what a watcher holds besides its history: streams,
// queues and gRPC buffers at a few thousand watches.
const baseMemoryBytes = 32 << 20

// MemoryBudget is the memory a watcher with this cache should need at
// most: the history it keeps plus its base.
func MemoryBudget(c CacheConfig) int64 { return int64(c.HistoryBytes) + baseMemoryBytes }
