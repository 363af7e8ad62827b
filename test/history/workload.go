package history

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Duration is how long a fault test drives load: NEMESIS_DURATION if set
// (make nemesis), else def (the short run of make test).
func Duration(t testing.TB, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv("NEMESIS_DURATION")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("NEMESIS_DURATION: %v", err)
	}
	return d
}

// Workload is the load the fault tests drive while a nemesis breaks the
// cluster: each client loops over gets, puts, deletes, prefix ranges and
// kube-apiserver's read-then-CAS update on a few keys under Prefix, and one
// watch over the prefix records every event from the workload's start.
// The check holds the workload to every revision from its start: nothing
// else may write to the cluster while it runs (a write elsewhere moves the
// revision behind the model's back), and its keys must not exist before.
type Workload struct {
	Prefix  string
	Keys    int
	Clients []*clientv3.Client
	// Watch carries the watch (one of Clients will do).
	Watch *clientv3.Client
}

// Run is a running workload.
type Run struct {
	w      Workload
	rec    *Recorder
	wg     sync.WaitGroup
	cancel context.CancelFunc
	wdone  chan struct{}

	mu      sync.Mutex
	wlog    WatchLog
	werr    error             // why the watch ended, if it did
	arrived map[eventID]int64 // when each event arrived, on the recorder's clock
}

type eventID struct {
	rev int64
	key string
}

// Start begins the load; clients stop issuing operations at stop.
func (w Workload) Start(t testing.TB, stop time.Time) *Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	g, err := w.Watch.Get(ctx, w.Prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		t.Fatalf("workload: read the start revision: %v", err)
	}
	r := &Run{w: w, rec: NewRecorder(), wdone: make(chan struct{}), arrived: map[eventID]int64{}}
	r.wlog = WatchLog{Prefix: w.Prefix, From: g.Header.Revision + 1}
	wctx, wcancel := context.WithCancel(context.Background())
	r.cancel = wcancel
	go r.watch(wctx)
	keys := make([]string, w.Keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("%sk%d", w.Prefix, i)
	}
	for client, cli := range w.Clients {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.drive(client, cli, keys, stop)
		}()
	}
	return r
}

func (r *Run) watch(ctx context.Context) {
	defer close(r.wdone)
	for resp := range r.w.Watch.Watch(ctx, r.w.Prefix, clientv3.WithPrefix(), clientv3.WithRev(r.wlog.From)) {
		r.mu.Lock()
		if err := resp.Err(); err != nil {
			r.werr = err
		}
		now := r.rec.now()
		for _, ev := range resp.Events {
			if id := (eventID{ev.Kv.ModRevision, string(ev.Kv.Key)}); r.arrived[id] == 0 {
				r.arrived[id] = now
			}
			r.wlog.Events = append(r.wlog.Events, Event{Rev: ev.Kv.ModRevision, Key: string(ev.Kv.Key),
				Deleted: ev.Type == clientv3.EventTypeDelete, Value: string(ev.Kv.Value)})
		}
		if resp.IsProgressNotify() {
			r.wlog.Progress = append(r.wlog.Progress, resp.Header.Revision)
			r.wlog.EventsBefore = append(r.wlog.EventsBefore, len(r.wlog.Events))
		}
		r.mu.Unlock()
	}
}

func (r *Run) drive(client int, cli *clientv3.Client, keys []string, stop time.Time) {
	rng := rand.New(rand.NewSource(int64(client)))
	for n := 0; time.Now().Before(stop); n++ {
		k := keys[rng.Intn(len(keys))]
		v := fmt.Sprintf("c%d-%d", client, n) // unique: CheckWatch matches unknown writes by value
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		switch p := rng.Intn(10); {
		case p < 3:
			r.rec.Do(ctx, client, cli, Input{Kind: Put, Key: k, Value: v})
		case p < 5:
			r.rec.Do(ctx, client, cli, Input{Kind: Get, Key: k})
		case p < 6:
			r.rec.Do(ctx, client, cli, Input{Kind: Range, Key: r.w.Prefix})
		case p < 7:
			r.rec.Do(ctx, client, cli, Input{Kind: Delete, Key: k})
		default:
			if o, err := r.rec.Do(ctx, client, cli, Input{Kind: Get, Key: k}); err == nil {
				mod := int64(0)
				if o.Found {
					mod = o.ModRev
				}
				r.rec.Do(ctx, client, cli, Input{Kind: CAS, Key: k, ExpectMod: mod, Value: v})
			}
		}
		cancel()
	}
}

