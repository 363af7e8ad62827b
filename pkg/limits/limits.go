// Package limits holds the request bounds every tier agrees on: etcd's
// defaults, and the one Tessera's storage adds.
package limits

import "time"

// etcd's defaults (embed.Config), so that a client tuned for etcd behaves the
// same against Tessera.
const (
	// DefaultMaxRequestBytes is etcd's --max-request-bytes.
	DefaultMaxRequestBytes = 1536 * 1024
	// GRPCOverheadBytes is what etcd lets a gRPC message exceed the request
	// limit by, so that a moderately oversized request gets etcd's "request
	// is too large" rather than a transport error.
	GRPCOverheadBytes = 512 * 1024
	// DefaultMaxTxnOps is etcd's --max-txn-ops.
	DefaultMaxTxnOps = 128
	// DefaultGRPCKeepAliveMinTime is etcd's --grpc-keepalive-min-time: the
	// shortest client ping interval the server tolerates.
	DefaultGRPCKeepAliveMinTime = 5 * time.Second
	// DefaultGRPCKeepAliveInterval is etcd's --grpc-keepalive-interval.
	DefaultGRPCKeepAliveInterval = 2 * time.Hour
	// DefaultGRPCKeepAliveTimeout is etcd's --grpc-keepalive-timeout.
	DefaultGRPCKeepAliveTimeout = 20 * time.Second
)

// MaxRequestBytes is the largest --max-request-bytes a gateway takes: a
// request travels to a replica inside one internal message (replicas accept
// 64 MiB) and becomes one Raft entry. etcd itself warns above 10 MiB.
const MaxRequestBytes = 32 << 20

// MaxKeyBytes is the longest key Tessera stores. etcd has no key limit below
// the request size; Badger refuses keys over 65,000 bytes, and the lease
// index prefixes a user key with 9 bytes. The gateway refuses longer keys
// before they reach Raft (--max-key-bytes, at most this), and the state
// machine refuses them too, as an error result.
const MaxKeyBytes = 65000 - 9
