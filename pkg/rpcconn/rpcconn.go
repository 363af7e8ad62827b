// Package rpcconn is the one place where Tessera's processes open gRPC
// client connections to each other (gateway to replicas and watchers,
// watcher to replicas, replica to replica), so transport settings such as
// the dialer or credentials are set once for every internal hop.
package rpcconn

import (
	"context"
	"math"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Keepalive on internal connections: a peer that is gone without a word
// (killed host, blackholed link) is noticed in Time+Timeout, not when TCP
// gives up minutes later, so routing moves to another replica. 10 s is
// gRPC's shortest client ping interval.
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 3 * time.Second
)

// Dialer opens the network connection under a gRPC client connection. Nil
// means a plain TCP dial; tests pass one that can cut or delay the link.
type Dialer func(ctx context.Context, addr string) (net.Conn, error)

// Dial returns a client connection to addr (connected lazily, as
// grpc.NewClient) that accepts responses of any size: internal answers are
// bounded by the sender, not the receiver.
func Dial(addr string, d Dialer, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
	}
	if d != nil {
		opts = append(opts, grpc.WithContextDialer(d))
	}
	return grpc.NewClient(addr, append(opts, extra...)...)
}

// ServerOptions are what an internal API server (replica, watcher) needs
// for the clients Dial makes: their keepalive pings are allowed.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveTime / 2, PermitWithoutStream: true})}
}