// dump writes a failed history where a person can look at it: porcupine's
// visualization and one line per operation, in call order, in a directory
// that outlives the test. It returns a sentence naming the files.
func dump(ops []porcupine.Operation, model *porcupine.NondeterministicModel) string {
	dir, err := os.MkdirTemp("", "tessera-history-")
	if err != nil {
		return ""
	}
	_, info := porcupine.CheckOperationsVerbose(model.ToModel(), ops, time.Minute)
	html := filepath.Join(dir, "history.html")
	if err := porcupine.VisualizePath(model.ToModel(), info, html); err != nil {
		html = err.Error()
	}
	sorted := slices.Clone(ops)
	slices.SortFunc(sorted, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	var b strings.Builder
	for _, op := range sorted {
		ret := "?"
		if op.Return != math.MaxInt64 {
			ret = time.Duration(op.Return).String()
		}
		fmt.Fprintf(&b, "%s..%s client %d: %s\n", time.Duration(op.Call), ret, op.ClientId, model.DescribeOperation(op.Input, op.Output))
	}
	if js, err := json.Marshal(ops); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "history.json"), js, 0o644)
	}
	text := filepath.Join(dir, "history.txt")
	if err := os.WriteFile(text, []byte(b.String()), 0o644); err != nil {
		text = err.Error()
	}
	return fmt.Sprintf("; see %s and %s", html, text)
}

// writesLike lists, for a watch problem naming an event, every write of
// the event's key with its value (or every delete of it): which operation
// the event came from, and what its client was told.
func (r *Run) writesLike(problem error, ops []porcupine.Operation, m *porcupine.NondeterministicModel) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	n := 0
	for _, e := range r.wlog.Events {
		if !strings.Contains(problem.Error(), fmt.Sprintf("(%s@%d,", e.Key, e.Rev)) {
			continue
		}
		for _, op := range ops {
			in := op.Input.(Input)
			if in.Key == e.Key && (e.Deleted && in.Kind == Delete || !e.Deleted && in.Value == e.Value && in.Kind != Get) && n < 12 {
				n++
				fmt.Fprintf(&b, "; client %d wrote it: %s", op.ClientId, m.DescribeOperation(op.Input, op.Output))
			}
		}
		break
	}
	return b.String()
}

// Latency returns, sorted, the time from each acknowledged write's
// acknowledgement to its event's arrival at the watch (0 if the event came
// first); call it after Check.
func (r *Run) Latency() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []time.Duration
	for _, op := range r.rec.Operations() {
		in, o := op.Input.(Input), op.Output.(Output)
		if !acknowledgedWrite(in, o) {
			continue
		}
		if at, ok := r.arrived[eventID{o.Rev, in.Key}]; ok {
			out = append(out, time.Duration(max(at-op.Return, 0)))
		}
	}
	slices.Sort(out)
	return out
}

// Slow describes each acknowledged write whose event reached the watch
// more than limit after its acknowledgement, with wall-clock times to match
// against the processes' logs; call it after Check.
func (r *Run) Slow(limit time.Duration) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	at := func(ns int64) string { return r.rec.start.Add(time.Duration(ns)).UTC().Format("15:04:05.000") }
	var out []string
	for _, op := range r.rec.Operations() {
		in, o := op.Input.(Input), op.Output.(Output)
		if !acknowledgedWrite(in, o) {
			continue
		}
		if ev, ok := r.arrived[eventID{o.Rev, in.Key}]; ok && time.Duration(ev-op.Return) > limit {
			out = append(out, fmt.Sprintf("%s@%d: called %s, acknowledged %s, event %s", in.Key, o.Rev, at(op.Call), at(op.Return), at(ev)))
		}
	}
	return out
}

// Percentile is the p-th percentile (0 < p <= 1) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(float64(len(sorted))*p), len(sorted)-1)]
}

// Failures counts the client operations that failed between from and to.
func (r *Run) Failures(from, to time.Time) int { return r.rec.Failures(from, to) }

// FailureKinds says which operations failed between from and to, and how.
func (r *Run) FailureKinds(from, to time.Time) string { return r.rec.FailureKinds(from, to) }

