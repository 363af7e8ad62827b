package gateway

// MemoryBudget is the memory a gateway needs for requests and responses in
// flight and gRPC buffers at a node's load: 64 writers took 14 MiB. A
// gateway serving thousands of clients, or large lists without a limit,
// holds more while they last; give it --memory-limit (the manifests do).
const MemoryBudget = 32 << 20
