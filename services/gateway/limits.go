package gateway

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/limits"
)

// Limits bound what clients may ask of a gateway, with etcd's flags and
// defaults (and --max-key-bytes, which etcd does not need).
type Limits struct {
	// MaxRequestBytes bounds a request (etcd's --max-request-bytes): one
	// over it gets etcd's "request is too large" before any other work.
	// gRPC accepts messages up to this plus limits.GRPCOverheadBytes, and
	// REST bodies up to the same.
	MaxRequestBytes int
	// MaxTxnOps bounds the ops of one txn level (--max-txn-ops).
	MaxTxnOps int
	// MaxKeyBytes bounds the key of a put (--max-key-bytes), at most
	// limits.MaxKeyBytes.
	MaxKeyBytes int
	// MaxConcurrentStreams bounds the concurrent gRPC streams of one client
	// connection (--max-concurrent-streams; etcd's default: unlimited).
	MaxConcurrentStreams uint32
	// KeepAliveMinTime is the shortest client ping interval tolerated
	// (--grpc-keepalive-min-time); KeepAliveInterval and KeepAliveTimeout
	// are the server's own pings (--grpc-keepalive-interval, -timeout).
	KeepAliveMinTime, KeepAliveInterval, KeepAliveTimeout time.Duration
}

// DefaultLimits are etcd's defaults, and the store's key limit.
func DefaultLimits() Limits {
	return Limits{
		MaxRequestBytes:      limits.DefaultMaxRequestBytes,
		MaxTxnOps:            limits.DefaultMaxTxnOps,
		MaxKeyBytes:          limits.MaxKeyBytes,
		MaxConcurrentStreams: math.MaxUint32,
		KeepAliveMinTime:     limits.DefaultGRPCKeepAliveMinTime,
		KeepAliveInterval:    limits.DefaultGRPCKeepAliveInterval,
		KeepAliveTimeout:     limits.DefaultGRPCKeepAliveTimeout,
	}
}

// RegisterFlags adds the limits' flags to fs, defaulting to l.
func (l *Limits) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&l.MaxRequestBytes, "max-request-bytes", l.MaxRequestBytes, "maximum client request size in bytes")
	fs.IntVar(&l.MaxTxnOps, "max-txn-ops", l.MaxTxnOps, "maximum operations per transaction level")
	fs.IntVar(&l.MaxKeyBytes, "max-key-bytes", l.MaxKeyBytes, fmt.Sprintf("maximum key size of a put in bytes (at most %d)", limits.MaxKeyBytes))
	fs.Func("max-concurrent-streams", fmt.Sprintf("maximum concurrent gRPC streams per client connection (default %d)", l.MaxConcurrentStreams),
		func(v string) error {
			n, err := strconv.ParseUint(v, 10, 32)
			l.MaxConcurrentStreams = uint32(n)
			return err
		})
	fs.DurationVar(&l.KeepAliveMinTime, "grpc-keepalive-min-time", l.KeepAliveMinTime, "shortest interval a client may ping the server at")
	fs.DurationVar(&l.KeepAliveInterval, "grpc-keepalive-interval", l.KeepAliveInterval, "how often the server pings an idle connection (0 disables)")
	fs.DurationVar(&l.KeepAliveTimeout, "grpc-keepalive-timeout", l.KeepAliveTimeout, "how long the server waits for a ping answer before closing")
}

// Validate checks the limits.
func (l Limits) Validate() error {
	switch {
	case l.MaxRequestBytes <= 0:
		return errors.New("gateway: --max-request-bytes must be positive")
	case l.MaxRequestBytes > limits.MaxRequestBytes:
		return fmt.Errorf("gateway: --max-request-bytes must be at most %d", limits.MaxRequestBytes)
	case l.MaxTxnOps <= 0:
		return errors.New("gateway: --max-txn-ops must be positive")
	case l.MaxKeyBytes <= 0 || l.MaxKeyBytes > limits.MaxKeyBytes:
		return fmt.Errorf("gateway: --max-key-bytes must be between 1 and %d (the store's limit)", limits.MaxKeyBytes)
	case l.MaxConcurrentStreams == 0:
		return errors.New("gateway: --max-concurrent-streams must be positive")
	case l.KeepAliveMinTime < 0 || l.KeepAliveInterval < 0 || l.KeepAliveTimeout < 0:
		return errors.New("gateway: keepalive durations must not be negative")
	}
	return nil
}

// checkSize is a unary interceptor that refuses a request over
// MaxRequestBytes before anything else looks at it. etcd checks the size of
// what it proposes to Raft (writes); reads are checked too here, so that a
// gateway never forwards one (between the limit and the gRPC limit a read
// etcd would serve is refused).
func (l Limits) checkSize(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if m, ok := req.(proto.Message); ok && proto.Size(m) > l.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	return h(ctx, req)
}
