// Package history records what clients of an etcd-compatible store saw and
// checks it: KV histories for linearizability with porcupine under etcd's
// model (and Tessera's revision rule), watch streams for order, gaps,
// duplicates and progress.
package history

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"

	"github.com/anishathalye/porcupine"
)

// OpKind is what a KV operation did.
type OpKind int

const (
	// Get reads one key.
	Get OpKind = iota
	// Put writes one key.
	Put
	// CAS puts Value if the key's mod revision is ExpectMod (0: the key
	// does not exist), as kube-apiserver's updates do.
	CAS
	// Delete deletes one key.
	Delete
	// Range reads every key under a prefix.
	Range
)

func (k OpKind) String() string {
	return [...]string{"get", "put", "cas", "delete", "range"}[k]
}

// Input is an operation as the client issued it.
type Input struct {
	Kind      OpKind
	Key       string // the key, or the prefix of a Range
	Value     string // Put and CAS
	ExpectMod int64  // CAS
}

// KV is one key as a read saw it.
type KV struct {
	Key, Value string
	ModRev     int64
	// above is, in the model, the revision an unknown ModRev (-1) is
	// known to be above: the current one when the write may have happened.
	above int64
}

// Output is what the client got back. Unknown marks an operation whose
// outcome the client never learned (a timeout, a lost connection): it may
// or may not have taken effect, at any time after it was issued.
type Output struct {
	Unknown bool
	// Rev is the response header's revision.
	Rev int64
	// Found, Value and ModRev answer a Get.
	Found  bool
	Value  string
	ModRev int64
	// KVs answers a Range, in key order.
	KVs []KV
	// Succeeded answers a CAS; Deleted a Delete.
	Succeeded bool
	Deleted   int64
}

// state is the store as the model sees it: every key's value and mod
// revision, and the current revision. A write that took effect with an
// unknown outcome leaves revisions the model has not learned yet (marked
// -1 until a read shows them); floor is then the revision every later
// change is above.
type state struct {
	kvs   map[string]KV
	rev   int64 // -1: unknown, above floor
	floor int64
}

func (s state) clone() state {
	return state{kvs: maps.Clone(s.kvs), rev: s.rev, floor: s.floor}
}

// revOK reports whether a header revision r can be the current revision.
func (s state) revOK(r int64) bool {
	if s.rev >= 0 {
		return r == s.rev
	}
	return r > s.floor
}

// learn fixes an unknown current revision once a response shows it.
func (s *state) learn(r int64) {
	if s.rev < 0 {
		s.rev, s.floor = r, r
	}
}

// modOK reports whether a read's mod revision matches the model's.
func (s state) modOK(want KV, got int64) bool {
	if want.ModRev >= 0 {
		return got == want.ModRev
	}
	return got > want.above
}

// newRev checks the header revision r of a write that changed a key: above
// every revision before it (Tessera's revisions may skip values, never go
// back; etcd's are consecutive, which this also accepts).
func (s state) newRev(r int64) bool {
	if s.rev >= 0 {
		return r > s.rev
	}
	return r > s.floor
}

// KVModel is etcd's KV semantics for porcupine. Reads and writes that do not
// change a key leave the revision where it was; a write that changes keys
// moves it up (by any amount: the revision rule). The model is
// nondeterministic only for operations with an unknown outcome: they either
// never happened, or happened at a revision it learns later.
var KVModel = ModelFrom(1)

// ModelFrom is KVModel for a history that starts at revision rev (other
// keys were written before; the history's keys were not).
func ModelFrom(rev int64) porcupine.NondeterministicModel {
	m := kvModel
	m.Init = func() []interface{} {
		return []interface{}{state{kvs: map[string]KV{}, rev: rev, floor: rev}}
	}
	return m
}

var kvModel = porcupine.NondeterministicModel{
	Step: func(st, in, out interface{}) []interface{} {
		s, i, o := st.(state), in.(Input), out.(Output)
		if o.Unknown {
			next := []interface{}{s} // never happened
			if applied, ok := applyUnknown(s, i); ok {
				next = append(next, applied)
			}
			return next
		}
		if next, ok := step(s, i, o); ok {
			return []interface{}{next}
		}
		return nil
	},
	Equal: func(a, b interface{}) bool {
		x, y := a.(state), b.(state)
		return x.rev == y.rev && x.floor == y.floor && maps.Equal(x.kvs, y.kvs)
	},
	Hash: func(st interface{}) uint64 {
		s := st.(state)
		h := fnv.New64a()
		fmt.Fprintf(h, "%d/%d", s.rev, s.floor)
		for _, k := range slices.Sorted(maps.Keys(s.kvs)) {
			kv := s.kvs[k]
			fmt.Fprintf(h, "|%s=%s@%d", k, kv.Value, kv.ModRev)
		}
		return h.Sum64()
	},
	DescribeOperation: func(in, out interface{}) string {
		i, o := in.(Input), out.(Output)
		if o.Unknown {
			return fmt.Sprintf("%s(%q) -> unknown", i.Kind, i.Key)
		}
		switch i.Kind {
		case Get:
			return fmt.Sprintf("get(%q) -> %q found=%v mod=%d @%d", i.Key, o.Value, o.Found, o.ModRev, o.Rev)
		case Put:
			return fmt.Sprintf("put(%q, %q) @%d", i.Key, i.Value, o.Rev)
		case CAS:
			return fmt.Sprintf("cas(%q, mod=%d, %q) -> %v @%d", i.Key, i.ExpectMod, i.Value, o.Succeeded, o.Rev)
		case Delete:
			return fmt.Sprintf("delete(%q) -> %d @%d", i.Key, o.Deleted, o.Rev)
		}
		var b strings.Builder
		for _, kv := range o.KVs {
			fmt.Fprintf(&b, "%s=%s@%d ", kv.Key, kv.Value, kv.ModRev)
		}
		return fmt.Sprintf("range(%q) -> [%s] @%d", i.Key, strings.TrimSpace(b.String()), o.Rev)
	},
}

