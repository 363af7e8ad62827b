package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"
)

// obj is a decoded JSON object.
type obj = map[string]any

// TestREST checks the grpc-gateway JSON API of "tessera dev" against etcd's
// marshalling: proto field names, int64 as strings, bytes as base64,
// unpopulated fields omitted, errors as {"code","message"} with HTTP 4xx.
func TestREST(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	hc := &http.Client{Timeout: 10 * time.Second}

	// post sends body to path and returns the HTTP status and decoded object.
	post := func(path, body string) (int, obj, string) {
		t.Helper()
		resp, err := hc.Post(d.endpoint()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("POST %s: read body: %v", path, err)
		}
		var o obj
		if err := json.Unmarshal(raw, &o); err != nil {
			t.Fatalf("POST %s %s: status %d, body is not a JSON object: %q", path, body, resp.StatusCode, raw)
		}
		return resp.StatusCode, o, string(raw)
	}
	// ok posts and requires HTTP 200.
	ok := func(path, body string) (obj, string) {
		t.Helper()
		code, o, raw := post(path, body)
		if code != http.StatusOK {
			t.Fatalf("POST %s %s: status %d, body %s", path, body, code, raw)
		}
		return o, raw
	}
	// fields requires o's keys to be exactly want.
	fields := func(what string, o obj, want ...string) {
		t.Helper()
		var got []string
		for k := range o {
			got = append(got, k)
		}
		sort.Strings(got)
		sort.Strings(want)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: fields %v, want %v (%v)", what, got, want, o)
		}
	}
	// str requires o[k] to be the JSON string want.
	str := func(what string, o obj, k, want string) {
		t.Helper()
		v, present := o[k]
		s, isStr := v.(string)
		if !present || !isStr || s != want {
			t.Errorf("%s: %q = %#v, want JSON string %q", what, k, v, want)
		}
	}
	sub := func(what string, o obj, k string) obj {
		t.Helper()
		v, isObj := o[k].(obj)
		if !isObj {
			t.Fatalf("%s: %q is %#v, want an object", what, k, o[k])
		}
		return v
	}
	list := func(what string, o obj, k string, n int) []obj {
		t.Helper()
		v, isList := o[k].([]any)
		if !isList || len(v) != n {
			t.Fatalf("%s: %q is %#v, want a list of %d", what, k, o[k], n)
		}
		var out []obj
		for _, e := range v {
			eo, isObj := e.(obj)
			if !isObj {
				t.Fatalf("%s: %q element %#v is not an object", what, k, e)
			}
			out = append(out, eo)
		}
		return out
	}
	header := func(what string, o obj, rev string) {
		t.Helper()
		h := sub(what, o, "header")
		fields(what+" header", h, "cluster_id", "member_id", "revision", "raft_term")
		for _, k := range []string{"cluster_id", "member_id", "raft_term"} {
			if _, isStr := h[k].(string); !isStr {
				t.Errorf("%s: header.%s = %#v, want a JSON string (int64/uint64)", what, k, h[k])
			}
		}
		str(what+" header", h, "revision", rev)
	}
	kv := func(what string, o obj, key, val, create, mod, ver string) {
		t.Helper()
		fields(what, o, "key", "value", "create_revision", "mod_revision", "version")
		str(what, o, "key", b64(key))
		str(what, o, "value", b64(val))
		str(what, o, "create_revision", create)
		str(what, o, "mod_revision", mod)
		str(what, o, "version", ver)
	}
	currentRev := func() string {
		t.Helper()
		o, _ := ok("/v3/kv/range", `{"key":"`+b64("probe")+`"}`)
		h := sub("probe range", o, "header")
		s, _ := h["revision"].(string)
		return s
	}

	// Put: the first write of a fresh store is revision 2; no prev_kv unless asked.
	o, _ := ok("/v3/kv/put", `{"key":"`+b64("a")+`","value":"`+b64("1")+`"}`)
	fields("put a", o, "header")
	header("put a", o, "2")

	o, _ = ok("/v3/kv/put", `{"key":"`+b64("a")+`","value":"`+b64("2")+`","prev_kv":true}`)
	fields("put a prev_kv", o, "header", "prev_kv")
	header("put a prev_kv", o, "3")
	kv("put a prev_kv", sub("put a", o, "prev_kv"), "a", "1", "2", "2", "1")

	ok("/v3/kv/put", `{"key":"`+b64("b")+`","value":"`+b64("x")+`"}`) // rev 4

	// Range: one key.
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("a")+`"}`)
	fields("range a", o, "header", "kvs", "count")
	header("range a", o, "4")
	str("range a", o, "count", "1")
	kv("range a kv", list("range a", o, "kvs", 1)[0], "a", "2", "2", "3", "2")

	// Range with limit: "more" and total count.
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("a")+`","range_end":"`+b64("c")+`","limit":"1"}`)
	fields("range a..c limit 1", o, "header", "kvs", "count", "more")
	if o["more"] != true {
		t.Errorf("range limit 1: more = %#v, want true", o["more"])
	}
	str("range a..c limit 1", o, "count", "2")
	list("range a..c limit 1", o, "kvs", 1)

	// Range of a missing key: nothing but the header (no kvs, count, more).
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("nope")+`"}`)
	fields("range missing", o, "header")

	// keys_only drops values; count_only drops kvs.
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("a")+`","keys_only":true}`)
	fields("range keys_only kv", list("range keys_only", o, "kvs", 1)[0], "key", "create_revision", "mod_revision", "version")
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("a")+`","range_end":"`+b64("c")+`","count_only":true}`)
	fields("range count_only", o, "header", "count")
	str("range count_only", o, "count", "2")

	// Range at an old revision.
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("a")+`","revision":"2"}`)
	kv("range a@2", list("range a@2", o, "kvs", 1)[0], "a", "1", "2", "2", "1")

	// Txn that succeeds: put inside, "succeeded": true.
	o, _ = ok("/v3/kv/txn", `{"compare":[{"key":"`+b64("a")+`","result":"EQUAL","target":"VALUE","value":"`+b64("2")+`"}],`+
		`"success":[{"request_put":{"key":"`+b64("t")+`","value":"`+b64("y")+`"}}],`+
		`"failure":[{"request_range":{"key":"`+b64("a")+`"}}]}`)
	fields("txn success", o, "header", "succeeded", "responses")
	header("txn success", o, "5")
	if o["succeeded"] != true {
		t.Errorf("txn success: succeeded = %#v", o["succeeded"])
	}
	fields("txn success response", list("txn success", o, "responses", 1)[0], "response_put")

	// Txn whose compare fails: "succeeded" omitted (false), failure branch runs.
	o, _ = ok("/v3/kv/txn", `{"compare":[{"key":"`+b64("a")+`","result":"EQUAL","target":"MOD","mod_revision":"2"}],`+
		`"success":[{"request_put":{"key":"`+b64("t")+`","value":"`+b64("z")+`"}}],`+
		`"failure":[{"request_range":{"key":"`+b64("t")+`"}}]}`)
	fields("txn failure", o, "header", "responses")
	resp := list("txn failure", o, "responses", 1)[0]
	fields("txn failure response", resp, "response_range")
	rr := sub("txn failure", resp, "response_range")
	kv("txn failure range kv", list("txn failure range", rr, "kvs", 1)[0], "t", "y", "5", "5", "1")
	str("txn failure range", rr, "count", "1")

	// DeleteRange with prev_kv.
	o, _ = ok("/v3/kv/deleterange", `{"key":"`+b64("t")+`","prev_kv":true}`)
	fields("deleterange t", o, "header", "deleted", "prev_kvs")
	str("deleterange t", o, "deleted", "1")
	kv("deleterange t prev", list("deleterange t", o, "prev_kvs", 1)[0], "t", "y", "5", "5", "1")
	delRev := sub("deleterange t", o, "header")["revision"].(string)
	// Without prev_kv and nothing matched: no "deleted", no "prev_kvs".
	o, _ = ok("/v3/kv/deleterange", `{"key":"`+b64("t")+`"}`)
	fields("deleterange nothing", o, "header")

	// Compaction, then a read below it fails with etcd's error.
	o, _ = ok("/v3/kv/compaction", `{"revision":"`+delRev+`"}`)
	fields("compaction", o, "header")
	code, o, raw := post("/v3/kv/range", `{"key":"`+b64("a")+`","revision":"2"}`)
	if code < 400 || code > 499 {
		t.Errorf("range below compaction: HTTP %d, want 4xx (%s)", code, raw)
	}
	str("range below compaction", o, "message", "etcdserver: mvcc: required revision has been compacted")
	if o["code"] != float64(11) { // codes.OutOfRange
		t.Errorf("range below compaction: code %#v, want 11 (OutOfRange): %s", o["code"], raw)
	}

	// Bad input: 4xx with a JSON error body, and the revision does not move.
	before := currentRev()
	for _, bad := range []struct{ path, body string }{
		{"/v3/kv/put", `{"key":"` + b64("m") + `",`},
		{"/v3/kv/put", `not json`},
		{"/v3/kv/put", `{"key":123,"value":"` + b64("v") + `"}`},
		{"/v3/kv/put", `{"key":"%%%not-base64","value":"` + b64("v") + `"}`},
		{"/v3/kv/txn", `{"success":[{"request_put":{"key":`},
		{"/v3/kv/deleterange", `[1,2,3]`},
		{"/v3/kv/range", `{"key":"` + b64("a") + `","limit":"ten"}`},
	} {
		code, o, raw := post(bad.path, bad.body)
		if code < 400 || code > 499 {
			t.Errorf("POST %s %q: HTTP %d, want 4xx (%s)", bad.path, bad.body, code, raw)
		}
		if _, isNum := o["code"].(float64); !isNum {
			t.Errorf("POST %s %q: error body %s has no numeric \"code\"", bad.path, bad.body, raw)
		}
		if m, isStr := o["message"].(string); !isStr || m == "" {
			t.Errorf("POST %s %q: error body %s has no \"message\"", bad.path, bad.body, raw)
		}
	}
	if after := currentRev(); after != before {
		t.Errorf("malformed requests moved the revision from %s to %s", before, after)
	}
	o, _ = ok("/v3/kv/range", `{"key":"`+b64("m")+`"}`)
	fields("range m after malformed put", o, "header")

	// Empty / missing key: etcd's message, InvalidArgument, nothing written.
	for _, body := range []string{
		`{"key":"","value":"` + b64("v") + `"}`,
		`{"value":"` + b64("v") + `"}`,
	} {
		code, o, raw := post("/v3/kv/put", body)
		if code != http.StatusBadRequest {
			t.Errorf("put %s: HTTP %d, want 400 (%s)", body, code, raw)
		}
		str("put with empty key", o, "message", "etcdserver: key is not provided")
		if o["code"] != float64(3) { // codes.InvalidArgument
			t.Errorf("put %s: code %#v, want 3", body, o["code"])
		}
	}
	code, o, raw = post("/v3/kv/txn", `{"success":[{"request_put":{"value":"`+b64("v")+`"}}]}`)
	if code != http.StatusBadRequest || o["message"] != "etcdserver: key is not provided" {
		t.Errorf("txn with an empty-key put: HTTP %d %s, want 400 \"etcdserver: key is not provided\"", code, raw)
	}
	if after := currentRev(); after != before {
		t.Errorf("rejected requests moved the revision from %s to %s", before, after)
	}

	// The store still works and the next write follows on.
	o, _ = ok("/v3/kv/put", `{"key":"`+b64("z")+`","value":"`+b64("ok")+`"}`)
	var beforeN, afterN int64
	if err := json.Unmarshal([]byte(before), &beforeN); err != nil {
		t.Fatalf("revision %q: %v", before, err)
	}
	rev, _ := sub("put z", o, "header")["revision"].(string)
	if err := json.Unmarshal([]byte(rev), &afterN); err != nil || afterN <= beforeN {
		t.Errorf("put after bad input: revision %q, want above %s", rev, before)
	}

	// Whitespace and field order do not matter.
	o, _ = ok("/v3/kv/range", "{\n  \"range_end\" : \""+b64("c")+"\",\n  \"key\" : \""+b64("a")+"\"\n}")
	str("range with whitespace", o, "count", "2")
}

