package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ctlJSON is what "etcdctl -w json" prints for get/put (int64 as numbers,
// bytes as base64).
type ctlJSON struct {
	Header struct {
		Revision int64 `json:"revision"`
	} `json:"header"`
	Kvs []struct {
		Key            string `json:"key"`
		Value          string `json:"value"`
		CreateRevision int64  `json:"create_revision"`
		ModRevision    int64  `json:"mod_revision"`
		Version        int64  `json:"version"`
	} `json:"kvs"`
	Count int64 `json:"count"`
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestEtcdctl drives "tessera dev" with the real etcdctl.
func TestEtcdctl(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	ep := d.endpoint()

	// ctl runs etcdctl and requires the exit code.
	ctl := func(stdin string, wantCode int, args ...string) (string, string) {
		t.Helper()
		out, errOut, code := runCtl(t, ep, stdin, args...)
		if code != wantCode {
			t.Fatalf("etcdctl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, wantCode, out, errOut)
		}
		return out, errOut
	}
	parse := func(out string) ctlJSON {
		t.Helper()
		var j ctlJSON
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatalf("parse etcdctl json %q: %v", out, err)
		}
		return j
	}

	if out, _ := ctl("", 0, "put", "foo", "bar"); out != "OK\n" {
		t.Errorf("put foo bar: %q, want OK", out)
	}
	if out, _ := ctl("", 0, "get", "foo"); out != "foo\nbar\n" {
		t.Errorf("get foo: %q", out)
	}
	if out, _ := ctl("", 0, "get", "foo", "--print-value-only"); out != "bar\n" {
		t.Errorf("get foo --print-value-only: %q", out)
	}
	// put -w json reports the write's revision.
	put2 := parse(func() string { o, _ := ctl("", 0, "put", "foo2", "baz", "-w", "json"); return o }())
	ctl("", 0, "put", "other", "x")
	if out, _ := ctl("", 0, "get", "--prefix", "foo"); out != "foo\nbar\nfoo2\nbaz\n" {
		t.Errorf("get --prefix foo: %q", out)
	}
	if out, _ := ctl("", 0, "get", "--prefix", "foo", "--keys-only"); out != "foo\n\nfoo2\n\n" {
		t.Errorf("get --prefix foo --keys-only: %q", out)
	}
	if out, _ := ctl("", 0, "get", "--prefix", "foo", "--count-only", "-w", "fields"); !strings.Contains(out, "\"Count\" : 2\n") {
		t.Errorf("get --prefix foo --count-only: %q", out)
	}

	out, _ := ctl("", 0, "get", "foo", "-w", "json")
	j := parse(out)
	// Writes so far: foo (2), foo2 (3), other (4).
	if put2.Header.Revision != 3 {
		t.Errorf("put foo2 -w json: header revision %d, want 3 (second write of a fresh store)", put2.Header.Revision)
	}
	if j.Header.Revision != 4 {
		t.Errorf("get foo -w json: header revision %d, want 4", j.Header.Revision)
	}
	if len(j.Kvs) != 1 || j.Kvs[0].Key != b64("foo") || j.Kvs[0].Value != b64("bar") ||
		j.Kvs[0].CreateRevision != 2 || j.Kvs[0].ModRevision != 2 || j.Kvs[0].Version != 1 || j.Count != 1 {
		t.Errorf("get foo -w json: %s", out)
	}
	fooRev := j.Kvs[0].ModRevision

	if out, _ := ctl("", 0, "del", "foo"); out != "1\n" {
		t.Errorf("del foo: %q, want 1", out)
	}
	if out, _ := ctl("", 0, "get", "foo"); out != "" {
		t.Errorf("get foo after del: %q, want nothing", out)
	}
	// The old revision still has it.
	if out, _ := ctl("", 0, "get", "foo", "--rev", fmt.Sprint(fooRev)); out != "foo\nbar\n" {
		t.Errorf("get foo --rev %d: %q", fooRev, out)
	}

	// txn: compares, blank line, success ops, blank line, failure ops, blank line.
	txn := "mod(\"k\") = \"0\"\n\nput k v\n\nput k w\n\n"
	if out, _ := ctl(txn, 0, "txn", "--interactive=false"); out != "SUCCESS\n\nOK\n" {
		t.Errorf("first txn: %q, want SUCCESS then OK", out)
	}
	if out, _ := ctl(txn, 0, "txn", "--interactive=false"); out != "FAILURE\n\nOK\n" {
		t.Errorf("second txn: %q, want FAILURE then OK", out)
	}
	if out, _ := ctl("", 0, "get", "k"); out != "k\nw\n" {
		t.Errorf("get k after txns: %q, want k=w", out)
	}
	txn2 := "value(\"k\") = \"w\"\nversion(\"k\") = \"2\"\n\nget k\ndel k\n\n\n"
	if out, _ := ctl(txn2, 0, "txn", "--interactive=false"); out != "SUCCESS\n\nk\nw\n\n1\n" {
		t.Errorf("txn with get+del: %q", out)
	}
	if out, _ := ctl("", 0, "get", "k"); out != "" {
		t.Errorf("get k after txn del: %q, want nothing", out)
	}

	// Compact at the current revision; reads below it fail with etcd's error.
	cur := parse(func() string { o, _ := ctl("", 0, "get", "other", "-w", "json"); return o }()).Header.Revision
	if out, _ := ctl("", 0, "compaction", fmt.Sprint(cur)); out != fmt.Sprintf("compacted revision %d\n", cur) {
		t.Errorf("compaction %d: %q", cur, out)
	}
	_, errOut := ctl("", 1, "get", "foo", "--rev", fmt.Sprint(fooRev))
	if !strings.Contains(errOut, "required revision has been compacted") {
		t.Errorf("get --rev %d after compaction: stderr %q, want the compacted error", fooRev, errOut)
	}
	// Reading at the compaction revision itself still works.
	if out, _ := ctl("", 0, "get", "other", "--rev", fmt.Sprint(cur)); out != "other\nx\n" {
		t.Errorf("get other --rev %d (the compaction revision): %q", cur, out)
	}
	_, errOut = ctl("", 1, "get", "foo", "--rev", fmt.Sprint(cur+1000))
	if !strings.Contains(errOut, "required revision is a future revision") {
		t.Errorf("get --rev future: stderr %q, want the future-revision error", errOut)
	}

	// Empty key: etcd's error, nothing written.
	before := parse(func() string { o, _ := ctl("", 0, "get", "other", "-w", "json"); return o }()).Header.Revision
	_, errOut = ctl("", 1, "put", "", "x")
	if !strings.Contains(errOut, "etcdserver: key is not provided") {
		t.Errorf("put with empty key: stderr %q, want \"etcdserver: key is not provided\"", errOut)
	}
	after := parse(func() string { o, _ := ctl("", 0, "get", "other", "-w", "json"); return o }()).Header.Revision
	if after != before {
		t.Errorf("rejected put moved the revision from %d to %d", before, after)
	}
	if out, _ := ctl("", 0, "put", "after", "y"); out != "OK\n" {
		t.Errorf("put after errors: %q", out)
	}
}

// TestEtcdctlWatch runs "etcdctl watch" against "tessera dev": a prefix
// watch from a past revision with prev_kv, and periodic progress.
func TestEtcdctlWatch(t *testing.T) {
	d := newDevNode(t)
	d.extraArgs = []string{"--watch-progress-notify-interval", "200ms"}
	d.start(t)
	ep := d.endpoint()
	ctl := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCtl(t, ep, "", args...)
		if code != 0 {
			t.Fatalf("etcdctl %v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	out := ctl("put", "/ew/a", "1", "-w", "json")
	var put struct {
		Header struct {
			Revision int64 `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal([]byte(out), &put); err != nil {
		t.Fatal(err)
	}
	w := startProc(t, "etcdctl-watch", etcdctlBin, "--endpoints="+ep, "watch", "--prefix", "/ew/",
		"--rev", fmt.Sprint(put.Header.Revision), "--prev-kv")
	ctl("put", "/ew/a", "2")
	ctl("put", "/other", "x")
	ctl("put", "/ew/b", "1")
	ctl("del", "/ew/a")
	want := "PUT\n/ew/a\n1\n" + // from the past revision; a create has no prev_kv
		"PUT\n/ew/a\n1\n/ew/a\n2\n" + // prev_kv, then kv
		"PUT\n/ew/b\n1\n" +
		"DELETE\n/ew/a\n2\n/ew/a\n\n"
	w.waitOutput(want, 15*time.Second)

	p := startProc(t, "etcdctl-watch-progress", etcdctlBin, "--endpoints="+ep, "watch", "/ew/", "--prefix", "--progress-notify")
	p.waitOutput("progress notify: ", 15*time.Second)
}

// TestEtcdctlLease: grant, attach, time-to-live with keys, keep-alive,
// list, revoke (the key goes) with the real etcdctl.
func TestEtcdctlLease(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	ctl := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCtl(t, d.endpoint(), "", args...)
		if code != 0 {
			t.Fatalf("etcdctl %v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	out := ctl("lease", "grant", "60")
	var id string
	if _, err := fmt.Sscanf(out, "lease %s granted with TTL(60s)", &id); err != nil {
		t.Fatalf("lease grant: %q (%v)", out, err)
	}
	ctl("put", "/el/k", "v", "--lease="+id)
	if out := ctl("lease", "timetolive", id, "--keys"); !strings.Contains(out, "granted with TTL(60s)") || !strings.Contains(out, "attached keys([/el/k])") {
		t.Errorf("timetolive: %q", out)
	}
	if out := ctl("lease", "keep-alive", "--once", id); !strings.Contains(out, "keepalived with TTL(60)") {
		t.Errorf("keep-alive: %q", out)
	}
	if out := ctl("lease", "list"); !strings.Contains(out, id) {
		t.Errorf("lease list: %q", out)
	}
	if out := ctl("lease", "revoke", id); !strings.Contains(out, "revoked") {
		t.Errorf("revoke: %q", out)
	}
	if out := ctl("get", "/el/k"); out != "" {
		t.Errorf("key of a revoked lease: %q", out)
	}
	if out := ctl("lease", "timetolive", id); !strings.Contains(out, "already expired") {
		t.Errorf("timetolive of a revoked lease: %q", out)
	}
}

// TestEtcdctlHostileKey is the report that opened the hardening work: a
// 65,001-byte key used to stop tessera dev for good (the entry replayed on
// every restart). It is refused with a clear error, and the store keeps
// serving, also after a restart.
func TestEtcdctlHostileKey(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	long := strings.Repeat("k", 65001)
	_, errOut, code := runCtl(t, d.endpoint(), "", "put", long, "v")
	if code == 0 || !strings.Contains(errOut, "etcdserver: key is too large") {
		t.Fatalf("put of a 65001-byte key: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runCtl(t, d.endpoint(), "", "put", "/after", "v"); code != 0 {
		t.Fatalf("put after the refused key: %s", errOut)
	}
	d.p.Stop()
	d.start(t)
	if out, errOut, code := runCtl(t, d.endpoint(), "", "get", "/after", "--print-value-only"); code != 0 || strings.TrimSpace(out) != "v" {
		t.Fatalf("get after restart: %q %s", out, errOut)
	}
}

// TestEtcdctlMaintenance: member list, endpoint status/health/hashkv,
// defrag and alarm list with the real etcdctl.
func TestEtcdctlMaintenance(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	ctl := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCtl(t, d.endpoint(), "", args...)
		if code != 0 {
			t.Fatalf("etcdctl %v: exit %d: %s %s", args, code, out, errOut)
		}
		return out
	}
	ctl("put", "/em/k", "v")
	if out := ctl("member", "list"); !strings.Contains(out, "started, dev, , "+d.endpoint()) {
		t.Errorf("member list: %q", out)
	}
	if out := ctl("endpoint", "health"); !strings.Contains(out, d.endpoint()+" is healthy") {
		t.Errorf("endpoint health: %q", out)
	}
	var status []struct {
		Status struct {
			Version string `json:"version"`
			DbSize  int64  `json:"dbSize"`
			Leader  uint64 `json:"leader"`
		} `json:"Status"`
	}
	if err := json.Unmarshal([]byte(ctl("endpoint", "status", "-w", "json")), &status); err != nil || len(status) != 1 ||
		status[0].Status.Version != "3.7.0" || status[0].Status.DbSize <= 0 || status[0].Status.Leader == 0 {
		t.Errorf("endpoint status: %+v (%v)", status, err)
	}
	if out := ctl("endpoint", "hashkv"); !strings.HasPrefix(out, d.endpoint()+", ") {
		t.Errorf("endpoint hashkv: %q", out)
	}
	if out := ctl("defrag"); !strings.Contains(out, "Finished defragmenting") {
		t.Errorf("defrag: %q", out)
	}
	if out := ctl("alarm", "list"); out != "" {
		t.Errorf("alarm list: %q", out)
	}
}

// TestCertsCommand: "tessera certs" writes a CA and server, peer and
// client certificates that chain to it, and prints the etcdctl flags.
func TestCertsCommand(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(tesseraBin, "certs", "--dir", dir, "--hosts", "127.0.0.1,localhost", "--client-cn", "alice").CombinedOutput()
	if err != nil {
		t.Fatalf("tessera certs: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--cacert "+filepath.Join(dir, "ca.crt")) {
		t.Fatalf("no etcdctl flags in the output:\n%s", out)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, c := range []struct {
		name  string
		usage x509.ExtKeyUsage
		cn    string
	}{{"server", x509.ExtKeyUsageServerAuth, "tessera-server"}, {"peer", x509.ExtKeyUsageClientAuth, "tessera-peer"}, {"client", x509.ExtKeyUsageClientAuth, "alice"}} {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, c.name+".crt"), filepath.Join(dir, c.name+".key"))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err != nil {
			t.Fatalf("%s does not chain to the CA for its use: %v", c.name, err)
		}
		if cert.Subject.CommonName != c.cn {
			t.Fatalf("%s CN %q, want %q", c.name, cert.Subject.CommonName, c.cn)
		}
		if st, err := os.Stat(filepath.Join(dir, c.name+".key")); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s.key mode %v, %v: want 0600", c.name, st.Mode().Perm(), err)
		}
	}
}
