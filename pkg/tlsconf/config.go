// Package tlsconf is TLS for every Tessera tier: server and client
// configurations from PEM files (etcd's --cert-file, --key-file,
// --trusted-ca-file and their peer twins) that pick up rotated files without
// a restart, and the certificates "tessera certs" and the tests create.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// Files names PEM files: a certificate and its key, and the CA bundle the
// other side's certificate must chain to.
type Files struct {
	Cert, Key, CA string
}

// Options configure one side of a TLS hop.
type Options struct {
	Files
	// ClientAuth (servers): require a client certificate signed by CA
	// (etcd's --client-cert-auth; always on for peer hops).
	ClientAuth bool
	// MinVersion is the lowest TLS version accepted (TLS 1.2 if zero).
	MinVersion uint16
	// CipherSuites restricts TLS 1.2 suites (Go's defaults if empty).
	CipherSuites []uint16
}

// reloadCheck is how often the files are checked for a change.
const reloadCheck = time.Second

// reloader holds a key pair and a CA pool, read again when a file's size
// or modification time changes. A file that fails to load keeps the last
// good one serving (a rotation written in several steps is picked up once
// it is whole).
type reloader struct {
	files Files
	now   func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	pool    *x509.CertPool
	stamps  [3]string
	checked time.Time
}

func newReloader(f Files) (*reloader, error) {
	r := &reloader{files: f, now: time.Now}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func stamp(path string) string {
	if path == "" {
		return ""
	}
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d/%d", st.Size(), st.ModTime().UnixNano())
}

// load reads every file; call with mu held (or before r is shared).
func (r *reloader) load() error {
	stamps := [3]string{stamp(r.files.Cert), stamp(r.files.Key), stamp(r.files.CA)}
	var cert *tls.Certificate
	if r.files.Cert != "" || r.files.Key != "" {
		c, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
		if err != nil {
			return fmt.Errorf("tlsconf: load %s and %s: %w", r.files.Cert, r.files.Key, err)
		}
		cert = &c
	}
	var pool *x509.CertPool
	if r.files.CA != "" {
		b, err := os.ReadFile(r.files.CA)
		if err != nil {
			return fmt.Errorf("tlsconf: read CA %s: %w", r.files.CA, err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("tlsconf: no certificate in CA file %s", r.files.CA)
		}
	}
	r.cert, r.pool, r.stamps = cert, pool, stamps
	return nil
}

// current returns the key pair and CA pool, reloading changed files.
func (r *reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := r.now(); now.Sub(r.checked) >= reloadCheck {
		r.checked = now
		if [3]string{stamp(r.files.Cert), stamp(r.files.Key), stamp(r.files.CA)} != r.stamps {
			_ = r.load() // on failure the last good files keep serving
		}
	}
	return r.cert, r.pool
}

func (o Options) base() *tls.Config {
	v := o.MinVersion
	if v == 0 {
		v = tls.VersionTLS12
	}
	return &tls.Config{MinVersion: v, CipherSuites: o.CipherSuites}
}

// ServerConfig serves with the certificate in Files (reloaded when it
// changes) and, with ClientAuth, requires client certificates signed by
// the CA in Files.
func ServerConfig(o Options) (*tls.Config, error) {
	if o.Cert == "" || o.Key == "" {
		return nil, errors.New("tlsconf: a server needs a certificate and a key")
	}
	if o.ClientAuth && o.CA == "" {
		return nil, errors.New("tlsconf: client certificate authentication needs a trusted CA file")
	}
	r, err := newReloader(o.Files)
	if err != nil {
		return nil, err
	}
	cfg := o.base()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := r.current()
		c := o.base()
		c.Certificates = []tls.Certificate{*cert}
		c.NextProtos = []string{"h2", "http/1.1"}
		if o.ClientAuth {
			c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
		} else if pool != nil {
			c.ClientAuth, c.ClientCAs = tls.VerifyClientCertIfGiven, pool
		}
		return c, nil
	}
	return cfg, nil
}

// ClientConfig dials with the certificate in Files if any (reloaded when
// it changes) and verifies the server against the CA in Files (reloaded
// too), or the system's roots without one.
func ClientConfig(o Options) (*tls.Config, error) {
	r, err := newReloader(o.Files)
	if err != nil {
		return nil, err
	}
	cfg := o.base()
	if o.Cert != "" {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := r.current()
			return cert, nil
		}
	}
	if o.CA == "" {
		return cfg, nil
	}
	// The CA can change under a running client, so the chain is checked
	// here against the current pool instead of a fixed RootCAs.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		_, pool := r.current()
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tlsconf: the server sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, DNSName: cs.ServerName,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	return cfg, nil
}

// ParseMinVersion reads etcd's --tls-min-version values.
func ParseMinVersion(s string) (uint16, error) {
	switch s {
	case "", "TLS1.2":
		return tls.VersionTLS12, nil
	case "TLS1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("tlsconf: unsupported TLS version %q (TLS1.2 or TLS1.3)", s)
}

// ParseCipherSuites reads etcd's --cipher-suites (comma-separated IANA
// names, as Go names them); only secure suites are accepted.
func ParseCipherSuites(s string) ([]uint16, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	known := map[string]uint16{}
	for _, c := range tls.CipherSuites() {
		known[c.Name] = c.ID
	}
	var out []uint16
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		id, ok := known[name]
		if !ok {
			return nil, fmt.Errorf("tlsconf: unknown or insecure cipher suite %q", name)
		}
		out = append(out, id)
	}
	return out, nil
}

// CommonName is the CN of the verified client certificate of a TLS
// connection ("" without one): with auth on, the etcd user.
func CommonName(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}
