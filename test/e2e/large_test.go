package e2e

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// The requests that used to stop every replica for good, at the sizes the
// hardening issue names. They take minutes, so they run in their own CI
// step (make test-large) rather than in make test.
var large = flag.Bool("e2e.large", false, "run the large-request tests (a million-key delete, a 200k-key lease revoke)")

const (
	largeDeleteKeys = 1000000
	largeLeaseKeys  = 200000
	bigRequestBytes = 4 << 20 // room for a txn of 128 values of 12 KiB
)

// fillKeys writes n keys prefix%07d with testcluster.Fill.
func fillKeys(t *testing.T, cli *clientv3.Client, prefix string, n int, opts ...clientv3.OpOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := testcluster.Fill(ctx, cli, prefix, n, 16, opts...); err != nil {
		t.Fatal(err)
	}
}

func countPrefix(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	r, err := cli.Get(ctxT(t), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return r.Count
}

// runLarge runs the large requests through endpoint with the real etcdctl,
// then restarts every process and checks that everything acknowledged is
// there.
func runLarge(t *testing.T, endpoint string, restart func()) {
	cli := newClient(t, endpoint)

	// mayTimeOut runs a request that may take longer than the server's
	// request timeout (etcd's 7 s) on this 2-core box with every process
	// on it: it succeeds with want, or answers etcd's "request timed out"
	// and is applied all the same (the entry is committed), so prefix ends
	// up empty either way.
	mayTimeOut := func(prefix, want string, args ...string) {
		t.Helper()
		out, errOut, code := runCtl(t, endpoint, "", append([]string{"--command-timeout=5m"}, args...)...)
		switch {
		case code == 0 && strings.Contains(out, want):
		case code != 0 && strings.Contains(errOut, "request timed out"):
			t.Logf("etcdctl %v: %s (the entry still applies)", args, strings.TrimSpace(errOut))
		default:
			t.Fatalf("etcdctl %v: exit %d: %q %s", args, code, out, errOut)
		}
		for deadline := time.Now().Add(5 * time.Minute); countPrefix(t, cli, prefix) != 0; time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("etcdctl %v: %d keys still under %s after 5 minutes", args, countPrefix(t, cli, prefix), prefix)
			}
		}
	}

	// A key over the store's limit: refused, before Raft.
	if _, errOut, code := runCtl(t, endpoint, "", "put", strings.Repeat("k", 65001), "v"); code == 0 || !strings.Contains(errOut, "etcdserver: key is too large") {
		t.Fatalf("put of a 65001-byte key: exit %d: %s", code, errOut)
	}

	start := time.Now()
	fillKeys(t, cli, "/registry/events/", largeDeleteKeys)
	t.Logf("wrote %d keys in %s", largeDeleteKeys, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	mayTimeOut("/registry/events/", fmt.Sprint(largeDeleteKeys), "del", "--prefix", "/registry/events/")
	t.Logf("del --prefix of %d keys: gone after %s", largeDeleteKeys, time.Since(start).Round(time.Millisecond))

	lease, err := cli.Grant(ctxT(t), 3600)
	if err != nil {
		t.Fatal(err)
	}
	fillKeys(t, cli, "/registry/leases/", largeLeaseKeys, clientv3.WithLease(lease.ID))
	start = time.Now()
	mayTimeOut("/registry/leases/", "revoked", "lease", "revoke", fmt.Sprintf("%x", lease.ID))
	t.Logf("revoke of a lease with %d keys: gone after %s", largeLeaseKeys, time.Since(start).Round(time.Millisecond))

	var ops []clientv3.Op
	for i := 0; i < 128; i++ {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("/registry/big/%03d", i), strings.Repeat("x", 12<<10)))
	}
	if _, err := cli.Txn(ctxT(t)).Then(ops...).Commit(); err != nil {
		t.Fatalf("txn of 128 values of 12 KiB: %v", err)
	}
	fillKeys(t, cli, "/registry/kept/", 5000)

	restart()
	cli = newClient(t, endpoint)
	if n := countPrefix(t, cli, "/registry/kept/"); n != 5000 {
		t.Fatalf("%d of 5000 kept keys after restarting every process", n)
	}
	if n := countPrefix(t, cli, "/registry/big/"); n != 128 {
		t.Fatalf("%d of 128 big keys after restarting every process", n)
	}
	if n := countPrefix(t, cli, "/registry/events/") + countPrefix(t, cli, "/registry/leases/"); n != 0 {
		t.Fatalf("%d deleted keys back after restarting every process", n)
	}
	if _, err := cli.Put(ctxT(t), "/registry/after", "x"); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
}

func TestLargeRequestsDev(t *testing.T) {
	if !*large {
		t.Skip("large-request tests run with -e2e.large (make test-large)")
	}
	d := newDevNode(t)
	d.extraArgs = []string{"--max-request-bytes", fmt.Sprint(bigRequestBytes)}
	d.start(t)
	runLarge(t, d.endpoint(), func() {
		d.p.Stop()
		d.start(t)
	})
}

func TestLargeRequestsThreeReplicas(t *testing.T) {
	if !*large {
		t.Skip("large-request tests run with -e2e.large (make test-large)")
	}
	pc := startProcCluster(t, "--max-request-bytes", fmt.Sprint(bigRequestBytes))
	runLarge(t, pc.url, func() { pc.restartAll(t) })
}
