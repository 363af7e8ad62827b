package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// metricName finds metric names in PromQL (rules, dashboard queries).
var metricName = regexp.MustCompile(`\b(?:etcd|tessera|grpc|go|process)_[a-z0-9_]+`)

// TestMonitoringUsesExportedMetrics: every metric the alert rules and the
// dashboard of deploy/k8s/components/monitoring query is one Tessera
// exports (tessera dev runs every tier, so its /metrics has them all).
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	d := newDevNode(t)
	d.start(t)
	cli := newClient(t, d.endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/mon", "1"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(d.endpoint() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exported, labels := map[string]bool{}, map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exported[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
		if _, rest, ok := strings.Cut(line, "{"); ok {
			for _, kv := range strings.Split(rest, ",") {
				if k, _, ok := strings.Cut(kv, "="); ok {
					labels[k] = true // a label name in a query is not a metric
				}
			}
		}
	}
	dir := filepath.Join("..", "..", "deploy", "k8s", "components", "monitoring")
	used := map[string]bool{}
	for _, f := range []string{"rules.yaml", "tessera-dashboard.json"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricName.FindAllString(string(b), -1) {
			used[m] = true
		}
	}
	if len(used) < 10 {
		t.Fatalf("found only %d metric names in the monitoring component", len(used))
	}
	var missing []string
	for m := range used {
		if !exported[m] && !labels[m] {
			missing = append(missing, m)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Fatalf("the monitoring component queries metrics Tessera does not export: %v", missing)
	}
	t.Logf("%d metrics used by the rules and dashboard, all exported", len(used))
}

// A gateway's --listen-address serves its probes and metrics in plaintext,
// for kubelet, whose probes cannot pass --client-cert-auth.
func TestGatewayProbePort(t *testing.T) {
	probes := freePort(t)
	pc := startProcCluster(t, "--listen-address", probes)
	cli := newClient(t, pc.url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/probe", "1"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ path, body string }{{"/readyz", "ok"}, {"/livez", "ok"}, {"/metrics", "grpc_server_handled_total"}} {
		resp, err := http.Get("http://" + probes + want.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want.body) {
			t.Errorf("%s on the probe port: %s %.200s", want.path, resp.Status, b)
		}
	}
}
