package e2e

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tessera-kv/tessera/pkg/tlsconf"
	"github.com/tessera-kv/tessera/proto/shardpb"
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

	// Rotation: a new server certificate (of a second CA, added to the
	// bundle first) is served to new connections without a restart, while
	// the clientv3 connection made before goes on.
	ca2, err := tlsconf.NewAuthority("tessera-ca-2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca2.Issue("tessera-server", []string{"127.0.0.1", "localhost"}, tlsconf.Server, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca+".new", append(bundle, ca2.PEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(ca+".new", ca); err != nil {
		t.Fatal(err)
	}
	if _, err := next.Write(certs, "server"); err != nil {
		t.Fatal(err)
	}
	served := func() string {
		c, err := tls.Dial("tcp", d.client, &tls.Config{InsecureSkipVerify: true, GetClientCertificate: cfg.GetClientCertificate})
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Issuer.CommonName
	}
	for deadline := time.Now().Add(10 * time.Second); served() != "tessera-ca-2"; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the rotated server certificate was not served within 10 s (served: %s)", served())
		}
	}
	if _, err := cli.Put(ctx, "/tls/c", "3"); err != nil {
		t.Fatalf("the client connected before the rotation: %v", err)
	}
}

// TestPeerTLS runs three replica processes, a watcher and a gateway with
// mutual TLS on every internal hop (etcd's --peer-* flags), replica 3 with
// a certificate of another CA. Clients are served (the two others are a
// quorum) and watches work; the internal API refuses plaintext callers and
// callers with a certificate of another CA; replica 3 gets no Raft
// traffic through, so it never applies the cluster's writes.
func TestPeerTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("three replica processes over mutual TLS: not in -short")
	}
	good, err := tlsconf.WriteSet(t.TempDir(), []string{"127.0.0.1"}, "root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := tlsconf.WriteSet(t.TempDir(), []string{"127.0.0.1"}, "root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	flags := func(s tlsconf.Set) []string {
		return []string{"--peer-cert-file", s.Peer.Cert, "--peer-key-file", s.Peer.Key, "--peer-trusted-ca-file", s.CA}
	}
	pc := startProcClusterWith(t, nil, [][]string{flags(good), flags(good), flags(bad)}, flags(good))
	cli := newClient(t, pc.url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put, err := cli.Put(ctx, "/peer/a", "1")
	if err != nil {
		t.Fatalf("put through the gateway over peer mTLS: %v", err)
	}
	wch := cli.Watch(ctx, "/peer/", clientv3.WithPrefix(), clientv3.WithRev(put.Header.Revision))
	select {
	case resp := <-wch:
		if len(resp.Events) == 0 || string(resp.Events[0].Kv.Value) != "1" {
			t.Fatalf("watch over peer mTLS: %+v", resp)
		}
	case <-ctx.Done():
		t.Fatal("no watch event over peer mTLS")
	}

	status := func(addr string, cfg *tls.Config) (*shardpb.StatusResponse, error) {
		creds := insecure.NewCredentials()
		if cfg != nil {
			creds = credentials.NewTLS(cfg)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		defer scancel()
		return shardpb.NewShardClient(conn).Status(sctx, &shardpb.StatusRequest{ShardId: dataShardID})
	}
	client := func(s tlsconf.Set, ca string) *tls.Config {
		cfg, err := tlsconf.ClientConfig(tlsconf.Options{Files: tlsconf.Files{Cert: s.Peer.Cert, Key: s.Peer.Key, CA: ca}})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if _, err := status(pc.reps[0].api, client(good, good.CA)); err != nil {
		t.Fatalf("the internal API with a peer certificate of the CA: %v", err)
	}
	if _, err := status(pc.reps[0].api, nil); err == nil {
		t.Fatal("the internal API answered a plaintext caller")
	}
	if _, err := status(pc.reps[0].api, client(bad, good.CA)); err == nil {
		t.Fatal("the internal API answered a caller with a certificate of another CA")
	}
	// Replica 3 is reachable by callers of its own CA; it has applied none
	// of the cluster's writes.
	st, err := status(pc.reps[2].api, client(bad, bad.CA))
	if err != nil {
		t.Fatalf("replica 3's own API: %v", err)
	}
	if st.AppliedRevision >= put.Header.Revision {
		t.Fatalf("replica 3, of another CA, applied revision %d (the put was at %d): its Raft traffic got through", st.AppliedRevision, put.Header.Revision)
	}
}
