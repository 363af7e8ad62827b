package etcdcompat

import (
	"fmt"
	"math/rand"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// randomOp picks one request, described for failure messages.
func (p *pair) randomOp(rng *rand.Rand) (string, opMaker) {
	switch n := rng.Intn(100); {
	case n < 30:
		return p.randomPut(rng, false)
	case n < 55:
		return p.randomGet(rng)
	case n < 70:
		return p.randomDelete(rng)
	default:
		return p.randomTxn(rng, 0)
	}
}

func (p *pair) key(rng *rand.Rand) string { return p.keys[rng.Intn(len(p.keys))] }

// revision picks an etcd revision a request may name: a known one (some
// compacted), the current one, a future one, or 0.
func (p *pair) revision(rng *rand.Rand) int64 {
	switch rng.Intn(6) {
	case 0:
		return 0
	case 1:
		return p.revs.eCur + 1 + int64(rng.Intn(3))
	default:
		return p.revs.known[rng.Intn(len(p.revs.known))]
	}
}

// randomPut makes a put. Inside a txn it never ignores the value or the
// lease: etcd v3.7.3 checks that such a put's key exists against the state
// before the txn, and its apply panics (and takes the process down) when an
// earlier op of the same txn deleted the key.
func (p *pair) randomPut(rng *rand.Rand, inTxn bool) (string, opMaker) {
	k, v := p.key(rng), fmt.Sprintf("v%d", rng.Intn(1000))
	var opts []clientv3.OpOption
	desc := fmt.Sprintf("put %q=%q", k, v)
	if rng.Intn(2) == 0 {
		opts = append(opts, clientv3.WithPrevKV())
		desc += " prev_kv"
	}
	switch n := rng.Intn(12); {
	case n == 0 && !inTxn:
		opts, v, desc = append(opts, clientv3.WithIgnoreValue()), "", desc+" ignore_value"
	case n == 1 && !inTxn:
		opts, desc = append(opts, clientv3.WithIgnoreLease()), desc+" ignore_lease"
	case n == 2:
		k, desc = "", desc+" empty key"
	}
	return desc, func(func(int64) int64) clientv3.Op { return clientv3.OpPut(k, v, opts...) }
}

// rangeOpts picks a key range: a key, a prefix, [a, b) (sometimes with b at
// or below a), or from a key.
func (p *pair) rangeOpts(rng *rand.Rand) (string, string, []clientv3.OpOption) {
	k := p.key(rng)
	switch rng.Intn(5) {
	case 0:
		return fmt.Sprintf("%q", k), k, nil
	case 1:
		return fmt.Sprintf("prefix %q", k), k, []clientv3.OpOption{clientv3.WithPrefix()}
	case 2:
		return fmt.Sprintf("from %q", k), k, []clientv3.OpOption{clientv3.WithFromKey()}
	default:
		end := p.key(rng)
		return fmt.Sprintf("[%q, %q)", k, end), k, []clientv3.OpOption{clientv3.WithRange(end)}
	}
}

func (p *pair) randomGet(rng *rand.Rand) (string, opMaker) {
	desc, k, opts := p.rangeOpts(rng)
	desc = "get " + desc
	if rng.Intn(3) == 0 {
		l := int64(rng.Intn(5) - 1)
		opts, desc = append(opts, clientv3.WithLimit(l)), desc+fmt.Sprintf(" limit %d", l)
	}
	if rng.Intn(4) == 0 {
		targets := []clientv3.SortTarget{clientv3.SortByKey, clientv3.SortByVersion, clientv3.SortByCreateRevision, clientv3.SortByModRevision, clientv3.SortByValue}
		orders := []clientv3.SortOrder{clientv3.SortNone, clientv3.SortAscend, clientv3.SortDescend}
		tg, o := targets[rng.Intn(len(targets))], orders[rng.Intn(len(orders))]
		opts, desc = append(opts, clientv3.WithSort(tg, o)), desc+fmt.Sprintf(" sort %v %v", tg, o)
	}
	switch rng.Intn(6) {
	case 0:
		opts, desc = append(opts, clientv3.WithCountOnly()), desc+" count_only"
	case 1:
		opts, desc = append(opts, clientv3.WithKeysOnly()), desc+" keys_only"
	case 2:
		opts, desc = append(opts, clientv3.WithSerializable()), desc+" serializable"
	}
	var minMod int64
	if rng.Intn(8) == 0 {
		minMod = p.revs.known[rng.Intn(len(p.revs.known))]
		desc += fmt.Sprintf(" min_mod %d", minMod)
	}
	rev := int64(0)
	if rng.Intn(3) == 0 {
		rev = p.revision(rng)
		desc += fmt.Sprintf(" rev %d", rev)
	}
	return desc, func(tr func(int64) int64) clientv3.Op {
		o := append([]clientv3.OpOption{}, opts...)
		if rev != 0 {
			o = append(o, clientv3.WithRev(tr(rev)))
		}
		if minMod != 0 {
			o = append(o, clientv3.WithMinModRev(tr(minMod)))
		}
		return clientv3.OpGet(k, o...)
	}
}

func (p *pair) randomDelete(rng *rand.Rand) (string, opMaker) {
	desc, k, opts := p.rangeOpts(rng)
	desc = "delete " + desc
	if rng.Intn(2) == 0 {
		opts, desc = append(opts, clientv3.WithPrevKV()), desc+" prev_kv"
	}
	return desc, func(func(int64) int64) clientv3.Op { return clientv3.OpDelete(k, opts...) }
}

// randomTxn builds a txn of compares and ops, sometimes nested, sometimes
// with the same key put twice (etcd's duplicate-key error).
func (p *pair) randomTxn(rng *rand.Rand, depth int) (string, opMaker) {
	type cmpMaker func(tr func(int64) int64) clientv3.Cmp
	var cmps []cmpMaker
	desc := "txn("
	for i := rng.Intn(3); i > 0; i-- {
		k := p.key(rng)
		ops := []string{"=", "!=", "<", ">"}
		op := ops[rng.Intn(len(ops))]
		switch rng.Intn(4) {
		case 0:
			v := fmt.Sprintf("v%d", rng.Intn(1000))
			if rng.Intn(2) == 0 {
				v = ""
			}
			cmps = append(cmps, func(func(int64) int64) clientv3.Cmp { return clientv3.Compare(clientv3.Value(k), op, v) })
			desc += fmt.Sprintf("value(%q)%s%q ", k, op, v)
		case 1:
			v := int64(rng.Intn(4))
			cmps = append(cmps, func(func(int64) int64) clientv3.Cmp { return clientv3.Compare(clientv3.Version(k), op, v) })
			desc += fmt.Sprintf("version(%q)%s%d ", k, op, v)
		case 2:
			r := p.revs.known[rng.Intn(len(p.revs.known))]
			cmps = append(cmps, func(tr func(int64) int64) clientv3.Cmp {
				return clientv3.Compare(clientv3.ModRevision(k), op, tr(r))
			})
			desc += fmt.Sprintf("mod(%q)%s%d ", k, op, r)
		default:
			r := p.revs.known[rng.Intn(len(p.revs.known))]
			cmps = append(cmps, func(tr func(int64) int64) clientv3.Cmp {
				return clientv3.Compare(clientv3.CreateRevision(k), op, tr(r))
			})
			desc += fmt.Sprintf("create(%q)%s%d ", k, op, r)
		}
	}
	branch := func(name string) ([]opMaker, string) {
		var out []opMaker
		d := name + "{"
		for i := rng.Intn(4); i > 0; i-- {
			var (
				od string
				mk opMaker
			)
			switch n := rng.Intn(10); {
			case n < 4:
				od, mk = p.randomPut(rng, true)
			case n < 7:
				od, mk = p.randomGet(rng)
			case n < 9:
				od, mk = p.randomDelete(rng)
			default:
				if depth < 2 {
					od, mk = p.randomTxn(rng, depth+1)
				} else {
					od, mk = p.randomGet(rng)
				}
			}
			out = append(out, mk)
			d += od + "; "
		}
		return out, d + "} "
	}
	then, td := branch("then")
	els, ed := branch("else")
	desc += td + ed + ")"
	return desc, func(tr func(int64) int64) clientv3.Op {
		var cs []clientv3.Cmp
		for _, c := range cmps {
			cs = append(cs, c(tr))
		}
		var t, e []clientv3.Op
		for _, o := range then {
			t = append(t, o(tr))
		}
		for _, o := range els {
			e = append(e, o(tr))
		}
		return clientv3.OpTxn(cs, t, e)
	}
}
