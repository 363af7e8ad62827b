package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/pkg/tlsconf"
)

// clientTLSFlags are etcd's client-port TLS flags.
type clientTLSFlags struct {
	cert, key, ca, minVersion, ciphers *string
	clientCertAuth                     *bool
}

func registerClientTLS(fs *flag.FlagSet) clientTLSFlags {
	return clientTLSFlags{
		cert:           fs.String("cert-file", "", "certificate of the client port (for https:// client URLs)"),
		key:            fs.String("key-file", "", "key of --cert-file"),
		ca:             fs.String("trusted-ca-file", "", "CA bundle client certificates must chain to"),
		clientCertAuth: fs.Bool("client-cert-auth", false, "require a client certificate signed by --trusted-ca-file"),
		minVersion:     fs.String("tls-min-version", "TLS1.2", "lowest TLS version accepted (TLS1.2 or TLS1.3)"),
		ciphers:        fs.String("cipher-suites", "", "comma-separated TLS 1.2 cipher suites (Go's secure defaults if empty)"),
	}
}

// server returns the client port's TLS config, or nil when no certificate
// is given. Files are re-read when they change.
func (f clientTLSFlags) server() (*tls.Config, error) {
	if *f.cert == "" && *f.key == "" {
		if *f.clientCertAuth {
			return nil, errors.New("--client-cert-auth needs --cert-file and --key-file")
		}
		return nil, nil
	}
	v, err := tlsconf.ParseMinVersion(*f.minVersion)
	if err != nil {
		return nil, err
	}
	suites, err := tlsconf.ParseCipherSuites(*f.ciphers)
	if err != nil {
		return nil, err
	}
	return tlsconf.ServerConfig(tlsconf.Options{Files: tlsconf.Files{Cert: *f.cert, Key: *f.key, CA: *f.ca},
		ClientAuth: *f.clientCertAuth, MinVersion: v, CipherSuites: suites})
}

// devTLS makes "tessera dev --tls" serve https with client certificate
// authentication: certificates in DIR/certs (created on the first run,
// for the client URLs' hosts), the URLs turned to https, and the etcdctl
// flags printed.
//
// The internal hops use the set's peer certificate.
func devTLS(dataDir string, urls []string) (*tls.Config, []string, tlsconf.Files, error) {
	dir := filepath.Join(dataDir, "certs")
	set := tlsconf.SetIn(dir)
	var out []string
	hosts := []string{"127.0.0.1", "localhost"}
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil {
			return nil, nil, tlsconf.Files{}, fmt.Errorf("bad client URL %q", u)
		}
		p.Scheme = "https"
		out = append(out, p.String())
		hosts = append(hosts, p.Hostname())
	}
	if _, err := os.Stat(set.CA); errors.Is(err, os.ErrNotExist) {
		if set, err = tlsconf.WriteSet(dir, hosts, "root", 365*24*time.Hour); err != nil {
			return nil, nil, tlsconf.Files{}, err
		}
	}
	cfg, err := tlsconf.ServerConfig(tlsconf.Options{Files: tlsconf.Files{Cert: set.Server.Cert, Key: set.Server.Key, CA: set.CA}, ClientAuth: true})
	if err != nil {
		return nil, nil, tlsconf.Files{}, err
	}
	fmt.Printf("tessera dev --tls: clients need a certificate signed by %s; for etcdctl:\n  --endpoints %s --cacert %s --cert %s --key %s\n",
		set.CA, out[0], set.CA, set.Client.Cert, set.Client.Key)
	peer := set.Peer
	peer.CA = set.CA
	return cfg, out, peer, nil
}

// peerTLSFlags are etcd's peer TLS flags: mutual TLS on every internal hop
// (Raft, the replicas' and watchers' APIs), all three or none.
type peerTLSFlags struct {
	cert, key, ca *string
}

func registerPeerTLS(fs *flag.FlagSet) peerTLSFlags {
	return peerTLSFlags{
		cert: fs.String("peer-cert-file", "", "certificate for internal hops (Raft and internal APIs), as server and as client"),
		key:  fs.String("peer-key-file", "", "key of --peer-cert-file"),
		ca:   fs.String("peer-trusted-ca-file", "", "CA bundle the other processes' peer certificates must chain to"),
	}
}

// peer returns the internal transport and the files for Raft; the zero
// values without flags (plaintext).
func (f peerTLSFlags) peer() (rpcconn.Peer, tlsconf.Files, error) {
	files := tlsconf.Files{Cert: *f.cert, Key: *f.key, CA: *f.ca}
	return peerFrom(files)
}

func peerFrom(files tlsconf.Files) (rpcconn.Peer, tlsconf.Files, error) {
	if files == (tlsconf.Files{}) {
		return rpcconn.Peer{}, files, nil
	}
	if files.Cert == "" || files.Key == "" || files.CA == "" {
		return rpcconn.Peer{}, files, errors.New("peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file together")
	}
	server, err := tlsconf.ServerConfig(tlsconf.Options{Files: files, ClientAuth: true})
	if err != nil {
		return rpcconn.Peer{}, files, err
	}
	client, err := tlsconf.ClientConfig(tlsconf.Options{Files: files})
	if err != nil {
		return rpcconn.Peer{}, files, err
	}
	return rpcconn.Peer{Client: client, Server: server}, files, nil
}
