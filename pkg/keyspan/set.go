package keyspan

import (
	"bytes"
	"slices"
)

// Set is a union of spans, kept as sorted, disjoint, non-adjacent
// intervals, so "is every key of this span in the set" is one binary
// search (etcd answers it for permissions the same way: a user's
// permitted ranges merged, then a containment check).
type Set struct {
	ivs []interval
}

// interval is [start, end); a nil end is the end of the keyspace.
type interval struct{ start, end []byte }

// half turns a span into a half-open interval: a single key k is
// [k, k+"\x00").
func half(s Span) interval {
	switch {
	case s.Single():
		return interval{s.Key, append(bytes.Clone(s.Key), 0)}
	case s.Open():
		return interval{s.Key, nil}
	}
	return interval{s.Key, s.End}
}

// endCompare orders exclusive ends, nil (open) last.
func endCompare(a, b []byte) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return bytes.Compare(a, b)
}

// NewSet is the union of spans; empty spans add nothing.
func NewSet(spans ...Span) *Set {
	ivs := make([]interval, 0, len(spans))
	for _, s := range spans {
		if !s.Empty() {
			ivs = append(ivs, half(s))
		}
	}
	slices.SortFunc(ivs, func(a, b interval) int { return bytes.Compare(a.start, b.start) })
	out := ivs[:0]
	for _, iv := range ivs {
		if n := len(out); n > 0 && (out[n-1].end == nil || bytes.Compare(iv.start, out[n-1].end) <= 0) {
			if endCompare(iv.end, out[n-1].end) > 0 {
				out[n-1].end = iv.end
			}
			continue
		}
		out = append(out, iv)
	}
	return &Set{ivs: out}
}

// Covers reports whether every key of s is in the set. An empty span
// (End at or below Key) is covered if its Key is: it names no key, and
// the check stays conservative.
func (st *Set) Covers(s Span) bool {
	if s.Empty() {
		s = Span{Key: s.Key}
	}
	want := half(s)
	// The last interval starting at or before want.start is the only
	// candidate: intervals are disjoint and sorted.
	i, found := slices.BinarySearchFunc(st.ivs, want.start, func(iv interval, k []byte) int { return bytes.Compare(iv.start, k) })
	if !found {
		i--
	}
	if i < 0 {
		return false
	}
	return endCompare(st.ivs[i].end, want.end) >= 0
}

// Len is the number of disjoint intervals.
func (st *Set) Len() int { return len(st.ivs) }
