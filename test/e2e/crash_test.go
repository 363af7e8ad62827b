package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/test/netns"
)

// ack is one acknowledged write.
type ack struct {
	key, val string
	rev      int64
	at       time.Time // when the write was sent
}

// verifyAcks checks that every acknowledged write is readable through cli
// with its value and mod_revision, and that no revision was acknowledged
// twice. It returns the largest acknowledged revision. attempts, if not nil,
// tells how many times the client sent a key's Put on the wire.
func verifyAcks(t *testing.T, cli *clientv3.Client, prefix string, acks []ack, attempts func(key string) int) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get prefix %q: %v", prefix, err)
	}
	got := map[string]struct {
		val      string
		mod, cre int64
		ver      int64
	}{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = struct {
			val      string
			mod, cre int64
			ver      int64
		}{string(kv.Value), kv.ModRevision, kv.CreateRevision, kv.Version}
	}
	byRev := map[int64]string{}
	var maxRev int64
	bad := 0
	for _, a := range acks {
		if k, dup := byRev[a.rev]; dup {
			t.Errorf("revision %d acknowledged for both %q and %q", a.rev, k, a.key)
		}
		byRev[a.rev] = a.key
		maxRev = max(maxRev, a.rev)
		g, ok := got[a.key]
		switch {
		case !ok:
			t.Errorf("acknowledged write %q=%q (rev %d) is missing", a.key, a.val, a.rev)
			bad++
		case g.val != a.val || g.mod != a.rev || g.cre != a.rev || g.ver != 1:
			sent := "?"
			if attempts != nil {
				sent = fmt.Sprint(attempts(a.key))
			}
			t.Errorf("acknowledged write %q=%q rev %d (client sent it %s time(s)): read value %q mod_revision %d create_revision %d version %d",
				a.key, a.val, a.rev, sent, g.val, g.mod, g.cre, g.ver)
			bad++
		}
		if bad > 20 {
			t.Fatalf("too many bad writes; stopping")
		}
	}
	if resp.Header.Revision < maxRev {
		t.Errorf("range header revision %d below the largest acknowledged revision %d", resp.Header.Revision, maxRev)
	}
	// Spot-check single-key linearizable Gets too (the path kube-apiserver uses).
	for i := 0; i < len(acks); i += max(1, len(acks)/20) {
		a := acks[i]
		r, err := cli.Get(ctx, a.key)
		if err != nil {
			t.Fatalf("get %q: %v", a.key, err)
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != a.val || r.Kvs[0].ModRevision != a.rev {
			t.Errorf("get %q: %v, want value %q mod_revision %d", a.key, r.Kvs, a.val, a.rev)
		}
	}
	return maxRev
}

// TestDevKill9Restart: acknowledged writes to "tessera dev" survive kill -9,
// and revisions keep increasing after the restart.
func TestDevKill9Restart(t *testing.T) {
	if testing.Short() {
		t.Skip("kill/restart test skipped in -short mode")
	}
	d := newDevNode(t)
	d.start(t)
	cli := newClient(t, d.endpoint())

	const writers, minAcks = 4, 200
	var (
		mu     sync.Mutex
		acks   []ack
		nAck   atomic.Int64
		killed atomic.Bool
		wg     sync.WaitGroup
		stopCh = make(chan struct{})
	)
	// Writers keep going until the process dies under them, so the kill
	// lands while writes are in flight.
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopCh:
					return
				default:
				}
				k, v := fmt.Sprintf("kill9/w%d/%05d", w, i), fmt.Sprintf("v-%d-%d", w, i)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				resp, err := cli.Put(ctx, k, v)
				cancel()
				if err != nil {
					if killed.Load() {
						return
					}
					// Before the kill every write must succeed.
					t.Errorf("put %s before kill: %v", k, err)
					return
				}
				mu.Lock()
				acks = append(acks, ack{key: k, val: v, rev: resp.Header.Revision})
				mu.Unlock()
				nAck.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for nAck.Load() < minAcks && time.Now().Before(deadline) && !t.Failed() {
		time.Sleep(5 * time.Millisecond)
	}
	if nAck.Load() < minAcks {
		close(stopCh)
		wg.Wait()
		t.Fatalf("only %d writes acknowledged in 30s", nAck.Load())
	}
	killed.Store(true)
	d.p.Kill() // kill -9 with writes in flight
	close(stopCh)
	wg.Wait()
	mu.Lock()
	before := append([]ack(nil), acks...)
	mu.Unlock()
	t.Logf("%d writes acknowledged before kill -9", len(before))

	d.start(t)
	cli2 := newClient(t, d.endpoint())
	maxRev := verifyAcks(t, cli2, "kill9/", before, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli2.Put(ctx, "kill9-after", "x")
	if err != nil {
		t.Fatalf("put after restart: %v", err)
	}
	if resp.Header.Revision <= maxRev {
		t.Errorf("write after restart got revision %d, not above the largest acknowledged revision %d", resp.Header.Revision, maxRev)
	}
	t.Logf("largest revision before kill %d, first after restart %d", maxRev, resp.Header.Revision)
}

