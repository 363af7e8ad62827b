package gateway

// MemoryBudget is the memory a gateway should need: requests and
// responses in flight (each bounded by the request limits) and gRPC
// buffers, measured under 64 clients.
const MemoryBudget = 32 << 20
