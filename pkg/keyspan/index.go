package keyspan

import "bytes"

// Index maps distinct spans to values and finds the spans that contain a
// key. Single keys sit in a hash map; ranges in a treap ordered by start,
// where every node knows the furthest end in its subtree, so a lookup
// visits only subtrees that can hold a match: O(log n + matches) expected.
// The zero value is empty and ready. Not safe for concurrent use.
type Index[V any] struct {
	keys map[string]V
	root *node[V]
	n    int
	seed uint64
}

type node[V any] struct {
	span        Span
	val         V
	prio        uint64
	far         Span // the span of this subtree whose end is furthest
	left, right *node[V]
}

// Len is the number of spans.
func (ix *Index[V]) Len() int { return len(ix.keys) + ix.n }

// Insert adds s with value v, replacing the value of an equal span.
func (ix *Index[V]) Insert(s Span, v V) {
	if s.Single() {
		if ix.keys == nil {
			ix.keys = map[string]V{}
		}
		ix.keys[string(s.Key)] = v
		return
	}
	if n := ix.find(s); n != nil {
		n.val = v
		return
	}
	l, r := split(ix.root, s, false)
	ix.root = merge(merge(l, &node[V]{span: s, val: v, prio: ix.next(), far: s}), r)
	ix.n++
}

// Delete removes s; it reports whether s was there.
func (ix *Index[V]) Delete(s Span) bool {
	if s.Single() {
		_, ok := ix.keys[string(s.Key)]
		delete(ix.keys, string(s.Key))
		return ok
	}
	if ix.find(s) == nil {
		return false
	}
	l, r := split(ix.root, s, false) // l < s <= r
	_, r = split(r, s, true)         // drops the node equal to s
	ix.root = merge(l, r)
	ix.n--
	return true
}

// Get returns the value of span s.
func (ix *Index[V]) Get(s Span) (V, bool) {
	if s.Single() {
		v, ok := ix.keys[string(s.Key)]
		return v, ok
	}
	if n := ix.find(s); n != nil {
		return n.val, true
	}
	var zero V
	return zero, false
}

// Stab calls fn for every span that contains k, until fn returns false.
func (ix *Index[V]) Stab(k []byte, fn func(Span, V) bool) {
	if v, ok := ix.keys[string(k)]; ok {
		if !fn(Span{Key: k}, v) {
			return
		}
	}
	stab(ix.root, k, fn)
}

// Any reports whether some span contains k.
func (ix *Index[V]) Any(k []byte) bool {
	found := false
	ix.Stab(k, func(Span, V) bool { found = true; return false })
	return found
}

// Each calls fn for every span (ranges in order, then single keys).
func (ix *Index[V]) Each(fn func(Span, V)) {
	var walk func(*node[V])
	walk = func(n *node[V]) {
		if n == nil {
			return
		}
		walk(n.left)
		fn(n.span, n.val)
		walk(n.right)
	}
	walk(ix.root)
	for k, v := range ix.keys {
		fn(Span{Key: []byte(k)}, v)
	}
}

func stab[V any](n *node[V], k []byte, fn func(Span, V) bool) bool {
	if n == nil || !n.far.endAbove(k) {
		return true // nothing in this subtree reaches k
	}
	if !stab(n.left, k, fn) {
		return false
	}
	if bytes.Compare(n.span.Key, k) > 0 {
		return true // this node and everything right of it start after k
	}
	if n.span.Contains(k) && !fn(n.span, n.val) {
		return false
	}
	return stab(n.right, k, fn)
}

func (ix *Index[V]) find(s Span) *node[V] {
	for n := ix.root; n != nil; {
		switch c := compare(s, n.span); {
		case c < 0:
			n = n.left
		case c > 0:
			n = n.right
		default:
			return n
		}
	}
	return nil
}

// next is a xorshift generator: priorities need only look random, and a
// fixed seed keeps behaviour reproducible.
func (ix *Index[V]) next() uint64 {
	if ix.seed == 0 {
		ix.seed = 0x9e3779b97f4a7c15
	}
	ix.seed ^= ix.seed << 13
	ix.seed ^= ix.seed >> 7
	ix.seed ^= ix.seed << 17
	return ix.seed
}

func (n *node[V]) fix() {
	n.far = n.span
	if n.left != nil && compareEnds(n.left.far, n.far) > 0 {
		n.far = n.left.far
	}
	if n.right != nil && compareEnds(n.right.far, n.far) > 0 {
		n.far = n.right.far
	}
}

// split cuts t into spans below s and the rest; with orEqual, spans equal
// to s go below too.
func split[V any](t *node[V], s Span, orEqual bool) (*node[V], *node[V]) {
	if t == nil {
		return nil, nil
	}
	if c := compare(t.span, s); c < 0 || (orEqual && c == 0) {
		l, r := split(t.right, s, orEqual)
		t.right = l
		t.fix()
		return t, r
	}
	l, r := split(t.left, s, orEqual)
	t.left = r
	t.fix()
	return l, t
}

// merge joins two treaps where every span of a is below every span of b.
func merge[V any](a, b *node[V]) *node[V] {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = merge(a.right, b)
		a.fix()
		return a
	}
	b.left = merge(a, b.left)
	b.fix()
	return b
}
