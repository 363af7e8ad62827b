// Package rpcconn is the one place where Tessera's processes open gRPC
// client connections to each other (gateway to replicas and watchers,
// watcher to replicas, replica to replica) and set up the servers those
// connections reach, so the transport of every internal hop (dialer,
// keepalive, mutual TLS) is set once.
package rpcconn

import (
	"context"
	"crypto/tls"
	"math"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/tessera-kv/tessera/pkg/telemetry"
)

// Dialer opens the network connection under a gRPC client connection. Nil
// means a plain TCP dial; tests pass one that can cut or delay the link.
type Dialer func(ctx context.Context, addr string) (net.Conn, error)

// Keepalive on internal connections: a peer that is gone without a word
// (killed host, blackholed link) is noticed in Time+Timeout, not when TCP
// gives up minutes later, so routing moves to another replica. 10 s is
// gRPC's shortest client ping interval.
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 3 * time.Second
)

// Peer is how a process takes part in the internal hops. The zero value is
// plaintext over TCP.
type Peer struct {
	// Dialer opens connections (nil: TCP).
	Dialer Dialer
	// Client and Server are the mutual TLS of internal hops (etcd's
	// --peer-cert-file, --peer-key-file and --peer-trusted-ca-file, from
	// pkg/tlsconf with client authentication on the server side); nil:
	// plaintext. A process with a certificate from another CA can neither
	// call nor be called.
	Client, Server *tls.Config
}

// Dial returns a client connection to addr (connected lazily, as
// grpc.NewClient) that accepts responses of any size: internal answers are
// bounded by the sender, not the receiver.
func (p Peer) Dial(addr string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if p.Client != nil {
		creds = credentials.NewTLS(p.Client)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
	}
	if p.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(p.Dialer))
	}
	opts = append(opts, telemetry.ClientTracing()...)
	return grpc.NewClient(addr, append(opts, extra...)...)
}

// ServerOptions are what an internal API server (replica, watcher) needs
// for the clients Dial makes: their TLS, and their keepalive pings.
func (p Peer) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveTime / 2, PermitWithoutStream: true}), StreamWorkers()}
	if p.Server != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(p.Server)))
	}
	return append(opts, telemetry.ServerTracing()...)
}

// StreamWorkers is the server option that serves calls on a pool of
// goroutines kept between calls (more are started when all are busy).
// Without it every call runs on a new goroutine, whose stack starts small
// and is copied as it grows: a gateway's call into a replica grows it
// every time, 10 % of a gateway's CPU under 64 writers.
func StreamWorkers() grpc.ServerOption { return grpc.NumStreamWorkers(streamWorkers) }

// streamWorkers covers the calls in flight of a busy server (64 clients,
// a watcher's feeds); past it calls get goroutines of their own again.
const streamWorkers = 128
