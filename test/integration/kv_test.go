package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustPut(t *testing.T, cli *clientv3.Client, k, v string, opts ...clientv3.OpOption) *clientv3.PutResponse {
	t.Helper()
	r, err := cli.Put(ctxT(t), k, v, opts...)
	if err != nil {
		t.Fatalf("put %q: %v", k, err)
	}
	return r
}

func keysOf(r *clientv3.GetResponse) string {
	var ks []string
	for _, kv := range r.Kvs {
		ks = append(ks, string(kv.Key))
	}
	return strings.Join(ks, ",")
}

// TestKVSingleReplica runs etcd's KV semantics through clientv3 against a
// one-store cluster. Subtests share the cluster and run in order.
func TestKVSingleReplica(t *testing.T) {
	c := testcluster.New(t, 1)
	runKVSuite(t, c)
}

// TestKVThreeReplicas runs the same suite with every shard replicated 3 times.
func TestKVThreeReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("three stores: not in -short")
	}
	c := testcluster.New(t, 3)
	runKVSuite(t, c)
}

func runKVSuite(t *testing.T, c *testcluster.Cluster) {
	cli := c.Client(t)
	ctx := ctxT(t)

	t.Run("put-get-revisions", func(t *testing.T) {
		p1 := mustPut(t, cli, "/a/1", "one")
		p2 := mustPut(t, cli, "/a/1", "uno")
		if p2.Header.Revision != p1.Header.Revision+1 {
			t.Fatalf("consecutive writes got revisions %d, %d", p1.Header.Revision, p2.Header.Revision)
		}
		g, err := cli.Get(ctx, "/a/1")
		if err != nil {
			t.Fatal(err)
		}
		kv := g.Kvs[0]
		if string(kv.Value) != "uno" || kv.Version != 2 || kv.CreateRevision != p1.Header.Revision || kv.ModRevision != p2.Header.Revision {
			t.Fatalf("got %+v", kv)
		}
		if g.Header.Revision != p2.Header.Revision || g.Header.ClusterId == 0 || g.Header.MemberId == 0 || g.Header.RaftTerm == 0 {
			t.Fatalf("header %+v", g.Header)
		}
		old, err := cli.Get(ctx, "/a/1", clientv3.WithRev(p1.Header.Revision))
		if err != nil || string(old.Kvs[0].Value) != "one" {
			t.Fatalf("historical read: %v %+v", err, old)
		}
	})

	t.Run("ranges", func(t *testing.T) {
		for _, k := range []string{"/r/a", "/r/b", "/r/c", "/r/d", "/s/x"} {
			mustPut(t, cli, k, "v"+k)
		}
		g, err := cli.Get(ctx, "/r/", clientv3.WithPrefix())
		if err != nil || keysOf(g) != "/r/a,/r/b,/r/c,/r/d" || g.Count != 4 || g.More {
			t.Fatalf("prefix: %v %q count=%d more=%v", err, keysOf(g), g.Count, g.More)
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithLimit(2))
		if err != nil || keysOf(g) != "/r/a,/r/b" || g.Count != 4 || !g.More {
			t.Fatalf("limit: %v %q count=%d more=%v", err, keysOf(g), g.Count, g.More)
		}
		g, err = cli.Get(ctx, "/r/c", clientv3.WithFromKey())
		if err != nil || !strings.HasPrefix(keysOf(g), "/r/c,/r/d,/s/x") {
			t.Fatalf("from key: %v %q", err, keysOf(g))
		}
		g, err = cli.Get(ctx, "/r/b", clientv3.WithRange("/r/d"))
		if err != nil || keysOf(g) != "/r/b,/r/c" {
			t.Fatalf("range: %v %q", err, keysOf(g))
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(3))
		if err != nil || keysOf(g) != "/r/d,/r/c,/r/b" || !g.More {
			t.Fatalf("sort desc: %v %q", err, keysOf(g))
		}
		mustPut(t, cli, "/r/a", "zzz") // newest mod revision
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend))
		if err != nil || !strings.HasPrefix(keysOf(g), "/r/a,/r/d") {
			t.Fatalf("sort by mod: %v %q", err, keysOf(g))
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByValue, clientv3.SortAscend))
		if err != nil || keysOf(g) != "/r/b,/r/c,/r/d,/r/a" {
			t.Fatalf("sort by value: %v %q", err, keysOf(g))
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil || len(g.Kvs) != 4 || g.Kvs[0].Value != nil || g.Kvs[0].ModRevision == 0 {
			t.Fatalf("keys only: %v %+v", err, g.Kvs)
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || len(g.Kvs) != 0 || g.Count != 4 {
			t.Fatalf("count only: %v %+v", err, g)
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithSerializable())
		if err != nil || g.Count != 4 {
			t.Fatalf("serializable: %v %+v", err, g)
		}
		all, _ := cli.Get(ctx, "/r/", clientv3.WithPrefix())
		minMod := all.Kvs[3].ModRevision // /r/d
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithMinModRev(minMod))
		if err != nil || keysOf(g) != "/r/a,/r/d" || g.Count != 4 {
			t.Fatalf("min mod rev: %v %q count=%d", err, keysOf(g), g.Count)
		}
		g, err = cli.Get(ctx, "/r/", clientv3.WithPrefix(), clientv3.WithMaxCreateRev(all.Kvs[1].CreateRevision))
		if err != nil || keysOf(g) != "/r/a,/r/b" {
			t.Fatalf("max create rev: %v %q", err, keysOf(g))
		}
		g, err = cli.Get(ctx, "/nothing/here")
		if err != nil || len(g.Kvs) != 0 || g.Count != 0 {
			t.Fatalf("missing key: %v %+v", err, g)
		}
	})

	t.Run("put-options", func(t *testing.T) {
		mustPut(t, cli, "/p/k", "v1")
		r := mustPut(t, cli, "/p/k", "v2", clientv3.WithPrevKV())
		if r.PrevKv == nil || string(r.PrevKv.Value) != "v1" {
			t.Fatalf("prev kv: %+v", r.PrevKv)
		}
		mustPut(t, cli, "/p/k", "", clientv3.WithIgnoreValue())
		g, _ := cli.Get(ctx, "/p/k")
		if string(g.Kvs[0].Value) != "v2" || g.Kvs[0].Version != 3 {
			t.Fatalf("ignore value: %+v", g.Kvs[0])
		}
		mustPut(t, cli, "/p/k", "v3", clientv3.WithIgnoreLease())
		before, _ := cli.Get(ctx, "/p/k")
		if _, err := cli.Put(ctx, "/p/missing", "", clientv3.WithIgnoreValue()); !errors.Is(err, rpctypes.ErrKeyNotFound) {
			t.Fatalf("ignore value on missing key: %v", err)
		}
		if _, err := cli.Put(ctx, "/p/k", "x", clientv3.WithIgnoreValue()); !errors.Is(err, rpctypes.ErrValueProvided) {
			t.Fatalf("value with ignore value: %v", err)
		}
		if _, err := cli.Put(ctx, "/p/k", "x", clientv3.WithLease(12345)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Fatalf("unknown lease: %v", err)
		}
		after, _ := cli.Get(ctx, "/p/k")
		if after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
			t.Fatalf("rejected puts changed the key: %+v -> %+v", before.Kvs[0], after.Kvs[0])
		}
		if _, err := cli.Put(ctx, "", "v"); !errors.Is(err, rpctypes.ErrEmptyKey) {
			t.Fatalf("empty key: %v", err)
		}
	})

	t.Run("delete", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			mustPut(t, cli, fmt.Sprintf("/d/%d", i), "v")
		}
		d, err := cli.Delete(ctx, "/d/1", clientv3.WithRange("/d/3"), clientv3.WithPrevKV())
		if err != nil || d.Deleted != 2 || len(d.PrevKvs) != 2 || string(d.PrevKvs[0].Key) != "/d/1" {
			t.Fatalf("delete range: %v %+v", err, d)
		}
		d, err = cli.Delete(ctx, "/d/", clientv3.WithPrefix())
		if err != nil || d.Deleted != 3 {
			t.Fatalf("delete prefix: %v %+v", err, d)
		}
		d, err = cli.Delete(ctx, "/d/none")
		if err != nil || d.Deleted != 0 {
			t.Fatalf("delete missing: %v %+v", err, d)
		}
		// A deleted key starts a new life: version 1, new create revision.
		p := mustPut(t, cli, "/d/0", "again")
		g, _ := cli.Get(ctx, "/d/0")
		if g.Kvs[0].Version != 1 || g.Kvs[0].CreateRevision != p.Header.Revision {
			t.Fatalf("recreated: %+v", g.Kvs[0])
		}
	})

	t.Run("txn", func(t *testing.T) {
		p := mustPut(t, cli, "/t/k", "v0")
		rev := p.Header.Revision
		cmps := []struct {
			name string
			cmp  clientv3.Cmp
			want bool
		}{
			{"value-eq", clientv3.Compare(clientv3.Value("/t/k"), "=", "v0"), true},
			{"value-gt", clientv3.Compare(clientv3.Value("/t/k"), ">", "v"), true},
			{"value-missing", clientv3.Compare(clientv3.Value("/t/none"), "=", ""), false},
			{"version-eq", clientv3.Compare(clientv3.Version("/t/k"), "=", 1), true},
			{"version-missing-zero", clientv3.Compare(clientv3.Version("/t/none"), "=", 0), true},
			{"create-eq", clientv3.Compare(clientv3.CreateRevision("/t/k"), "=", rev), true},
			{"mod-lt", clientv3.Compare(clientv3.ModRevision("/t/k"), "<", rev), false},
			{"mod-ne", clientv3.Compare(clientv3.ModRevision("/t/k"), "!=", rev+100), true},
			{"lease-eq", clientv3.Compare(clientv3.LeaseValue("/t/k"), "=", 0), true},
			{"range-version", clientv3.Compare(clientv3.Version("/t/").WithPrefix(), ">", 0), true},
		}
		for _, tc := range cmps {
			r, err := cli.Txn(ctx).If(tc.cmp).Then(clientv3.OpGet("/t/k")).Else(clientv3.OpGet("/t/none")).Commit()
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if r.Succeeded != tc.want {
				t.Errorf("%s: succeeded=%v want %v", tc.name, r.Succeeded, tc.want)
			}
		}
		// Kubernetes-style CAS: all changes at one revision.
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/t/k"), "=", rev)).
			Then(clientv3.OpPut("/t/k", "v1"), clientv3.OpPut("/t/k2", "w"), clientv3.OpGet("/t/k")).
			Else(clientv3.OpGet("/t/k")).Commit()
		if err != nil || !r.Succeeded {
			t.Fatalf("cas: %v %+v", err, r)
		}
		inner := r.Responses[2].GetResponseRange()
		if string(inner.Kvs[0].Value) != "v1" {
			t.Fatalf("read in txn does not see its own write: %+v", inner.Kvs)
		}
		g, _ := cli.Get(ctx, "/t/", clientv3.WithPrefix())
		for _, kv := range g.Kvs {
			if kv.ModRevision != r.Header.Revision {
				t.Fatalf("txn writes at different revisions: %+v (txn %d)", kv, r.Header.Revision)
			}
		}
		// The stale CAS fails and returns the current value.
		r, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/t/k"), "=", rev)).
			Then(clientv3.OpPut("/t/k", "lost")).Else(clientv3.OpGet("/t/k")).Commit()
		if err != nil || r.Succeeded || string(r.Responses[0].GetResponseRange().Kvs[0].Value) != "v1" {
			t.Fatalf("stale cas: %v %+v", err, r)
		}
		// Nested txn.
		r, err = cli.Txn(ctx).Then(clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value("/t/k"), "=", "v1")},
			[]clientv3.Op{clientv3.OpPut("/t/nested", "yes")},
			[]clientv3.Op{clientv3.OpPut("/t/nested", "no")})).Commit()
		if err != nil || !r.Responses[0].GetResponseTxn().Succeeded {
			t.Fatalf("nested: %v %+v", err, r)
		}
		g, _ = cli.Get(ctx, "/t/nested")
		if string(g.Kvs[0].Value) != "yes" {
			t.Fatalf("nested put: %+v", g.Kvs)
		}
	})

	t.Run("writes-that-change-nothing-keep-the-revision", func(t *testing.T) {
		cur := mustPut(t, cli, "/same/k", "v").Header.Revision
		failed, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("/same/k"), "=", "other")).
			Then(clientv3.OpPut("/same/k", "x")).Commit()
		if err != nil || failed.Succeeded || failed.Header.Revision != cur {
			t.Fatalf("failed compare: %+v %v; want header revision %d", failed, err, cur)
		}
		del, err := cli.Delete(ctx, "/same/none")
		if err != nil || del.Deleted != 0 || del.Header.Revision != cur {
			t.Fatalf("empty delete: %+v %v", del, err)
		}
		if _, err := cli.Compact(ctx, cur); err != nil {
			t.Fatal(err)
		}
		got, err := cli.Get(ctx, "/same/k")
		if err != nil || got.Header.Revision != cur {
			t.Fatalf("after a failed compare, an empty delete and a compaction: revision %d, want %d (%v)", got.Header.Revision, cur, err)
		}
		if _, err := cli.Get(ctx, "/same/k", clientv3.WithRev(cur+1)); !errors.Is(err, rpctypes.ErrFutureRev) {
			t.Fatalf("read above the current revision: %v", err)
		}
		if next := mustPut(t, cli, "/same/k", "w").Header.Revision; next <= cur {
			t.Fatalf("next write at %d, not above %d", next, cur)
		}
	})

	t.Run("txn-errors", func(t *testing.T) {
		before, _ := cli.Get(ctx, "/t/k")
		_, err := cli.Txn(ctx).Then(clientv3.OpPut("/t/k", "a"), clientv3.OpPut("/t/k", "b")).Commit()
		if !errors.Is(err, rpctypes.ErrDuplicateKey) {
			t.Fatalf("duplicate put: %v", err)
		}
		_, err = cli.Txn(ctx).Then(clientv3.OpDelete("/t/", clientv3.WithPrefix()), clientv3.OpPut("/t/k", "b")).Commit()
		if !errors.Is(err, rpctypes.ErrDuplicateKey) {
			t.Fatalf("put inside deleted range: %v", err)
		}
		var ops []clientv3.Op
		for i := 0; i < 129; i++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/t/many/%d", i), "v"))
		}
		if _, err = cli.Txn(ctx).Then(ops...).Commit(); !errors.Is(err, rpctypes.ErrTooManyOps) {
			t.Fatalf("too many ops: %v", err)
		}
		_, err = cli.Txn(ctx).Then(clientv3.OpPut("/t/k", "x"), clientv3.OpGet("/t/k", clientv3.WithRev(before.Header.Revision+1000))).Commit()
		if !errors.Is(err, rpctypes.ErrFutureRev) {
			t.Fatalf("future rev in txn: %v", err)
		}
		after, _ := cli.Get(ctx, "/t/k")
		if after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
			t.Fatalf("a rejected txn changed data")
		}
	})

	t.Run("limits", func(t *testing.T) {
		big := strings.Repeat("x", 1536*1024+10)
		if _, err := cli.Put(ctx, "/big", big); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
			t.Fatalf("oversized put: %v", err)
		}
		if g, _ := cli.Get(ctx, "/big"); len(g.Kvs) != 0 {
			t.Fatal("oversized put was stored")
		}
		okVal := strings.Repeat("y", 1024*1024)
		mustPut(t, cli, "/big", okVal)
		g, err := cli.Get(ctx, "/big")
		if err != nil || len(g.Kvs[0].Value) != len(okVal) {
			t.Fatalf("1 MiB value: %v", err)
		}
	})

	t.Run("future-revision", func(t *testing.T) {
		g, _ := cli.Get(ctx, "/")
		if _, err := cli.Get(ctx, "/a/1", clientv3.WithRev(g.Header.Revision+10)); !errors.Is(err, rpctypes.ErrFutureRev) {
			t.Fatalf("future read: %v", err)
		}
	})

	t.Run("compaction", func(t *testing.T) {
		p1 := mustPut(t, cli, "/c/k", "1")
		p2 := mustPut(t, cli, "/c/k", "2")
		mustPut(t, cli, "/c/k", "3")
		if _, err := cli.Compact(ctx, p2.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Get(ctx, "/c/k", clientv3.WithRev(p1.Header.Revision)); !errors.Is(err, rpctypes.ErrCompacted) {
			t.Fatalf("read below compaction: %v", err)
		}
		g, err := cli.Get(ctx, "/c/k", clientv3.WithRev(p2.Header.Revision))
		if err != nil || string(g.Kvs[0].Value) != "2" {
			t.Fatalf("read at compaction revision: %v %+v", err, g)
		}
		if _, err := cli.Compact(ctx, p1.Header.Revision); !errors.Is(err, rpctypes.ErrCompacted) {
			t.Fatalf("compact below compaction: %v", err)
		}
		cur, _ := cli.Get(ctx, "/c/k")
		if _, err := cli.Compact(ctx, cur.Header.Revision+100); !errors.Is(err, rpctypes.ErrFutureRev) {
			t.Fatalf("compact in the future: %v", err)
		}
		if string(cur.Kvs[0].Value) != "3" {
			t.Fatalf("latest after compaction: %+v", cur.Kvs)
		}
	})

	t.Run("status", func(t *testing.T) {
		st, err := cli.Status(ctx, c.Endpoints()[0])
		if err != nil || st.Version == "" || st.RaftIndex == 0 {
			t.Fatalf("status: %v %+v", err, st)
		}
	})
}
