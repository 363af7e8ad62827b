package keyspan

import (
	"fmt"
	"math/rand"
	"sort"
	"testing"
)

func TestFromRequest(t *testing.T) {
	for _, tc := range []struct {
		end    string
		single bool
		open   bool
	}{{"", true, false}, {"\x00", false, true}, {"b", false, false}} {
		var end []byte
		if tc.end != "" {
			end = []byte(tc.end)
		}
		s := FromRequest([]byte("a"), end)
		if s.Single() != tc.single || s.Open() != tc.open {
			t.Errorf("end %q: single %v open %v", tc.end, s.Single(), s.Open())
		}
	}
	if !FromRequest([]byte("b"), []byte("a")).Empty() || FromRequest([]byte("a"), nil).Empty() {
		t.Error("Empty")
	}
}

// The index answers like a linear scan through random inserts, deletes and
// lookups.
func TestIndexMatchesLinearScan(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	key := func() []byte { return []byte{byte('a' + rng.Intn(12)), byte('a' + rng.Intn(3))} }
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
	name := func(s Span) string { return fmt.Sprintf("%q/%q/%v", s.Key, s.End, s.End == nil) }
	for round := 0; round < 100; round++ {
		var ix Index[string]
		live := map[string]Span{}
		for step := 0; step < 300; step++ {
			switch rng.Intn(3) {
			case 0, 1:
				s := span()
				ix.Insert(s, name(s))
				live[name(s)] = s
			default:
				s := span()
				_, had := live[name(s)]
				if got := ix.Delete(s); got != had {
					t.Fatalf("Delete(%s) = %v, want %v", name(s), got, had)
				}
				delete(live, name(s))
			}
			if ix.Len() != len(live) {
				t.Fatalf("Len %d, want %d", ix.Len(), len(live))
			}
			k := key()
			var want, got []string
			for n, s := range live {
				if s.Contains(k) {
					want = append(want, n)
				}
			}
			ix.Stab(k, func(s Span, v string) bool {
				if v != name(s) {
					t.Fatalf("value %q for span %s", v, name(s))
				}
				got = append(got, v)
				return true
			})
			sort.Strings(want)
			sort.Strings(got)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("round %d step %d: Stab(%q) = %v, want %v", round, step, k, got, want)
			}
			if ix.Any(k) != (len(want) > 0) {
				t.Fatalf("Any(%q) = %v", k, !(len(want) > 0))
			}
		}
	}
}

// A lookup among many ranges visits few of them (not a timing test: it
// counts the spans the callback sees, which must be exactly the matches).
func TestIndexManyRanges(t *testing.T) {
	var ix Index[int]
	for i := 0; i < 100000; i++ {
		ix.Insert(Span{Key: fmt.Appendf(nil, "/k/%06d", i), End: fmt.Appendf(nil, "/k/%06d\x00", i)}, i)
	}
	n := 0
	ix.Stab([]byte("/k/012345"), func(_ Span, v int) bool { n++; return v == 12345 })
	if n != 1 {
		t.Fatalf("%d matches, want 1", n)
	}
}
