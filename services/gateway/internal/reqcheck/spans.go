package reqcheck

import "bytes"

// span is a deleted key range [lo, hi); open means to the end of the
// keyspace (hi unused).
type span struct {
	lo, hi []byte
	open   bool
}

// spanOf is the span a DeleteRange covers, as etcd's duplicate check sees
// it: no range_end is the single key; any other range_end is taken
// literally, so "\x00" (every key from key, when the delete runs) makes an
// empty span there. etcd's check misses puts inside a from-key delete, and
// so does this one: a txn etcd accepts is accepted (compared with a real
// etcd in test/etcdcompat).
func spanOf(key, end []byte) span {
	if len(end) == 0 {
		return span{lo: key, hi: append(bytes.Clone(key), 0)}
	}
	return span{lo: key, hi: end}
}

// above reports whether the span reaches past k (hi > k).
func (s span) above(k []byte) bool { return s.open || bytes.Compare(s.hi, k) > 0 }

// spanSet answers "does any span contain k" in O(log n): a treap ordered by
// lo where every node knows the span of its subtree reaching furthest.
// (etcd uses an interval tree for the same check; a linear scan made a txn
// of many deletes and puts quadratic.)
type spanSet struct {
	root *spanNode
	seed uint64
	all  []span
}

type spanNode struct {
	s           span
	prio        uint64
	far         span // the span of this subtree with the largest hi
	left, right *spanNode
}

func furthest(a, b span) span {
	if a.open || (!b.open && bytes.Compare(a.hi, b.hi) >= 0) {
		return a
	}
	return b
}

func (n *spanNode) fix() {
	n.far = n.s
	if n.left != nil {
		n.far = furthest(n.far, n.left.far)
	}
	if n.right != nil {
		n.far = furthest(n.far, n.right.far)
	}
}

// next is a xorshift generator: priorities need only look random, and a
// fixed seed keeps the check deterministic.
func (t *spanSet) next() uint64 {
	if t.seed == 0 {
		t.seed = 0x9e3779b97f4a7c15
	}
	t.seed ^= t.seed << 13
	t.seed ^= t.seed >> 7
	t.seed ^= t.seed << 17
	return t.seed
}

func (t *spanSet) add(s span) {
	t.all = append(t.all, s)
	t.root = t.insert(t.root, &spanNode{s: s, prio: t.next(), far: s})
}

func (t *spanSet) insert(n, x *spanNode) *spanNode {
	if n == nil {
		return x
	}
	if bytes.Compare(x.s.lo, n.s.lo) < 0 {
		n.left = t.insert(n.left, x)
		if n.left.prio > n.prio {
			n = rotateRight(n)
		}
	} else {
		n.right = t.insert(n.right, x)
		if n.right.prio > n.prio {
			n = rotateLeft(n)
		}
	}
	n.fix()
	return n
}

func rotateRight(n *spanNode) *spanNode {
	l := n.left
	n.left, l.right = l.right, n
	n.fix()
	l.fix()
	return l
}

func rotateLeft(n *spanNode) *spanNode {
	r := n.right
	n.right, r.left = r.left, n
	n.fix()
	r.fix()
	return r
}

// has reports whether a span contains k: among the spans starting at or
// before k, whether the one reaching furthest reaches past k.
func (t *spanSet) has(k []byte) bool {
	for n := t.root; n != nil; {
		if bytes.Compare(n.s.lo, k) > 0 {
			n = n.left
			continue
		}
		if n.s.above(k) || (n.left != nil && n.left.far.above(k)) {
			return true
		}
		n = n.right
	}
	return false
}