// TestRESTWatch streams /v3/watch as etcd's gateway does: one JSON object
// per line, each wrapped in {"result": ...}, keys and values in base64.
func TestRESTWatch(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	hc := &http.Client{Timeout: 20 * time.Second}
	put := func(k, v string) {
		t.Helper()
		resp, err := hc.Post(d.endpoint()+"/v3/kv/put", "application/json",
			strings.NewReader(`{"key":"`+b64(k)+`","value":"`+b64(v)+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	put("/rw/a", "1")
	resp, err := hc.Post(d.endpoint()+"/v3/watch", "application/json",
		strings.NewReader(`{"create_request":{"key":"`+b64("/rw/")+`","range_end":"`+b64("/rw0")+`","start_revision":"2","prev_kv":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	put("/rw/a", "2")
	dec := json.NewDecoder(resp.Body)
	var events []obj
	for len(events) < 2 {
		var msg obj
		if err := dec.Decode(&msg); err != nil {
			t.Fatalf("decode stream after %d events: %v", len(events), err)
		}
		res, isObj := msg["result"].(obj)
		if !isObj {
			t.Fatalf("stream message without result: %v", msg)
		}
		if _, isStr := res["header"].(obj)["revision"].(string); !isStr {
			t.Fatalf("header revision is not an int64 string: %v", res["header"])
		}
		if evs, has := res["events"].([]any); has {
			for _, e := range evs {
				events = append(events, e.(obj))
			}
		} else if res["created"] != true {
			t.Fatalf("unexpected message %v", res)
		}
	}
	first, second := events[0], events[1]
	if _, has := first["type"]; has { // PUT is the zero value: omitted, as etcd does
		t.Errorf("first event type present: %v", first)
	}
	kv := second["kv"].(obj)
	if kv["key"] != b64("/rw/a") || kv["value"] != b64("2") || kv["mod_revision"] != "3" || kv["version"] != "2" {
		t.Errorf("second event kv %v", kv)
	}
	if prev := second["prev_kv"].(obj); prev["value"] != b64("1") {
		t.Errorf("second event prev_kv %v", prev)
	}
}
