package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tessera-kv/tessera/pkg/tlsconf"
	"github.com/tessera-kv/tessera/proto/adminpb"
)

// gatewayClient is how the admin commands reach a gateway, with etcdctl's
// flags: an endpoint, TLS files, and a user when auth is on.
type gatewayClient struct {
	endpoint, cacert, cert, key, user *string
}

func registerGatewayClient(fs *flag.FlagSet, rootsOnly string) gatewayClient {
	return gatewayClient{
		endpoint: fs.String("endpoints", "127.0.0.1:2379", "a gateway: host:port, http://host:port or https://host:port"),
		cacert:   fs.String("cacert", "", "CA bundle that signs the gateway's certificate (https)"),
		cert:     fs.String("cert", "", "client certificate (with --client-cert-auth)"),
		key:      fs.String("key", "", "client certificate's key"),
		user:     fs.String("user", "", "NAME:PASSWORD, with auth on (root: "+rootsOnly+")"),
	}
}

// connect dials the gateway and, with --user, authenticates: the returned
// context carries the token.
func (g gatewayClient) connect(ctx context.Context) (*grpc.ClientConn, context.Context, error) {
	conn, err := dialGateway(*g.endpoint, tlsconf.Files{Cert: *g.cert, Key: *g.key, CA: *g.cacert})
	if err != nil {
		return nil, nil, err
	}
	if *g.user != "" {
		name, password, _ := strings.Cut(*g.user, ":")
		r, err := pb.NewAuthClient(conn).Authenticate(ctx, &pb.AuthenticateRequest{Name: name, Password: password})
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("authenticate %s: %w", name, err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "token", r.Token)
	}
	return conn, ctx, nil
}

// dialGateway connects to a gateway's client port.
func dialGateway(endpoint string, files tlsconf.Files) (*grpc.ClientConn, error) {
	host, secure := endpoint, files.CA != ""
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		host, secure = u.Host, secure || u.Scheme == "https"
	}
	creds := insecure.NewCredentials()
	if secure {
		cfg, err := tlsconf.ClientConfig(tlsconf.Options{Files: files})
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	return grpc.NewClient(host, grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
}

// adminCall parses an admin verb's flags (fs, args; the verb's own
// positional arguments stay in fs.Args()), connects to the gateway and
// runs fn with its Admin client, within timeout.
func adminCall(fs *flag.FlagSet, args []string, timeout time.Duration, fn func(context.Context, adminpb.AdminClient) error) error {
	gw := registerGatewayClient(fs, "the admin API is root's")
	fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, ctx, err := gw.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return fn(ctx, adminpb.NewAdminClient(conn))
}
