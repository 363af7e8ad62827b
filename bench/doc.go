// Command bench runs the same etcd v3 client workloads against embedded etcd
// and in-process Tessera clusters (a one-store "dev" shape and a three-store
// shape) in one process, and prints throughput, latency percentiles and the
// Tessera/etcd throughput ratio per workload.
//
// Targets run one at a time: each is started, loaded, measured and stopped
// before the next starts, so they never compete for the CPU. Every target is
// reached through go.etcd.io/etcd/client/v3 over loopback gRPC.
//
// See README.md for the flags and the workloads.
package main
