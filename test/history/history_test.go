package history

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// op builds an operation over [call, ret].
func op(client int, call, ret int64, in Input, out Output) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func put(k, v string) Input                 { return Input{Kind: Put, Key: k, Value: v} }
func get(k string) Input                    { return Input{Kind: Get, Key: k} }
func cas(k string, m int64, v string) Input { return Input{Kind: CAS, Key: k, ExpectMod: m, Value: v} }

func TestKVModel(t *testing.T) {
	tests := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"sequential put then get", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 2}),
			op(1, 2, 3, get("x"), Output{Rev: 2, Found: true, Value: "1", ModRev: 2}),
		}, porcupine.Ok},
		{"revisions may skip (the revision rule)", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 7}),
			op(0, 2, 3, put("x", "2"), Output{Rev: 20}),
			op(1, 4, 5, get("x"), Output{Rev: 20, Found: true, Value: "2", ModRev: 20}),
		}, porcupine.Ok},
		{"concurrent get may see either", []porcupine.Operation{
			op(0, 0, 10, put("x", "1"), Output{Rev: 2}),
			op(1, 1, 2, get("x"), Output{Rev: 1}),
		}, porcupine.Ok},
		{"injected stale read", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 2}),
			op(1, 2, 3, get("x"), Output{Rev: 1}), // started after the put returned
		}, porcupine.Illegal},
		{"stale header revision", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 2}),
			op(0, 2, 3, put("y", "1"), Output{Rev: 3}),
			op(1, 4, 5, get("x"), Output{Rev: 2, Found: true, Value: "1", ModRev: 2}),
		}, porcupine.Illegal},
		{"revision going back", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 5}),
			op(0, 2, 3, put("x", "2"), Output{Rev: 4}),
		}, porcupine.Illegal},
		{"a failed CAS leaves the revision", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 2}),
			op(1, 2, 3, cas("x", 9, "no"), Output{Rev: 2}),
			op(0, 4, 5, cas("x", 2, "yes"), Output{Rev: 4, Succeeded: true}),
			op(1, 6, 7, get("x"), Output{Rev: 4, Found: true, Value: "yes", ModRev: 4}),
		}, porcupine.Ok},
		{"two CAS on one revision both succeed", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 2}),
			op(0, 2, 5, cas("x", 2, "a"), Output{Rev: 3, Succeeded: true}),
			op(1, 2, 5, cas("x", 2, "b"), Output{Rev: 4, Succeeded: true}),
		}, porcupine.Illegal},
		{"an unknown put that applied", []porcupine.Operation{
			op(0, 0, math.MaxInt64, put("x", "1"), Output{Unknown: true}),
			op(1, 5, 6, get("x"), Output{Rev: 9, Found: true, Value: "1", ModRev: 9}),
			op(1, 7, 8, put("y", "1"), Output{Rev: 10}),
			op(1, 9, 10, get("x"), Output{Rev: 10, Found: true, Value: "1", ModRev: 9}),
		}, porcupine.Ok},
		{"an unknown put that never applied", []porcupine.Operation{
			op(0, 0, math.MaxInt64, put("x", "1"), Output{Unknown: true}),
			op(1, 5, 6, get("x"), Output{Rev: 1}),
		}, porcupine.Ok},
		// Found by the network nemesis (a false "Illegal" before the model
		// knew that a CAS expecting absence fails on a key written by an
		// unknown-outcome write, whatever its unlearned mod revision).
		{"a CAS on a key an unknown write created", []porcupine.Operation{
			op(0, 0, math.MaxInt64, cas("x", 0, "u"), Output{Unknown: true}),
			op(1, 5, 6, cas("x", 0, "v"), Output{Rev: 12}),
			op(1, 7, 8, Input{Kind: Delete, Key: "x"}, Output{Rev: 14, Deleted: 1}),
			op(1, 9, 10, get("x"), Output{Rev: 14}),
		}, porcupine.Ok},
		{"a CAS on the unlearned revision of an unknown write may hold", []porcupine.Operation{
			op(0, 0, math.MaxInt64, put("x", "u"), Output{Unknown: true}),
			op(1, 5, 6, cas("x", 9, "v"), Output{Rev: 10, Succeeded: true}),
			op(1, 7, 8, get("x"), Output{Rev: 10, Found: true, Value: "v", ModRev: 10}),
		}, porcupine.Ok},
		{"a CAS below what an unknown write could have set cannot hold", []porcupine.Operation{
			op(0, 0, 1, put("x", "1"), Output{Rev: 5}),
			op(0, 2, math.MaxInt64, put("x", "u"), Output{Unknown: true}),
			op(1, 5, 6, get("x"), Output{Rev: 8, Found: true, Value: "u", ModRev: 8}),
			op(1, 7, 8, cas("x", 5, "v"), Output{Rev: 9, Succeeded: true}),
		}, porcupine.Illegal},
		{"an unknown write's key then deleted twice", []porcupine.Operation{
			op(0, 0, math.MaxInt64, cas("x", 0, "u"), Output{Unknown: true}),
			op(1, 5, 6, Input{Kind: Delete, Key: "x"}, Output{Rev: 12, Deleted: 1}),
			op(1, 7, 8, Input{Kind: Delete, Key: "x"}, Output{Rev: 13, Deleted: 1}),
		}, porcupine.Illegal},
		{"a delete of a missing key changes nothing", []porcupine.Operation{
			op(0, 0, 1, Input{Kind: Delete, Key: "x"}, Output{Rev: 1}),
			op(0, 2, 3, Input{Kind: Range, Key: ""}, Output{Rev: 1}),
		}, porcupine.Ok},
		{"a range missing a key", []porcupine.Operation{
			op(0, 0, 1, put("/a", "1"), Output{Rev: 2}),
			op(0, 2, 3, put("/b", "1"), Output{Rev: 3}),
			op(1, 4, 5, Input{Kind: Range, Key: "/"}, Output{Rev: 3, KVs: []KV{{Key: "/b", Value: "1", ModRev: 3}}}),
		}, porcupine.Illegal},
	}
	for _, tt := range tests {
		if got := CheckKV(tt.ops, 10*time.Second); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestCheckWatch(t *testing.T) {
	acked := []Write{{Rev: 2, Key: "/a", Value: "1"}, {Rev: 3, Key: "/b", Value: "1"}, {Rev: 4, Key: "/a", Deleted: true}}
	good := WatchLog{Prefix: "/", From: 2, Events: []Event{{Rev: 2, Key: "/a", Value: "1"}, {Rev: 3, Key: "/b", Value: "1"}, {Rev: 4, Key: "/a", Deleted: true}},
		Progress: []int64{4}, EventsBefore: []int{3}}
	if errs := CheckWatch(good, acked, nil); len(errs) != 0 {
		t.Fatalf("a correct watch: %v", errs)
	}
	bad := []struct {
		name string
		w    WatchLog
		want string
	}{
		{"injected duplicate event", WatchLog{Prefix: "/", From: 2, Events: []Event{{Rev: 2, Key: "/a", Value: "1"}, {Rev: 2, Key: "/a", Value: "1"}, {Rev: 3, Key: "/b", Value: "1"}, {Rev: 4, Key: "/a", Deleted: true}}}, "twice"},
		{"gap", WatchLog{Prefix: "/", From: 2, Events: []Event{{Rev: 2, Key: "/a", Value: "1"}, {Rev: 4, Key: "/a", Deleted: true}}}, "never delivered"},
		{"out of order", WatchLog{Prefix: "/", From: 2, Events: []Event{{Rev: 3, Key: "/b", Value: "1"}, {Rev: 2, Key: "/a", Value: "1"}, {Rev: 4, Key: "/a", Deleted: true}}}, "out of order"},
		{"progress before its events", WatchLog{Prefix: "/", From: 2, Events: []Event{{Rev: 2, Key: "/a", Value: "1"}, {Rev: 3, Key: "/b", Value: "1"}}, Progress: []int64{3}, EventsBefore: []int{1}}, "after progress"},
		{"progress going back", WatchLog{Prefix: "/", From: 2, Events: good.Events, Progress: []int64{4, 3}, EventsBefore: []int{3, 3}}, "went back"},
		{"an event nobody wrote", WatchLog{Prefix: "/", From: 2, Events: []Event{{Rev: 2, Key: "/a", Value: "1"}, {Rev: 3, Key: "/b", Value: "2"}, {Rev: 4, Key: "/a", Deleted: true}}}, "value"},
	}
	for _, b := range bad {
		errs := CheckWatch(b.w, acked, nil)
		found := false
		for _, e := range errs {
			found = found || strings.Contains(e.Error(), b.want)
		}
		if !found {
			t.Errorf("%s: errors %v, want one about %q", b.name, errs, b.want)
		}
	}
	if errs := CheckResumed(good.Events, good.Events[1:], 3); len(errs) != 0 {
		t.Errorf("a correct resume: %v", errs)
	}
	if errs := CheckResumed(good.Events, good.Events[2:], 3); len(errs) == 0 {
		t.Error("a resume that skipped an event passed")
	}
}
