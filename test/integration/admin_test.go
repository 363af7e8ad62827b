package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestAdminShardMapREST reads the shard map through the gateway's REST admin
// API (grpc-gateway over the replicas' Meta service).
func TestAdminShardMapREST(t *testing.T) {
	c := testcluster.New(t, 1)
	resp, err := http.Get(c.Endpoints()[0] + "/tessera/v1/shardmap")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var out struct {
		ShardMap struct {
			MetaShardID string `json:"metaShardId"`
			Shards      []struct {
				ID         string   `json:"id"`
				Replicas   []string `json:"replicas"`
				Generation string   `json:"generation"`
			} `json:"shards"`
			Stores []struct {
				APIAddress string `json:"apiAddress"`
			} `json:"stores"`
		} `json:"shardMap"`
		Leaders map[string]string `json:"leaders"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	sm := out.ShardMap
	if sm.MetaShardID != "1" || len(sm.Shards) != 1 || sm.Shards[0].ID != "2" || sm.Shards[0].Generation != "1" ||
		len(sm.Stores) != 1 || sm.Stores[0].APIAddress == "" || out.Leaders["2"] != "1" {
		t.Fatalf("unexpected shard map: %s", body)
	}
}

// TestMetrics reads /metrics (Prometheus text from OpenTelemetry) on the
// gateway's client port: every tier of the in-process cluster reports.
func TestMetrics(t *testing.T) {
	c := testcluster.New(t, 1)
	cli := c.Client(t)
	mustPut(t, cli, "/metrics/k", "v")
	wch := cli.Watch(ctxT(t), "/metrics/", clientv3.WithPrefix())
	mustPut(t, cli, "/metrics/k", "w")
	<-wch
	if _, err := cli.Get(ctxT(t), "/metrics/k", clientv3.WithRev(1<<40)); err == nil {
		t.Fatal("a read at a future revision succeeded")
	}
	resp, err := http.Get(c.Endpoints()[0] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`tessera_gateway_requests_total{code="OK",method="/etcdserverpb.KV/Put"`,
		`tessera_gateway_request_duration_seconds_bucket{method="/etcdserverpb.KV/Put"`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"`,
		`grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"`,
		`tessera_watcher_watches{`,
		`tessera_replica_store_bytes{`,
		`tessera_replica_shard_revision{`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("%s", body)
	}
}
