package keyspan

import (
	"math/rand"
	"testing"
)

// Covers answers like a check of every key of a finite universe that holds
// every span end and every key just past one, which is exact here: the
// first uncovered key of a span is its start or the end of some interval.
func TestSetCoversMatchesKeyByKey(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	alphabet := []byte{0, 'a', 'b', 'c'}
	var universe [][]byte
	var grow func(prefix []byte)
	grow = func(prefix []byte) {
		if len(prefix) > 0 {
			universe = append(universe, prefix)
		}
		if len(prefix) == 3 {
			return
		}
		for _, c := range alphabet {
			grow(append(append([]byte(nil), prefix...), c))
		}
	}
	grow(nil)
	key := func() []byte {
		k := []byte{"abc"[rng.Intn(3)]}
		if rng.Intn(2) == 0 {
			k = append(k, "abc"[rng.Intn(3)])
		}
		return k
	}
	span := func() Span {
		switch rng.Intn(4) {
		case 0:
			return Span{Key: key()}
		case 1:
			return Span{Key: key(), End: []byte{}}
		default:
			return Span{Key: key(), End: key()}
		}
	}
	for round := 0; round < 2000; round++ {
		spans := make([]Span, rng.Intn(5))
		for i := range spans {
			spans[i] = span()
		}
		set := NewSet(spans...)
		want := span()
		probe := want
		if probe.Empty() {
			probe = Span{Key: want.Key}
		}
		covered := true
		for _, k := range universe {
			if !probe.Contains(k) {
				continue
			}
			in := false
			for _, s := range spans {
				in = in || s.Contains(k)
			}
			if !in {
				covered = false
				break
			}
		}
		if got := set.Covers(want); got != covered {
			t.Fatalf("spans %q: Covers(%q) = %v, want %v", spans, want, got, covered)
		}
	}
}

func TestSetMerges(t *testing.T) {
	s := NewSet(Span{Key: []byte("a"), End: []byte("c")}, Span{Key: []byte("b"), End: []byte("d")}, Span{Key: []byte("d")}, Span{Key: []byte("x"), End: []byte{}})
	if s.Len() != 2 {
		t.Fatalf("%d intervals, want 2 ([a, d\\x00) and [x, end))", s.Len())
	}
	if !s.Covers(Span{Key: []byte("a"), End: []byte("d\x00")}) || s.Covers(Span{Key: []byte("a"), End: []byte("d\x01")}) {
		t.Error("merged range")
	}
	if !s.Covers(Span{Key: []byte("zzz"), End: []byte{}}) || s.Covers(Span{Key: []byte("e")}) {
		t.Error("open range")
	}
	if NewSet().Covers(Span{Key: []byte("a")}) {
		t.Error("empty set covers a key")
	}
}
