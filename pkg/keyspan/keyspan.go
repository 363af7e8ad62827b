// Package keyspan is the key range of etcd's API and an index of ranges
// that answers "which ranges contain this key" in logarithmic time (etcd
// keeps an interval tree for the same questions: watch groups, duplicate
// keys in a txn).
package keyspan

import "bytes"

// Span is the key range [Key, End). A nil End is the single key Key; an
// empty non-nil End is every key from Key on.
type Span struct {
	Key, End []byte
}

// FromRequest reads etcd's encoding of a range: no range_end is the single
// key, "\x00" every key from key on, anything else the end itself.
func FromRequest(key, rangeEnd []byte) Span {
	switch {
	case len(rangeEnd) == 0:
		return Span{Key: key}
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return Span{Key: key, End: []byte{}}
	}
	return Span{Key: key, End: rangeEnd}
}

// Single reports whether the span is one key.
func (s Span) Single() bool { return s.End == nil }

// Open reports whether the span runs to the end of the keyspace.
func (s Span) Open() bool { return s.End != nil && len(s.End) == 0 }

// Contains reports whether k is in the span.
func (s Span) Contains(k []byte) bool {
	switch {
	case s.Single():
		return bytes.Equal(k, s.Key)
	case s.Open():
		return bytes.Compare(k, s.Key) >= 0
	}
	return bytes.Compare(k, s.Key) >= 0 && bytes.Compare(k, s.End) < 0
}

// Empty reports whether no key is in the span (End at or below Key).
func (s Span) Empty() bool {
	return !s.Single() && !s.Open() && bytes.Compare(s.End, s.Key) <= 0
}

// endAbove reports whether the span reaches past k, ignoring where it
// starts: its exclusive end is above k.
func (s Span) endAbove(k []byte) bool {
	switch {
	case s.Single():
		return bytes.Compare(s.Key, k) >= 0
	case s.Open():
		return true
	}
	return bytes.Compare(s.End, k) > 0
}

// compareEnds orders exclusive ends: a single key's end is just past it,
// an open end is the largest.
func compareEnds(a, b Span) int {
	switch {
	case a.Open() && b.Open():
		return 0
	case a.Open():
		return 1
	case b.Open():
		return -1
	}
	ae, be := a.End, b.End
	if a.Single() {
		ae = append(bytes.Clone(a.Key), 0)
	}
	if b.Single() {
		be = append(bytes.Clone(b.Key), 0)
	}
	return bytes.Compare(ae, be)
}

// compare orders spans by Key, then by end.
func compare(a, b Span) int {
	if c := bytes.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return compareEnds(a, b)
}

// Clip intersects the span with a shard's range [start, end) (an empty end
// runs to the end of the keyspace). ok is false when they share no key;
// the span is then empty (or the single key outside the range).
func (s Span) Clip(start, end []byte) (out Span, ok bool) {
	inRange := func(k []byte) bool {
		return bytes.Compare(k, start) >= 0 && (len(end) == 0 || bytes.Compare(k, end) < 0)
	}
	if s.Single() {
		return s, inRange(s.Key)
	}
	out = s
	if bytes.Compare(out.Key, start) < 0 {
		out.Key = start
	}
	if len(end) > 0 && (out.Open() || bytes.Compare(out.End, end) > 0) {
		out.End = end
	}
	return out, !out.Empty()
}
