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
func devTLS(dataDir string, urls []string) (*tls.Config, []string, error) {
	dir := filepath.Join(dataDir, "certs")
	set := tlsconf.Set{CA: filepath.Join(dir, "ca.crt"),
		Server: tlsconf.Files{Cert: filepath.Join(dir, "server.crt"), Key: filepath.Join(dir, "server.key")},
		Client: tlsconf.Files{Cert: filepath.Join(dir, "client.crt"), Key: filepath.Join(dir, "client.key")}}
	var out []string
	hosts := []string{"127.0.0.1", "localhost"}
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil {
			return nil, nil, fmt.Errorf("bad client URL %q", u)
		}
		p.Scheme = "https"
		out = append(out, p.String())
		hosts = append(hosts, p.Hostname())
	}
	if _, err := os.Stat(set.CA); errors.Is(err, os.ErrNotExist) {
		if set, err = tlsconf.WriteSet(dir, hosts, "root", 365*24*time.Hour); err != nil {
			return nil, nil, err
		}
	}
	cfg, err := tlsconf.ServerConfig(tlsconf.Options{Files: tlsconf.Files{Cert: set.Server.Cert, Key: set.Server.Key, CA: set.CA}, ClientAuth: true})
	if err != nil {
		return nil, nil, err
	}
	fmt.Printf("tessera dev --tls: clients need a certificate signed by %s; for etcdctl:\n  --endpoints %s --cacert %s --cert %s --key %s\n",
		set.CA, out[0], set.CA, set.Client.Cert, set.Client.Key)
	return cfg, out, nil
}
