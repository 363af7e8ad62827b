package history

import (
	"fmt"
	"strings"
)

// Event is one event a watch delivered, in delivery order.
type Event struct {
	Rev     int64
	Key     string
	Deleted bool
	Value   string
}

func (e Event) describe() string {
	if e.Deleted {
		return "delete"
	}
	return fmt.Sprintf("value %q", e.Value)
}

// Write is an acknowledged write: at Rev, Key was set to Value (or deleted).
type Write struct {
	Rev     int64
	Key     string
	Deleted bool
	Value   string
}

// WatchLog is what one watch stream delivered: its events, and the
// revisions of the progress notifications it got, in delivery order
// (ProgressAt[i] came after the first EventsBefore[i] events).
type WatchLog struct {
	Prefix       string
	From         int64 // the watch's start revision
	Events       []Event
	Progress     []int64
	EventsBefore []int
}

// CheckWatch checks a watch stream against the acknowledged writes: events
// in revision order with no duplicate, each one an acknowledged write (or
// one whose outcome the writer did not learn, listed in maybe with Rev 0:
// it matches an event of its key with its value, or a delete of its key,
// at any revision; values must be unique for that to mean something), every
// acknowledged write under the prefix from From up to the last revision
// the watch is known to have passed delivered exactly once, and progress
// that never goes back nor claims a revision whose events come later.
func CheckWatch(w WatchLog, acked, maybe []Write) []error {
	var errs []error
	known := map[[2]string]Write{}
	for _, a := range acked {
		known[[2]string{fmt.Sprint(a.Rev), a.Key}] = a
	}
	maybeOf := map[[2]string]bool{}
	for _, m := range maybe {
		v := m.Value
		if m.Deleted {
			v = "\x00deleted"
		}
		maybeOf[[2]string{m.Key, v}] = true
	}
	seen := map[[2]string]bool{}
	var last int64
	for i, e := range w.Events {
		id := [2]string{fmt.Sprint(e.Rev), e.Key}
		switch {
		case e.Rev < last:
			errs = append(errs, fmt.Errorf("event %d (%s@%d) after revision %d: out of order", i, e.Key, e.Rev, last))
		case seen[id]:
			errs = append(errs, fmt.Errorf("event %d (%s@%d) delivered twice", i, e.Key, e.Rev))
		case e.Rev < w.From:
			errs = append(errs, fmt.Errorf("event %d (%s@%d) below the watch's start %d", i, e.Key, e.Rev, w.From))
		}
		seen[id] = true
		last = max(last, e.Rev)
		a, ok := known[id]
		v := e.Value
		if e.Deleted {
			v = "\x00deleted"
		}
		if !ok && maybeOf[[2]string{e.Key, v}] {
			continue
		}
		if !ok {
			errs = append(errs, fmt.Errorf("event %d (%s@%d, %s) matches no write", i, e.Key, e.Rev, e.describe()))
		} else if a.Deleted != e.Deleted || (!e.Deleted && a.Value != e.Value) {
			errs = append(errs, fmt.Errorf("event %d (%s@%d): deleted=%v value %q, the write was deleted=%v value %q", i, e.Key, e.Rev, e.Deleted, e.Value, a.Deleted, a.Value))
		}
	}
	// Progress: never back, and nothing at or below it arrives after it.
	var prog int64
	for i, p := range w.Progress {
		if p < prog {
			errs = append(errs, fmt.Errorf("progress %d went back from %d", p, prog))
		}
		prog = max(prog, p)
		for _, e := range w.Events[w.EventsBefore[i]:] {
			if e.Rev <= p {
				errs = append(errs, fmt.Errorf("event %s@%d after progress notification %d", e.Key, e.Rev, p))
				break
			}
		}
	}
	// Completeness up to what the watch has passed.
	through := max(last, prog)
	for _, a := range acked {
		if a.Rev >= w.From && a.Rev <= through && strings.HasPrefix(a.Key, w.Prefix) && !seen[[2]string{fmt.Sprint(a.Rev), a.Key}] {
			errs = append(errs, fmt.Errorf("acknowledged write %s@%d never delivered (watch passed %d)", a.Key, a.Rev, through))
		}
	}
	return errs
}

// CheckResumed checks that a watch resumed from revision from delivered
// exactly the suffix of the original's events from that revision, for the
// revisions both covered.
func CheckResumed(original, resumed []Event, from int64) []error {
	var want []Event
	for _, e := range original {
		if e.Rev >= from {
			want = append(want, e)
		}
	}
	var errs []error
	n := min(len(want), len(resumed))
	for i := 0; i < n; i++ {
		if want[i] != resumed[i] {
			errs = append(errs, fmt.Errorf("resumed event %d is %+v, the original had %+v", i, resumed[i], want[i]))
			break
		}
	}
	return errs
}
