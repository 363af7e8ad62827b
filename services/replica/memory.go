package replica

// baseMemoryBytes is what a store holds besides its Badger DB, measured
// under load: dragonboat (its LogDB's memtables, Raft state, message
// buffers), gRPC buffers and goroutines.
const baseMemoryBytes = 96 << 20

// MemoryBudget is the memory the store should need at most under any
// write load, from its options: the process's soft memory limit by
// default. Entries in flight count on top only while apply lags behind
// commit: dragonboat refuses proposals past 256 MiB of them per shard.
func (c Config) MemoryBudget() int64 { return c.Store.Budget() + baseMemoryBytes }