// LongestStall is the longest time between from and to in which no client
// operation completed successfully: how long the cluster took to recover
// from what happened then.
func (r *Run) LongestStall(from, to time.Time) time.Duration {
	var done []time.Time
	for _, op := range r.rec.Operations() {
		if op.Return == math.MaxInt64 {
			continue
		}
		if at := r.rec.start.Add(time.Duration(op.Return)); !at.Before(from) && at.Before(to) {
			done = append(done, at)
		}
	}
	slices.SortFunc(done, func(a, b time.Time) int { return a.Compare(b) })
	worst, last := time.Duration(0), from
	for _, at := range append(done, to) {
		worst, last = max(worst, at.Sub(last)), at
	}
	return worst
}

// Wait waits for the clients to stop, then up to 10 s for the watch to
// deliver every acknowledged write, so that what the caller does next (a
// restart of every process) does not count in the write-to-event latency.
func (r *Run) Wait() {
	r.wg.Wait()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && r.undelivered() > 0; {
		time.Sleep(50 * time.Millisecond)
	}
}

// undelivered counts the acknowledged writes whose event has not arrived.
func (r *Run) undelivered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, op := range r.rec.Operations() {
		if in, o := op.Input.(Input), op.Output.(Output); acknowledgedWrite(in, o) && r.arrived[eventID{o.Rev, in.Key}] == 0 {
			n++
		}
	}
	return n
}

// acknowledgedWrite: the operation is known to have changed a key (and so
// has exactly one event).
func acknowledgedWrite(in Input, o Output) bool {
	return !o.Unknown && (in.Kind == Put || in.Kind == CAS && o.Succeeded || in.Kind == Delete && o.Deleted == 1)
}

// Check ends the run after the cluster has healed: it reads the prefix
// once more through final (every acknowledged write must be there, which
// the linearizability check enforces), checks the whole history against
// etcd's model, waits for the watch to reach the last acknowledged write
// and checks what it delivered. It returns a summary for the test log.
func (r *Run) Check(t testing.TB, final *clientv3.Client) string {
	t.Helper()
	r.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err := r.rec.Do(ctx, len(r.w.Clients), final, Input{Kind: Range, Key: r.w.Prefix})
	cancel()
	if err != nil {
		t.Fatalf("the final read failed: %v", err)
	}
	ops := r.rec.Operations()
	if res := CheckKVFrom(ops, r.wlog.From-1, time.Minute); res != porcupine.Ok {
		m := ModelFrom(r.wlog.From - 1)
		t.Fatalf("the history of %d operations is not linearizable (%s)%s", len(ops), res, dump(ops, &m))
	}
	var acked, maybe []Write
	var last int64
	unknown := 0
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		w := Write{Key: in.Key, Value: in.Value, Rev: out.Rev}
		switch {
		case out.Unknown:
			w.Rev, w.Deleted = 0, in.Kind == Delete
			maybe = append(maybe, w)
			unknown++
			continue
		case in.Kind == Put, in.Kind == CAS && out.Succeeded:
		case in.Kind == Delete && out.Deleted == 1:
			w.Deleted, w.Value = true, ""
		default:
			continue
		}
		acked = append(acked, w)
		last = max(last, w.Rev)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r.mu.Lock()
		var seen int64
		if n := len(r.wlog.Events); n > 0 {
			seen = r.wlog.Events[n-1].Rev
		}
		werr := r.werr
		r.mu.Unlock()
		if werr != nil {
			t.Fatalf("the watch ended at revision %d: %v", seen, werr)
		}
		if seen >= last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch reached revision %d, the last acknowledged write is at %d", seen, last)
		}
	}
	r.cancel()
	<-r.wdone
	if errs := CheckWatch(r.wlog, acked, maybe); len(errs) > 0 {
		m := ModelFrom(r.wlog.From - 1)
		t.Fatalf("watch: %d problems, first %v%s%s", len(errs), errs[0], r.writesLike(errs[0], ops, &m), dump(ops, &m))
	}
	return fmt.Sprintf("%d operations from %d clients linearizable; %d acknowledged writes (%d of unknown outcome) and %d watch events checked",
		len(ops), len(r.w.Clients), len(acked), unknown, len(r.wlog.Events))
}
