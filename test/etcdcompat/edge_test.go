package etcdcompat

import (
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestEdgeCases compares etcd's and Tessera's answers to requests at the
// edges of etcd's rules, one by one.
func TestEdgeCases(t *testing.T) {
	c := testcluster.New(t, 1)
	p := newPair(t, startEtcd(t), c.Client(t))
	nest := func(levels int) clientv3.Op {
		op := clientv3.OpPut("/n/leaf", "v")
		for i := 1; i < levels; i++ {
			op = clientv3.OpTxn(nil, []clientv3.Op{op}, nil)
		}
		return op
	}
	many := func(n int) clientv3.Op {
		var ops []clientv3.Op
		for i := 0; i < n; i++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/m/%d", i), "v"))
		}
		return clientv3.OpTxn(nil, ops, nil)
	}
	same := func(op clientv3.Op) opMaker { return func(func(int64) int64) clientv3.Op { return op } }
	cases := []struct {
		name string
		op   clientv3.Op
	}{
		{"put a", clientv3.OpPut("/a", "1")},
		{"put b", clientv3.OpPut("/b", "2")},
		{"range end below key", clientv3.OpGet("/b", clientv3.WithRange("/a"))},
		{"range end equal to key", clientv3.OpGet("/b", clientv3.WithRange("/b"))},
		{"range end below key, count only", clientv3.OpGet("/b", clientv3.WithRange("/a"), clientv3.WithCountOnly())},
		{"delete with range end below key", clientv3.OpDelete("/b", clientv3.WithRange("/a"))},
		{"negative limit", clientv3.OpGet("/", clientv3.WithPrefix(), clientv3.WithLimit(-1))},
		{"limit 1 of 2", clientv3.OpGet("/", clientv3.WithPrefix(), clientv3.WithLimit(1))},
		{"empty key", clientv3.OpGet("")},
		{"empty put key", clientv3.OpPut("", "v")},
		{"ignore_value on a missing key", clientv3.OpPut("/missing", "", clientv3.WithIgnoreValue())},
		{"ignore_value with a value", clientv3.OpPut("/a", "v", clientv3.WithIgnoreValue())},
		{"128 nested levels", nest(128)},
		{"129 nested levels", nest(129)},
		{"128 ops", many(128)},
		{"129 ops", many(129)},
		{"duplicate put", clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("/d", "1"), clientv3.OpPut("/d", "2")}, nil)},
		{"put inside a deleted range", clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete("/d", clientv3.WithPrefix()), clientv3.OpPut("/d/x", "2")}, nil)},
		{"put inside a from-key delete", clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete("/d", clientv3.WithFromKey()), clientv3.OpPut("/e", "2")}, nil)},
		{"delete twice in one txn", clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete("/", clientv3.WithPrefix()), clientv3.OpDelete("/a")}, nil)},
		{"request over the limit", clientv3.OpPut("/big", strings.Repeat("x", 1536*1024))},
		{"value at the limit's edge", clientv3.OpPut("/big", strings.Repeat("x", 1536*1024-64))},
	}
	for _, tc := range cases {
		p.do(tc.name, same(tc.op))
	}

	// Leases: TimeToLive of an unknown lease is TTL -1 with no error.
	for _, cli := range []*clientv3.Client{p.etcd, p.tess} {
		r, err := cli.TimeToLive(ctx(t), 0x1234)
		if err != nil || r.TTL != -1 {
			t.Errorf("TimeToLive of an unknown lease: %v, %v", r, err)
		}
	}
}
