package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Usage is what an issued certificate is for.
type Usage int

const (
	// Server certificates authenticate a listener (the client port).
	Server Usage = 1 << iota
	// Client certificates authenticate a caller; with auth on, the CN is
	// the etcd user name.
	Client
	// Peer certificates are both: every internal hop (Raft, replica,
	// watcher) is served and dialled with the same one.
	Peer = Server | Client
)

// Authority is a certificate authority that can issue certificates.
type Authority struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is the CA certificate, for trust bundles.
	PEM []byte
}

// NewAuthority creates a self-signed CA valid for validity.
func NewAuthority(name string, validity time.Duration) (*Authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Tessera"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Issued is a certificate and its key, PEM-encoded.
type Issued struct {
	CertPEM, KeyPEM []byte
}

// Issue signs a certificate for cn, valid for the hosts (DNS names or IP
// addresses) for validity, for usage.
func (a *Authority) Issue(cn string, hosts []string, usage Usage, validity time.Duration) (Issued, error) {
	return a.issue(cn, hosts, usage, time.Now().Add(-time.Hour), time.Now().Add(validity))
}

func (a *Authority) issue(cn string, hosts []string, usage Usage, notBefore, notAfter time.Time) (Issued, error) {
	if usage == 0 {
		return Issued{}, errors.New("tlsconf: a certificate needs a usage")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Issued{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	if usage&Server != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if usage&Client != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, &key.PublicKey, a.Key)
	if err != nil {
		return Issued{}, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Issued{}, err
	}
	return Issued{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}, nil
}

// Write stores the certificate and key as dir/name.crt and dir/name.key
// (the key readable by its owner only) and returns their paths. Each file
// is replaced whole (written aside, then renamed), so a process reloading
// it never reads half a file.
func (i Issued) Write(dir, name string) (Files, error) {
	f := Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
	if err := writeAtomic(f.Key, i.KeyPEM, 0o600); err != nil {
		return Files{}, err
	}
	if err := writeAtomic(f.Cert, i.CertPEM, 0o644); err != nil {
		return Files{}, err
	}
	return f, nil
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("tlsconf: random serial: %v", err)) // crypto/rand does not fail on Linux
	}
	return n
}

// Set is what "tessera certs" writes into a directory: a CA and a server,
// a peer and a client certificate signed by it.
type Set struct {
	CA                   string
	Server, Peer, Client Files
}

// SetIn is where WriteSet puts a set's files in dir.
func SetIn(dir string) Set {
	files := func(name string) Files {
		return Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
	}
	return Set{CA: filepath.Join(dir, "ca.crt"), Server: files("server"), Peer: files("peer"), Client: files("client")}
}

// WriteSet creates a CA and server, peer and client certificates for
// hosts in dir (created if missing), valid for validity; the client
// certificate's CN is clientCN (with auth on, the etcd user, e.g. root).
func WriteSet(dir string, hosts []string, clientCN string, validity time.Duration) (Set, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Set{}, err
	}
	ca, err := NewAuthority("tessera-ca", validity)
	if err != nil {
		return Set{}, err
	}
	s := SetIn(dir)
	if err := writeAtomic(s.CA, ca.PEM, 0o644); err != nil {
		return Set{}, err
	}
	for _, c := range []struct {
		name, cn string
		usage    Usage
		hosts    []string
	}{
		{"server", "tessera-server", Server, hosts},
		{"peer", "tessera-peer", Peer, hosts},
		{"client", clientCN, Client, nil},
	} {
		is, err := ca.Issue(c.cn, c.hosts, c.usage, validity)
		if err != nil {
			return Set{}, err
		}
		if _, err := is.Write(dir, c.name); err != nil {
			return Set{}, err
		}
	}
	return s, nil
}