// step applies an operation with a known outcome, or reports that the
// outcome is impossible in state s.
func step(s state, i Input, o Output) (state, bool) {
	switch i.Kind {
	case Get:
		kv, found := s.kvs[i.Key]
		if !s.revOK(o.Rev) || found != o.Found || (found && (kv.Value != o.Value || !s.modOK(kv, o.ModRev))) {
			return s, false
		}
		return learnRead(s, o.Rev, []KV{{Key: i.Key, ModRev: o.ModRev}}, found), true
	case Range:
		want := under(s, i.Key)
		if !s.revOK(o.Rev) || len(want) != len(o.KVs) {
			return s, false
		}
		for n, kv := range want {
			if o.KVs[n].Key != kv.Key || o.KVs[n].Value != kv.Value || !s.modOK(kv, o.KVs[n].ModRev) {
				return s, false
			}
		}
		return learnRead(s, o.Rev, o.KVs, true), true
	case Put:
		return write(s, o.Rev, i.Key, i.Value)
	case CAS:
		switch casMatch(s, i) {
		case no:
			return s, !o.Succeeded && s.revOK(o.Rev)
		case maybe:
			if !o.Succeeded {
				return s, s.revOK(o.Rev) // the unlearned mod revision is another
			}
		}
		if !o.Succeeded {
			return s, false
		}
		return write(s, o.Rev, i.Key, i.Value)
	case Delete:
		if _, found := s.kvs[i.Key]; !found {
			return s, o.Deleted == 0 && s.revOK(o.Rev)
		}
		if o.Deleted != 1 || !s.newRev(o.Rev) {
			return s, false
		}
		n := s.clone()
		delete(n.kvs, i.Key)
		n.rev, n.floor = o.Rev, o.Rev
		return n, true
	}
	return s, false
}

func write(s state, rev int64, key, value string) (state, bool) {
	if !s.newRev(rev) {
		return s, false
	}
	n := s.clone()
	n.kvs[key] = KV{Key: key, Value: value, ModRev: rev}
	n.rev, n.floor = rev, rev
	return n, true
}

// learnRead fixes revisions the model had not learned from what a read saw.
func learnRead(s state, rev int64, kvs []KV, found bool) state {
	if s.rev >= 0 {
		unknown := false
		for _, kv := range kvs {
			if m, ok := s.kvs[kv.Key]; ok && m.ModRev < 0 {
				unknown = true
			}
		}
		if !unknown {
			return s
		}
	}
	n := s.clone()
	n.learn(rev)
	if found {
		for _, kv := range kvs {
			if m, ok := n.kvs[kv.Key]; ok && m.ModRev < 0 {
				m.ModRev, m.above = kv.ModRev, 0
				n.kvs[kv.Key] = m
			}
		}
	}
	return n
}

// applyUnknown applies a write whose outcome is unknown at a revision not
// learned yet.
func applyUnknown(s state, i Input) (state, bool) {
	n := s.clone()
	if n.rev >= 0 {
		n.floor = n.rev
	}
	switch i.Kind {
	case Put:
		n.kvs[i.Key] = KV{Key: i.Key, Value: i.Value, ModRev: -1, above: n.floor}
	case CAS:
		if casMatch(s, i) == no {
			return s, false // failed: same as never happened
		}
		n.kvs[i.Key] = KV{Key: i.Key, Value: i.Value, ModRev: -1, above: n.floor}
	case Delete:
		if _, found := s.kvs[i.Key]; !found {
			return s, false // changed nothing
		}
		delete(n.kvs, i.Key)
	default:
		return s, false // reads change nothing
	}
	n.rev = -1
	return n, true
}

type match int

const (
	no match = iota
	yes
	maybe
)

// casMatch tells whether a CAS's compare (mod revision == ExpectMod; 0: the
// key is absent) holds in s. A key written by an operation of unknown
// outcome has a mod revision the model has not learned, only that it is
// above kv.above: the compare then certainly fails for an expected
// revision at or below that (0 included), and may hold above it.
func casMatch(s state, i Input) match {
	kv, found := s.kvs[i.Key]
	switch {
	case !found && i.ExpectMod == 0, found && kv.ModRev >= 0 && kv.ModRev == i.ExpectMod:
		return yes
	case found && kv.ModRev < 0 && i.ExpectMod > kv.above:
		return maybe
	}
	return no
}

// under lists the keys under prefix in key order.
func under(s state, prefix string) []KV {
	var out []KV
	for k, kv := range s.kvs {
		if strings.HasPrefix(k, prefix) {
			out = append(out, kv)
		}
	}
	slices.SortFunc(out, func(a, b KV) int { return strings.Compare(a.Key, b.Key) })
	return out
}
