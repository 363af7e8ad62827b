package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve accepts TLS connections on loopback, answering each with the CN
// of its client certificate, until the test ends.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					return
				}
				io.WriteString(c, "cn="+CommonName(tc.ConnectionState())+"\n")
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return l.Addr().String()
}

// dial connects and reads the server's first line; the error is the
// handshake's (TLS 1.3 reports a refused client certificate on the first
// read).
func dial(addr string, cfg *tls.Config) (*tls.Conn, string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, "", err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		c.Close()
		return nil, "", err
	}
	return c, strings.TrimSpace(string(buf[:n])), nil
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewAuthority("tessera-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := writeAtomic(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	issue := func(name, cn string, u Usage, notBefore, notAfter time.Time) Files {
		is, err := ca.issue(cn, []string{"127.0.0.1"}, u, notBefore, notAfter)
		if err != nil {
			t.Fatal(err)
		}
		f, err := is.Write(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	now := time.Now()
	server := issue("server", "tessera-server", Server, now.Add(-time.Hour), now.Add(time.Hour))
	good := issue("client", "root", Client, now.Add(-time.Hour), now.Add(time.Hour))
	expired := issue("expired", "root", Client, now.Add(-2*time.Hour), now.Add(-time.Hour))
	serverAsClient := issue("server-only", "tessera-server", Server, now.Add(-time.Hour), now.Add(time.Hour))

	srv, err := ServerConfig(Options{Files: Files{Cert: server.Cert, Key: server.Key, CA: caFile}, ClientAuth: true})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	client := func(t *testing.T, f Files) *tls.Config {
		cfg, err := ClientConfig(Options{Files: f})
		if err != nil {
			t.Fatal(err)
		}
		cfg.ServerName = "127.0.0.1"
		return cfg
	}
	withCA := func(f Files) Files { f.CA = caFile; return f }

	c, line, err := dial(addr, client(t, withCA(good)))
	if err != nil || line != "cn=root" {
		t.Fatalf("a client with a certificate of the CA: %q, %v", line, err)
	}
	c.Close()

	other, err := WriteSet(filepath.Join(dir, "other"), []string{"127.0.0.1"}, "root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"no client certificate", client(t, Files{CA: caFile})},
		{"a client certificate of another CA", client(t, withCA(Files{Cert: other.Client.Cert, Key: other.Client.Key}))},
		{"an expired client certificate", client(t, withCA(expired))},
		{"a certificate not for clients", client(t, withCA(serverAsClient))},
		{"a server of another CA", client(t, Files{Cert: good.Cert, Key: good.Key, CA: other.CA})},
	} {
		if c, line, err := dial(addr, bad.cfg); err == nil {
			c.Close()
			t.Errorf("%s: accepted (%q)", bad.name, line)
		}
	}
	// The server goes on serving good clients.
	if c, _, err := dial(addr, client(t, withCA(good))); err != nil {
		t.Fatalf("after the refusals: %v", err)
	} else {
		c.Close()
	}
}

// A rotated server certificate is served to new connections without a
// restart, while a connection made before goes on.
func TestServerCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	set, err := WriteSet(dir, []string{"127.0.0.1"}, "root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ServerConfig(Options{Files: Files{Cert: set.Server.Cert, Key: set.Server.Key}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	cli, err := ClientConfig(Options{Files: Files{CA: set.CA}})
	if err != nil {
		t.Fatal(err)
	}
	cli.ServerName = "127.0.0.1"
	old, _, err := dial(addr, cli)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	before := old.ConnectionState().PeerCertificates[0].SerialNumber

	// Rotate: a new server certificate from the same CA (the CA's key is
	// not kept on disk, so sign with a new CA and trust both).
	ca, err := NewAuthority("tessera-ca-2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca.Issue("tessera-server", []string{"127.0.0.1"}, Server, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle := append(readFile(t, set.CA), ca.PEM...)
	if err := writeAtomic(set.CA, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := next.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	want := parseCert(t, next.CertPEM).SerialNumber
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _, err := dial(addr, cli)
		if err == nil {
			got := c.ConnectionState().PeerCertificates[0].SerialNumber
			c.Close()
			if got.Cmp(want) == 0 {
				break
			}
			if got.Cmp(before) != 0 {
				t.Fatalf("served serial %v: neither the old nor the new certificate", got)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated certificate was not served within 10 s (last error %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := old.Write([]byte("still here\n")); err != nil {
		t.Fatalf("the connection made before the rotation broke: %v", err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseCert(t *testing.T, p []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(p)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseFlags(t *testing.T) {
	if v, err := ParseMinVersion("TLS1.3"); err != nil || v != tls.VersionTLS13 {
		t.Fatalf("TLS1.3: %v %v", v, err)
	}
	if _, err := ParseMinVersion("TLS1.0"); err == nil {
		t.Fatal("TLS1.0 accepted")
	}
	ids, err := ParseCipherSuites("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")
	if err != nil || len(ids) != 2 || ids[0] != tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 {
		t.Fatalf("suites: %v %v", ids, err)
	}
	if _, err := ParseCipherSuites("TLS_RSA_WITH_RC4_128_SHA"); err == nil {
		t.Fatal("an insecure suite accepted")
	}
}
