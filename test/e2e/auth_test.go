package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tessera-kv/tessera/pkg/tlsconf"
)

// TestAuthOverMTLS: etcd's auth on "tessera dev" over mutual TLS, driven
// by etcdctl. With --client-cert-auth a request without a password is the
// user its certificate's common name names; a password login overrides the
// certificate; a common name with no user is refused; the server goes on
// serving others throughout.
func TestAuthOverMTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := tlsconf.NewAuthority("auth-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(cn string, usage tlsconf.Usage, hosts ...string) tlsconf.Files {
		is, err := ca.Issue(cn, hosts, usage, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f, err := is.Write(dir, cn)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	caFile := dir + "/ca.crt"
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	server := issue("server", tlsconf.Server, "127.0.0.1")
	certs := map[string]tlsconf.Files{}
	for _, cn := range []string{"root", "alice", "nobody"} {
		certs[cn] = issue(cn, tlsconf.Client)
	}
	d := newDevNode(t)
	https := "https://" + d.client
	d.p = startProc(t, "dev", tesseraBin, "dev", "--data-dir", d.dataDir, "--listen-client-urls", https,
		"--raft-address", d.raft, "--api-address", d.api, "--watcher-address", d.watcher,
		"--cert-file", server.Cert, "--key-file", server.Key, "--trusted-ca-file", caFile, "--client-cert-auth", "--bcrypt-cost", "4")
	d.p.waitOutput("tessera dev ready", 30*time.Second)

	ctl := func(cn string, args ...string) (string, int) {
		t.Helper()
		out, errOut, code := runCtl(t, https, "", append([]string{"--cacert", caFile, "--cert", certs[cn].Cert, "--key", certs[cn].Key}, args...)...)
		return out + errOut, code
	}
	must := func(cn string, args ...string) {
		t.Helper()
		if out, code := ctl(cn, args...); code != 0 {
			t.Fatalf("etcdctl %v as %s: %d %s", args, cn, code, out)
		}
	}
	refused := func(want, cn string, args ...string) {
		t.Helper()
		if out, code := ctl(cn, args...); code == 0 || !strings.Contains(out, want) {
			t.Errorf("etcdctl %v as %s: %d %s, want %q", args, cn, code, out, want)
		}
	}
	must("root", "user", "add", "root", "--new-user-password=rootpw")
	must("root", "user", "grant-role", "root", "root")
	must("root", "role", "add", "reader")
	must("root", "role", "grant-permission", "reader", "read", "/app/", "--prefix")
	must("root", "user", "add", "alice", "--new-user-password=alicepw")
	must("root", "user", "grant-role", "alice", "reader")
	must("root", "put", "/app/x", "1")
	must("root", "auth", "enable")

	must("root", "put", "/y", "1") // the certificate's CN, root
	must("alice", "get", "/app/x") // the certificate's CN, alice
	refused("permission denied", "alice", "put", "/app/x", "2")
	refused("permission denied", "nobody", "get", "/app/x") // no such user
	refused("permission denied", "root", "--user=alice:alicepw", "put", "/y", "2")
	refused("authentication failed", "root", "--user=alice:wrong", "get", "/app/x")
	refused("permission denied", "alice", "auth", "disable")
	if out, code := ctl("alice", "--user=alice:alicepw", "get", "/app/x", "--print-value-only"); code != 0 || strings.TrimSpace(out) != "1" {
		t.Errorf("alice with her password: %d %q", code, out)
	}
	must("root", "auth", "disable")
	must("nobody", "put", "/app/x", "3")
}
