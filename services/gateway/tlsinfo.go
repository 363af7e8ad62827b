package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"github.com/soheilhy/cmux"
	"google.golang.org/grpc/credentials"
)

// tlsInfo tells the gRPC server about the TLS that the client listener
// already did: TLS ends before cmux splits gRPC from REST, so gRPC sees a
// plain connection, but the certificate a client presented must reach the
// auth gate (with --client-cert-auth its common name is the etcd user).
// Connections without TLS (http:// URLs, the REST gateway's loopback) are
// reported as such, so the REST gateway's requests carry no certificate.
type tlsInfo struct{}

type plainInfo struct{ credentials.CommonAuthInfo }

func (plainInfo) AuthType() string { return "insecure" }

func (tlsInfo) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	inner := c
	if mc, ok := c.(*cmux.MuxConn); ok {
		inner = mc.Conn
	}
	if tc, ok := inner.(*tls.Conn); ok {
		return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c, plainInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (tlsInfo) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("gateway: server-side credentials only")
}

func (tlsInfo) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (tlsInfo) Clone() credentials.TransportCredentials { return tlsInfo{} }

func (tlsInfo) OverrideServerName(string) error { return nil }