// replicaNode is one "tessera replica" process.
type replicaNode struct {
	id                  int
	dataDir, raft, api  string
	p                   *proc
	initialClusterValue string
	host                *netns.Host // the namespace it runs in; nil: the test's own
	extraArgs           []string
}

func (r *replicaNode) start(t *testing.T) {
	t.Helper()
	bin, args := tesseraBin, []string{"replica", "--id", fmt.Sprint(r.id),
		"--data-dir", r.dataDir, "--raft-address", r.raft, "--api-address", r.api,
		"--initial-cluster", r.initialClusterValue}
	args = append(args, r.extraArgs...)
	if r.host != nil {
		bin, args = r.host.Command(bin, args...)
	}
	r.p = startProc(t, fmt.Sprintf("replica%d", r.id), bin, args...)
}

// procCluster is three "tessera replica" processes, a watcher and a
// gateway, each its own process.
type procCluster struct {
	reps          []*replicaNode
	watcher, gw   *proc
	url           string
	apis          []string
	watcherAddr   string
	watcherListen string
	gwArgs        []string
	tierArgs      []string // for the watcher and the gateway
}

// startProcCluster starts the cluster and waits until the gateway serves;
// gwArgs are extra gateway flags.
func startProcCluster(t *testing.T, gwArgs ...string) *procCluster {
	t.Helper()
	return startProcClusterOn(t, nil, gwArgs...)
}

// startProcClusterOn is startProcCluster with replica i in hosts[i] (its
// own network namespace, on etcd's ports) when hosts is not nil.
func startProcClusterOn(t *testing.T, hosts []*netns.Host, gwArgs ...string) *procCluster {
	t.Helper()
	return startProcClusterWith(t, hosts, nil, nil, gwArgs...)
}

// startProcClusterWith is startProcClusterOn with extra flags for each
// replica (replicaArgs[i], if any) and for the watcher and the gateway.
func startProcClusterWith(t *testing.T, hosts []*netns.Host, replicaArgs [][]string, tierArgs []string, gwArgs ...string) *procCluster {
	t.Helper()
	base := t.TempDir()
	pc := &procCluster{url: "http://" + freePort(t), watcherAddr: freePort(t), watcherListen: freePort(t), gwArgs: gwArgs, tierArgs: tierArgs}
	var members []string
	for i := 0; i < 3; i++ {
		r := &replicaNode{id: i + 1, dataDir: fmt.Sprintf("%s/store%d", base, i+1), raft: freePort(t), api: freePort(t)}
		if hosts != nil {
			r.host, r.raft, r.api = hosts[i], hosts[i].IP+":2380", hosts[i].IP+":2379"
		}
		if i < len(replicaArgs) {
			r.extraArgs = replicaArgs[i]
		}
		pc.reps = append(pc.reps, r)
		members = append(members, fmt.Sprintf("%d=%s/%s", i+1, r.raft, r.api))
		pc.apis = append(pc.apis, r.api)
	}
	for _, r := range pc.reps {
		r.initialClusterValue = strings.Join(members, ",")
		r.start(t)
	}
	pc.startServing(t)
	return pc
}

// startServing starts the watcher and the gateway and waits for them.
func (pc *procCluster) startServing(t *testing.T) {
	t.Helper()
	pc.startWatcher(t)
	pc.startGateway(t)
	waitReady(t, pc.url, 60*time.Second, pc.gw, pc.watcher, pc.reps[0].p, pc.reps[1].p, pc.reps[2].p)
}

// startWatcher (re)starts the watcher process on its addresses.
func (pc *procCluster) startWatcher(t *testing.T) {
	t.Helper()
	pc.watcher = startProc(t, "watcher", tesseraBin, append([]string{"watcher", "--replicas", strings.Join(pc.apis, ","),
		"--api-address", pc.watcherAddr, "--listen-address", pc.watcherListen}, pc.tierArgs...)...)
}

