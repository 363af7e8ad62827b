package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// memberURLs is what MemberList on endpoint says: every member's client
// URLs.
func memberURLs(t *testing.T, endpoint string) []string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	r, err := cli.MemberList(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, m := range r.Members {
		urls = append(urls, m.ClientURLs...)
	}
	slices.Sort(urls)
	return urls
}

func waitMembers(t *testing.T, endpoint string, want []string, within time.Duration) {
	t.Helper()
	slices.Sort(want)
	var got []string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got = memberURLs(t, endpoint); slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("MemberList on %s: %v, want %v", endpoint, got, want)
}

// Every gateway lists every live gateway, and all name the same leader;
// a gateway that shuts down leaves the list at once, and the watches it
// served move to another gateway without losing an event.
func TestGatewayTier(t *testing.T) {
	c := testcluster.New(t, 1)
	first, second := c.Endpoints()[0], c.StartGateway()[0]
	both := []string{first, second}
	waitMembers(t, first, both, 10*time.Second)
	waitMembers(t, second, both, 10*time.Second)

	cli := c.Client(t)
	leaders := map[uint64]bool{}
	ids := map[uint64]bool{}
	for _, ep := range both {
		st, err := cli.Status(ctxT(t), ep)
		if err != nil {
			t.Fatal(err)
		}
		leaders[st.Leader], ids[st.Header.MemberId] = true, true
	}
	if len(leaders) != 1 || len(ids) != 2 {
		t.Fatalf("Status: leaders %v (want one), member IDs %v (want two)", leaders, ids)
	}

	// A watch through the second gateway, whose client knows the first too.
	wcli, err := clientv3.New(clientv3.Config{Endpoints: []string{second}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer wcli.Close()
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := wcli.Watch(wctx, "/drain/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if r := <-wch; !r.Created {
		t.Fatalf("watch not created: %+v", r)
	}
	wcli.SetEndpoints(second, first)

	const n = 200
	written := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if _, err := cli.Put(ctxT(t), fmt.Sprintf("/drain/%03d", i), "v"); err != nil {
				written <- err
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		written <- nil
	}()
	time.Sleep(200 * time.Millisecond)
	began := time.Now()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	c.Gateway(1).Shutdown(sctx)
	scancel()
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("shutdown with an open watch took %s", d)
	}
	// Well before its registration would expire (members.TTL, 10 s).
	waitMembers(t, first, []string{first}, 2*time.Second)
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	seen := 0
	timeout := time.After(20 * time.Second)
	for seen < n {
		select {
		case r := <-wch:
			if err := r.Err(); err != nil {
				t.Fatalf("watch after the drain: %v", err)
			}
			for _, ev := range r.Events {
				if want := fmt.Sprintf("/drain/%03d", seen); string(ev.Kv.Key) != want {
					t.Fatalf("event %d is %s, want %s", seen, ev.Kv.Key, want)
				}
				seen++
			}
		case <-timeout:
			t.Fatalf("the watch saw %d of %d events after its gateway drained", seen, n)
		}
	}
}
