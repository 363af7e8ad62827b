// Package tracing checks that one request's trace covers every tier: the
// gateway's call, the replica's, and the Raft proposal, as exported with
// OTLP to a collector (an in-process one here). It is a package of its own
// because tracing, once on, is on for the whole test process.
package tracing

import (
	"context"
	"encoding/hex"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/tessera-kv/tessera/pkg/telemetry"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// collector is an OTLP trace receiver that keeps every span's name by
// trace ID.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu     sync.Mutex
	traces map[string][]string
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				id := hex.EncodeToString(sp.TraceId)
				c.traces[id] = append(c.traces[id], sp.Name)
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// traceWith returns the span names of a trace that has all of want.
func (c *collector) traceWith(want ...string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, names := range c.traces {
		has := map[string]bool{}
		for _, n := range names {
			has[n] = true
		}
		all := true
		for _, w := range want {
			all = all && has[w]
		}
		if all {
			return names
		}
	}
	return nil
}

func TestOneTraceCoversEveryTier(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{traces: map[string][]string{}}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	go srv.Serve(l)
	defer srv.Stop()
	// The standard OpenTelemetry environment, as an operator sets it.
	for k, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + l.Addr().String(),
		"OTEL_EXPORTER_OTLP_INSECURE": "true",
		"OTEL_BSP_SCHEDULE_DELAY":     "100",
	} {
		os.Setenv(k, v)
	}
	stop, err := telemetry.InitTracing(context.Background(), "tessera-test")
	if err != nil {
		t.Fatal(err)
	}
	defer stop(context.Background())

	c := testcluster.New(t, 1)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/traced", "1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"etcdserverpb.KV/Put", "tessera.shard.v1.Shard/Txn", "raft.propose"}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if names := col.traceWith(want...); names != nil {
			t.Logf("one trace: %v", names)
			return
		}
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	t.Fatalf("no trace has %v; traces received: %v", want, col.traces)
}
