package history

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Recorder collects the operations of concurrent clients with their call
// and return times, for porcupine.
type Recorder struct {
	start time.Time
	mu    struct {
		sync.Mutex
		ops   []porcupine.Operation
		fails []failure
	}
}

// failure is an operation that returned an error: when, and what.
type failure struct {
	at  int64
	op  OpKind
	err string
}

// NewRecorder starts a history.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Do runs one operation through cli and records it. A write whose outcome
// is unknown (any error: a timeout, a lost connection, or a failure that
// may have been retried after it applied) is recorded as possibly applied
// at any time after its call; a read that failed is left out (it changed
// nothing). It returns the output, for clients that need it (a CAS loop
// reads the mod revision).
func (r *Recorder) Do(ctx context.Context, client int, cli *clientv3.Client, in Input) (Output, error) {
	call := r.now()
	out, err := Execute(ctx, cli, in)
	ret := r.now()
	if err != nil {
		r.mu.Lock()
		r.mu.fails = append(r.mu.fails, failure{at: ret, op: in.Kind, err: err.Error()})
		r.mu.Unlock()
		if in.Kind == Get || in.Kind == Range {
			return out, err
		}
		out, ret = Output{Unknown: true}, math.MaxInt64
	}
	r.mu.Lock()
	r.mu.ops = append(r.mu.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	r.mu.Unlock()
	return out, err
}

// Failures counts the operations that returned an error (to the client:
// a timeout, an unavailable cluster) between from and to.
func (r *Recorder) Failures(from, to time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, f := range r.mu.fails {
		if t := r.start.Add(time.Duration(f.at)); !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// FailureKinds describes the errors between from and to: each distinct
// operation and message once, with how many times it came.
func (r *Recorder) FailureKinds(from, to time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	count := map[string]int{}
	var order []string
	for _, f := range r.mu.fails {
		if t := r.start.Add(time.Duration(f.at)); !t.Before(from) && t.Before(to) {
			k := f.op.String() + ": " + f.err
			if count[k] == 0 {
				order = append(order, k)
			}
			count[k]++
		}
	}
	parts := make([]string, len(order))
	for i, k := range order {
		parts[i] = fmt.Sprintf("%d× %s", count[k], k)
	}
	return strings.Join(parts, "; ")
}

// Operations returns the history so far.
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]porcupine.Operation(nil), r.mu.ops...)
}

// CheckKV checks a history for linearizability under KVModel, giving up
// (Unknown) after timeout.
func CheckKV(ops []porcupine.Operation, timeout time.Duration) porcupine.CheckResult {
	return CheckKVFrom(ops, 1, timeout)
}

// CheckKVFrom is CheckKV for a history that starts at revision rev.
func CheckKVFrom(ops []porcupine.Operation, rev int64, timeout time.Duration) porcupine.CheckResult {
	m := ModelFrom(rev)
	return porcupine.CheckOperationsTimeout(m.ToModel(), ops, timeout)
}

// Execute runs one operation with clientv3 and returns what it saw.
func Execute(ctx context.Context, cli *clientv3.Client, in Input) (Output, error) {
	switch in.Kind {
	case Get:
		r, err := cli.Get(ctx, in.Key)
		if err != nil {
			return Output{}, err
		}
		o := Output{Rev: r.Header.Revision}
		if len(r.Kvs) == 1 {
			o.Found, o.Value, o.ModRev = true, string(r.Kvs[0].Value), r.Kvs[0].ModRevision
		}
		return o, nil
	case Range:
		r, err := cli.Get(ctx, in.Key, clientv3.WithPrefix())
		if err != nil {
			return Output{}, err
		}
		o := Output{Rev: r.Header.Revision}
		for _, kv := range r.Kvs {
			o.KVs = append(o.KVs, KV{Key: string(kv.Key), Value: string(kv.Value), ModRev: kv.ModRevision})
		}
		return o, nil
	case Put:
		r, err := cli.Put(ctx, in.Key, in.Value)
		if err != nil {
			return Output{}, err
		}
		return Output{Rev: r.Header.Revision}, nil
	case CAS:
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(in.Key), "=", in.ExpectMod)).
			Then(clientv3.OpPut(in.Key, in.Value)).Commit()
		if err != nil {
			return Output{}, err
		}
		return Output{Rev: r.Header.Revision, Succeeded: r.Succeeded}, nil
	case Delete:
		r, err := cli.Delete(ctx, in.Key)
		if err != nil {
			return Output{}, err
		}
		return Output{Rev: r.Header.Revision, Deleted: r.Deleted}, nil
	}
	return Output{}, nil
}
