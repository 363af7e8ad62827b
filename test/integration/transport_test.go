package integration

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// A client that pings more often than gRPC's default enforcement allows
// (every 5 minutes), but not more often than etcd's keepalive minimum (5 s),
// keeps its connection: kube-apiserver pings every 30 s, and clientv3 users
// set DialKeepAliveTime freely. Under gRPC's default policy the server
// closes such a connection (GOAWAY too_many_pings) at the fourth ping.
func TestKeepalivePingsAllowed(t *testing.T) {
	if testing.Short() {
		t.Skip("waits through four client pings (gRPC clients ping at most every 10 s)")
	}
	t.Parallel() // it mostly waits
	c := testcluster.New(t, 1)
	// Count the connections the client opens: a GOAWAY makes it dial again.
	var dials atomic.Int32
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second, PermitWithoutStream: true,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dialer)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctxT(t), "/ka", "1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(45 * time.Second)
	if _, err := cli.Put(ctxT(t), "/ka", "2"); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("the client connected %d times: the gateway closed a connection that only pinged", n)
	}
}

// A request over --max-request-bytes is refused before any other work,
// reads too (etcd checks only what it proposes to Raft: a documented
// difference), and a REST body over the limit is refused without being
// read whole; the gateway keeps serving.
func TestRequestSizeLimits(t *testing.T) {
	c := testcluster.New(t, 1)
	cli := c.Client(t)
	if _, err := cli.Get(ctxT(t), strings.Repeat("r", 1536*1024+1)); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("get with a key over the request limit: %v", err)
	}
	base := c.Endpoints()[0]
	big := `{"key":"Zm9v","value":"` + strings.Repeat("A", 3<<20) + `"}`
	resp, err := http.Post(base+"/v3/kv/put", "application/json", bytes.NewReader([]byte(big)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("a 3 MiB REST body was accepted")
	}
	resp, err = http.Post(base+"/v3/kv/put", "application/json", strings.NewReader(`{"key":"Zm9v","value":"YmFy"}`))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("put after the refused body: %v %v", resp, err)
	}
	resp.Body.Close()
}
