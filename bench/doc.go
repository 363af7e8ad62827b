// Command bench runs the same workloads against embedded etcd and Tessera in
// one process and prints throughput, latency and the Tessera/etcd ratio.
package main

func main() {}