// startGateway (re)starts the gateway process on its client URL.
func (pc *procCluster) startGateway(t *testing.T) {
	t.Helper()
	pc.gw = startProc(t, "gateway", tesseraBin, append(append([]string{"gateway", "--listen-client-urls", pc.url,
		"--replicas", strings.Join(pc.apis, ","), "--watchers", pc.watcherAddr}, pc.gwArgs...), pc.tierArgs...)...)
}

// restartAll stops every process and starts them again on the same data.
func (pc *procCluster) restartAll(t *testing.T) {
	t.Helper()
	pc.gw.Stop()
	pc.watcher.Stop()
	for _, r := range pc.reps {
		r.p.Stop()
	}
	for _, r := range pc.reps {
		r.start(t)
	}
	pc.startServing(t)
}

// shardLeader asks the replica's Meta API who leads shard; 0 if unknown.
func shardLeader(apiAddr string, shard uint64) (uint64, error) {
	conn, err := grpc.NewClient(apiAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := metapb.NewMetaClient(conn).GetShardMap(ctx, &metapb.GetShardMapRequest{})
	if err != nil {
		return 0, err
	}
	return resp.Leaders[shard], nil
}

const dataShardID = 2

// TestThreeReplicaKillLeader: three replica processes and a gateway; the
// data shard's leader is killed with SIGKILL under a write load; writes
// resume, the replica is restarted, and every acknowledged write is there.
func TestThreeReplicaKillLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("three-replica failover test skipped in -short mode")
	}
	pc := startProcCluster(t)
	reps, gwURL := pc.reps, pc.url

	// Find the data shard's leader as every live replica sees it.
	findLeader := func(live []*replicaNode, timeout time.Duration) *replicaNode {
		t.Helper()
		deadline := time.Now().Add(timeout)
		var lastErr error
		for time.Now().Before(deadline) {
			var seen []uint64
			for _, r := range live {
				l, err := shardLeader(r.api, dataShardID)
				if err != nil {
					lastErr = err
					break
				}
				seen = append(seen, l)
			}
			if len(seen) == len(live) && seen[0] != 0 {
				agree := true
				for _, l := range seen {
					agree = agree && l == seen[0]
				}
				if agree {
					for _, r := range live {
						if uint64(r.id) == seen[0] {
							return r
						}
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("no agreed leader of shard %d within %v (last error %v)", dataShardID, timeout, lastErr)
		return nil
	}
	leader := findLeader(reps, 20*time.Second)
	metaLeader, _ := shardLeader(leader.api, 1)
	t.Logf("store %d leads data shard %d; store %d leads the meta shard (0: not known yet)", leader.id, dataShardID, metaLeader)

	// Count every Put the client puts on the wire (the interceptor runs
	// inside clientv3's retry interceptor), to tell client retries from
	// server-side ones.
	var sent sync.Map // key -> *atomic.Int64
	countPuts := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var key []byte
		switch r := req.(type) {
		case *etcdserverpb.PutRequest:
			key = r.Key
		case *etcdserverpb.TxnRequest:
			if len(r.Compare) > 0 {
				key = r.Compare[0].Key
			}
		}
		if key != nil {
			n, _ := sent.LoadOrStore(string(key), new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	sentCount := func(k string) int {
		if n, ok := sent.Load(k); ok {
			return int(n.(*atomic.Int64).Load())
		}
		return 0
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{gwURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(countPuts)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	// A watch over everything the writers write stays open through the kill.
	startResp, err := cli.Put(context.Background(), "fo-start", "x")
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := cli.Watch(wctx, "fo/", clientv3.WithPrefix(), clientv3.WithRev(startResp.Header.Revision))
	const writers = 3
	var (
		mu       sync.Mutex
		perW     = make([][]ack, writers)
		failures atomic.Int64
		wg       sync.WaitGroup
		stopCh   = make(chan struct{})
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopCh:
					return
				default:
				}
				// A fresh key per attempt: a write whose answer was lost may
				// or may not have applied, and must not blur the check.
				k, v := fmt.Sprintf("fo/w%d/%05d", w, i), fmt.Sprintf("v-%d-%d", w, i)
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				var rev int64
				if w == writers-1 {
					// kube-apiserver's create: a txn that puts only if the key
					// does not exist yet. The key is fresh, so it must succeed.
					resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
						Then(clientv3.OpPut(k, v)).Commit()
					cancel()
					if err != nil {
						failures.Add(1)
						time.Sleep(50 * time.Millisecond)
						continue
					}
					if !resp.Succeeded {
						t.Errorf("create txn of the fresh key %q (sent %d time(s)) answered succeeded=false at revision %d",
							k, sentCount(k), resp.Header.Revision)
						continue
					}
					rev = resp.Header.Revision
				} else {
					resp, err := cli.Put(ctx, k, v)
					cancel()
					if err != nil {
						failures.Add(1)
						time.Sleep(50 * time.Millisecond)
						continue
					}
					rev = resp.Header.Revision
				}
				mu.Lock()
				perW[w] = append(perW[w], ack{key: k, val: v, rev: rev, at: start})
				mu.Unlock()
			}
		}()
	}
	stopWriters := func() {
		select {
		case <-stopCh:
		default:
			close(stopCh)
		}
		wg.Wait()
	}
	t.Cleanup(stopWriters)
	countAcks := func(after time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, as := range perW {
			for _, a := range as {
				if a.at.After(after) {
					n++
				}
			}
		}
		return n
	}
	waitAcks := func(what string, after time.Time, n int, timeout time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for countAcks(after) < n {
			if time.Since(start) > timeout {
				t.Fatalf("%s: only %d of %d writes acknowledged within %v (%d failed attempts)",
					what, countAcks(after), n, timeout, failures.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	}

	waitAcks("before kill", time.Time{}, 100, 30*time.Second)
	killAt := time.Now()
	leader.p.Kill()
	t.Logf("killed store %d (SIGKILL) after %d acknowledged writes", leader.id, countAcks(time.Time{}))
	took := waitAcks("after kill", killAt, 50, 30*time.Second)
	t.Logf("writes resumed: 50 writes sent after the kill acknowledged within %v (%d failed attempts so far)", took, failures.Load())

	var live []*replicaNode
	for _, r := range reps {
		if r != leader {
			live = append(live, r)
		}
	}
	newLeader := findLeader(live, 20*time.Second)
	t.Logf("store %d leads shard %d after the kill", newLeader.id, dataShardID)

	restartAt := time.Now()
	leader.start(t)
	// The restarted store must rejoin (see a leader) and writes continue.
	findLeader(reps, 30*time.Second)
	waitAcks("after restart", restartAt, 50, 30*time.Second)
	stopWriters()

	var all []ack
	for w, as := range perW {
		for i := 1; i < len(as); i++ {
			if as[i].rev <= as[i-1].rev {
				t.Errorf("writer %d: write %q acknowledged with revision %d after %q with revision %d",
					w, as[i].key, as[i].rev, as[i-1].key, as[i-1].rev)
			}
		}
		all = append(all, as...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].rev < all[j].rev })
	t.Logf("%d writes acknowledged, %d failed attempts; revisions %d..%d", len(all), failures.Load(), all[0].rev, all[len(all)-1].rev)
	maxRev := verifyAcks(t, cli, "fo/", all, sentCount)
	verifyWatch(t, wch, all, maxRev)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Put(ctx, "fo-final", "x")
	if err != nil {
		t.Fatalf("final put: %v", err)
	}
	if resp.Header.Revision <= maxRev {
		t.Errorf("final write got revision %d, not above %d", resp.Header.Revision, maxRev)
	}
}

// verifyWatch reads wch up to revision last: events come in increasing
// revision order, once each, and include every acknowledged write.
func verifyWatch(t *testing.T, wch clientv3.WatchChan, acks []ack, last int64) {
	t.Helper()
	got := map[int64]string{}
	var prev int64
	timeout := time.After(30 * time.Second)
	for prev < last {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				t.Fatalf("watch ended at revision %d: %v", prev, wr.Err())
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= prev {
					t.Fatalf("watch event at revision %d after %d", ev.Kv.ModRevision, prev)
				}
				prev = ev.Kv.ModRevision
				got[prev] = string(ev.Kv.Key) + "=" + string(ev.Kv.Value)
			}
		case <-timeout:
			t.Fatalf("watch reached revision %d of %d", prev, last)
		}
	}
	for _, a := range acks {
		if got[a.rev] != a.key+"="+a.val {
			t.Fatalf("acknowledged write %s=%s at %d: watch has %q", a.key, a.val, a.rev, got[a.rev])
		}
	}
	t.Logf("the watch saw all %d acknowledged writes, in order, once each", len(acks))
}
