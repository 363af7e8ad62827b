package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// restPaths are etcd's REST endpoints that take a JSON body.
var restPaths = []string{
	"/v3/kv/range", "/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn", "/v3/kv/compaction",
	"/v3/lease/grant", "/v3/lease/revoke", "/v3/lease/timetolive", "/v3/lease/leases",
	"/v3/maintenance/status", "/v3/maintenance/hash", "/v3/cluster/member/list",
}

// FuzzRESTBody sends arbitrary JSON bodies to the REST gateway of a real
// cluster: every answer is an HTTP response with a JSON body (etcd's error
// object when it is not 200), and the cluster keeps serving.
func FuzzRESTBody(f *testing.F) {
	for i, body := range []string{
		`{"key":"Zm9v","value":"YmFy"}`,
		`{"key":"AA==","range_end":"AA==","limit":"-5","sort_order":"DESCEND","revision":"99999999"}`,
		`{"compare":[{"key":"Zm9v","target":"MOD","result":"LESS","mod_revision":"3"}],"success":[{"request_put":{"key":"YQ==","value":"Yg=="}}],"failure":[{"request_txn":{"success":[{}]}}]}`,
		`{"key":"!!notbase64","lease":"abc"}`,
		`{"TTL":"-1","ID":"9223372036854775807"}`,
		`{"revision":"-3","physical":true}`,
		`[1,2,3]`, `{"key":`, `null`, ``,
	} {
		f.Add(byte(i), []byte(body))
	}
	c := testcluster.New(f, 1)
	base := c.Endpoints()[0]
	hc := &http.Client{Timeout: 10 * time.Second}
	f.Fuzz(func(t *testing.T, which byte, body []byte) {
		path := restPaths[int(which)%len(restPaths)]
		resp, err := hc.Post(base+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s %q: %v", path, body, err)
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("POST %s: reading the answer: %v", path, err)
		}
		if !json.Valid(out) {
			t.Fatalf("POST %s %q: status %d, body not JSON: %q", path, body, resp.StatusCode, out)
		}
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("POST %s %q: status %d: %s", path, body, resp.StatusCode, out)
		}
		h, err := hc.Get(base + "/health")
		if err != nil || h.StatusCode != http.StatusOK {
			t.Fatalf("cluster unhealthy after POST %s %q: %v", path, body, err)
		}
		h.Body.Close()
	})
}
