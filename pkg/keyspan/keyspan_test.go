package keyspan

import "testing"

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		span       Span
		start, end string
		want       Span
		ok         bool
	}{
		{Span{Key: []byte("a"), End: []byte("z")}, "c", "m", Span{Key: []byte("c"), End: []byte("m")}, true},
		{Span{Key: []byte("d"), End: []byte("f")}, "c", "m", Span{Key: []byte("d"), End: []byte("f")}, true},
		{Span{Key: []byte("a"), End: []byte{}}, "c", "m", Span{Key: []byte("c"), End: []byte("m")}, true},
		{Span{Key: []byte("a"), End: []byte{}}, "c", "", Span{Key: []byte("c"), End: []byte{}}, true},
		{Span{Key: []byte("a"), End: []byte("c")}, "c", "m", Span{Key: []byte("c"), End: []byte("c")}, false},
		{Span{Key: []byte("n"), End: []byte("q")}, "c", "m", Span{Key: []byte("n"), End: []byte("m")}, false},
		{Span{Key: []byte("e")}, "c", "m", Span{Key: []byte("e")}, true},
		{Span{Key: []byte("m")}, "c", "m", Span{Key: []byte("m")}, false},
		{Span{Key: []byte("z")}, "c", "", Span{Key: []byte("z")}, true},
	} {
		got, ok := tc.span.Clip([]byte(tc.start), []byte(tc.end))
		if ok != tc.ok || string(got.Key) != string(tc.want.Key) || string(got.End) != string(tc.want.End) || (got.End == nil) != (tc.want.End == nil) {
			t.Errorf("%q clipped to [%q, %q) = %q, %v; want %q, %v", tc.span, tc.start, tc.end, got, ok, tc.want, tc.ok)
		}
	}
}
