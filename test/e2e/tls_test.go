package e2e

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tessera-kv/tessera/pkg/tlsconf"
)

// TestDevTLS: "tessera dev --tls" serves etcd's API over https with client
// certificates it made: etcdctl with --cacert/--cert/--key works, without a
// client certificate or with one of another CA it is refused (and the
// server keeps serving), and clientv3 and REST work over the same port.
func TestDevTLS(t *testing.T) {
	d := newDevNode(t)
	args := []string{"dev", "--tls", "--data-dir", d.dataDir, "--listen-client-urls", d.endpoint(),
		"--raft-address", d.raft, "--api-address", d.api, "--watcher-address", d.watcher}
	d.p = startProc(t, "dev", tesseraBin, args...)
	d.p.waitOutput("tessera dev ready", 30*time.Second)
	https := "https://" + d.client
	certs := filepath.Join(d.dataDir, "certs")
	ca, cert, key := filepath.Join(certs, "ca.crt"), filepath.Join(certs, "client.crt"), filepath.Join(certs, "client.key")
	if out := d.p.waitOutput("--cacert", 5*time.Second); !strings.Contains(out, "--endpoints "+https) {
		t.Fatalf("dev --tls did not print the etcdctl flags for %s:\n%s", https, out)
	}
	tlsArgs := []string{"--cacert", ca, "--cert", cert, "--key", key}

	if out, errOut, code := runCtl(t, https, "", append(tlsArgs, "put", "/tls/a", "1")...); code != 0 {
		t.Fatalf("etcdctl put over mTLS: %d %s %s", code, out, errOut)
	}
	if out, errOut, code := runCtl(t, https, "", append(tlsArgs, "get", "/tls/a", "--print-value-only")...); code != 0 || strings.TrimSpace(out) != "1" {
		t.Fatalf("etcdctl get over mTLS: %d %q %s", code, out, errOut)
	}
	other, err := tlsconf.WriteSet(t.TempDir(), []string{"127.0.0.1"}, "root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		name string
		args []string
	}{
		{"no client certificate", []string{"--cacert", ca}},
		{"a client certificate of another CA", []string{"--cacert", ca, "--cert", other.Client.Cert, "--key", other.Client.Key}},
		{"plaintext", nil},
	} {
		ep := https
		if bad.args == nil {
			ep = "http://" + d.client
		}
		if out, _, code := runCtl(t, ep, "", append(bad.args, "--command-timeout=3s", "get", "/tls/a")...); code == 0 {
			t.Errorf("%s: etcdctl succeeded: %q", bad.name, out)
		}
	}

	// clientv3 over TLS, after the refusals.
	cfg, err := tlsconf.ClientConfig(tlsconf.Options{Files: tlsconf.Files{Cert: cert, Key: key, CA: ca}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{https}, TLS: cfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/tls/b", "2"); err != nil {
		t.Fatalf("clientv3 put over mTLS: %v", err)
	}
	if r, err := cli.Get(ctx, "/tls/", clientv3.WithPrefix()); err != nil || r.Count != 2 {
		t.Fatalf("clientv3 get over mTLS: %v %v", r, err)
	}

	// REST on the same port.
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg.Clone()}}
	resp, err := hc.Post(https+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"L3Rscy9h"}`))
	if err != nil {
		t.Fatalf("REST over mTLS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST range over mTLS: %s", resp.Status)
	}
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cfg.RootCAs, InsecureSkipVerify: true}}}
	if resp, err := noCert.Get(https + "/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("REST without a client certificate: %s", resp.Status)
	}
}
