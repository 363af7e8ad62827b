package integration

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/limits"
	"github.com/tessera-kv/tessera/services/gateway"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestHostileRequestsSingleReplica sends requests that used to stop every
// replica for good (entries larger than one Badger transaction, a key over
// Badger's limit): each succeeds as in etcd or gets a clear error, the
// cluster keeps serving, and a restart of every store finds all the data.
func TestHostileRequestsSingleReplica(t *testing.T) { runHostile(t, 1) }

func TestHostileRequestsThreeReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores: not in -short")
	}
	runHostile(t, 3)
}

// putMany writes n keys prefix%07d with testcluster.Fill.
func putMany(t *testing.T, cli *clientv3.Client, prefix string, n int, opts ...clientv3.OpOption) {
	t.Helper()
	if err := testcluster.Fill(ctxT(t), cli, prefix, n, 4, opts...); err != nil {
		t.Fatal(err)
	}
}

func count(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	r, err := cli.Get(ctxT(t), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return r.Count
}

func runHostile(t *testing.T, stores int) {
	lim := gateway.DefaultLimits()
	lim.MaxRequestBytes = 4 << 20 // room for 128 values of 12 KiB, as an etcd user would set
	c := testcluster.New(t, stores, testcluster.Options{Limits: lim})
	cli := c.Client(t)
	ctx := ctxT(t)

	t.Run("key over the store's limit", func(t *testing.T) {
		long := strings.Repeat("k", 65001)
		_, err := cli.Put(ctx, long, "v")
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "etcdserver: key is too large") {
			t.Fatalf("put of a 65001-byte key: %v", err)
		}
		_, err = cli.Txn(ctx).Then(clientv3.OpTxn(nil, nil, []clientv3.Op{clientv3.OpPut(long, "v")})).Commit()
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("nested put of a 65001-byte key: %v", err)
		}
		atLimit := strings.Repeat("k", limits.MaxKeyBytes)
		mustPut(t, cli, atLimit, "v")
		if g, err := cli.Get(ctx, atLimit); err != nil || len(g.Kvs) != 1 {
			t.Fatalf("key at the limit: %v", err)
		}
	})

	const manyKeys = 120000 // about ten Badger transactions in one entry
	t.Run("delete of many keys in one request", func(t *testing.T) {
		putMany(t, cli, "/events/", manyKeys)
		r, err := cli.Delete(ctx, "/events/", clientv3.WithPrefix())
		if err != nil || r.Deleted != manyKeys {
			t.Fatalf("delete --prefix: %v deleted, %v", r, err)
		}
		if n := count(t, cli, "/events/"); n != 0 {
			t.Fatalf("%d keys left", n)
		}
	})

	t.Run("revoke of a lease with many keys", func(t *testing.T) {
		lease, err := cli.Grant(ctx, 600)
		if err != nil {
			t.Fatal(err)
		}
		putMany(t, cli, "/leased/", 60000, clientv3.WithLease(lease.ID))
		if _, err := cli.Revoke(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
		if n := count(t, cli, "/leased/"); n != 0 {
			t.Fatalf("%d leased keys left after the revoke", n)
		}
	})

	t.Run("big and deep txns", func(t *testing.T) {
		var ops []clientv3.Op
		for i := 0; i < 128; i++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/big/%03d", i), strings.Repeat("x", 12<<10)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("128 puts of 12 KiB: %v", err)
		}
		// etcd's op budget shrinks by each level's ops: 128 levels of one
		// op each is the deepest txn it accepts.
		nested := clientv3.OpPut("/deep/leaf", "v")
		for i := 0; i < 127; i++ { // with the outer txn: 128 levels
			nested = clientv3.OpTxn(nil, []clientv3.Op{nested}, nil)
		}
		if _, err := cli.Txn(ctx).Then(nested).Commit(); err != nil {
			t.Fatalf("128 nested levels: %v", err)
		}
		if n := count(t, cli, "/deep/"); n != 1 {
			t.Fatalf("nested txn wrote %d keys, want 1", n)
		}
		if _, err := cli.Txn(ctx).Then(clientv3.OpTxn(nil, []clientv3.Op{nested}, nil)).Commit(); !errors.Is(err, rpctypes.ErrTooManyOps) {
			t.Fatalf("129 nested levels: %v, want etcd's too many ops", err)
		}
	})

	t.Run("etcd's answers", func(t *testing.T) {
		mustPut(t, cli, "/ans/a", "1")
		mustPut(t, cli, "/ans/b", "2")
		// range_end at or below key: no keys, as etcd (not an error).
		for _, end := range []string{"/ans/a", "/ans/", "\x01"} {
			r, err := cli.Get(ctx, "/ans/b", clientv3.WithRange(end))
			if err != nil || len(r.Kvs) != 0 || r.Count != 0 || r.Header.Revision == 0 {
				t.Fatalf("range [/ans/b, %q): %v, %v", end, r, err)
			}
		}
		// A negative limit is no limit.
		r, err := cli.Get(ctx, "/ans/", clientv3.WithPrefix(), clientv3.WithLimit(-3))
		if err != nil || len(r.Kvs) != 2 || r.More {
			t.Fatalf("negative limit: %v, %v", r, err)
		}
		// TimeToLive of an unknown or revoked lease: TTL -1, no error.
		ttl, err := cli.TimeToLive(ctx, 0x7fff1234)
		if err != nil || ttl.TTL != -1 || ttl.ID != 0x7fff1234 {
			t.Fatalf("timetolive of an unknown lease: %v, %v", ttl, err)
		}
		lease, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Revoke(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
		if ttl, err := cli.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys()); err != nil || ttl.TTL != -1 {
			t.Fatalf("timetolive of a revoked lease: %v, %v", ttl, err)
		}
		// Other lease calls on an unknown lease keep etcd's error.
		if _, err := cli.Revoke(ctx, 0x7fff1234); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Fatalf("revoke of an unknown lease: %v", err)
		}
	})

	t.Run("restart of every store finds everything", func(t *testing.T) {
		mustPut(t, cli, "/last", "x")
		before := count(t, cli, "/")
		for i := 0; i < stores; i++ {
			c.StopReplica(i)
		}
		for i := 0; i < stores; i++ {
			c.StartReplica(i)
		}
		c.WaitReady()
		if n := count(t, cli, "/"); n != before {
			t.Fatalf("%d keys under / after a restart, %d before", n, before)
		}
		if n := count(t, cli, "/big/"); n != 128 {
			t.Fatalf("%d big keys after a restart", n)
		}
		mustPut(t, cli, "/after-restart", "x")
	})
}
