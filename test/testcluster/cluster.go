// Package testcluster starts a Tessera cluster inside the test process: N
// replica stores (each a dragonboat NodeHost and a Badger store of its own,
// on loopback ports), one watcher and one gateway. Stores can be stopped and
// restarted on the same data to exercise leader failover and recovery, and
// every Raft message and internal gRPC connection crosses a fault network
// (Net) that can cut, one way or both, or delay any link between them.
package testcluster

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/services/gateway"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/services/watcher"
)

// Cluster is a running in-process cluster.
type Cluster struct {
	t         testing.TB
	dir       string
	members   []replica.Member
	replicas  []*replica.Replica // nil while stopped
	gateway   *gateway.Gateway
	gcfg      gateway.Config
	extra     []*gateway.Gateway // StartGateway's
	watcher   *watcher.Watcher   // nil while stopped
	wcfg      watcher.Config
	quota     int64
	splitKeys []string
	rf        int
	balance   time.Duration
	log       *slog.Logger
	net       *Net
}

// Options tune a cluster.
type Options struct {
	// Limits pass through to the gateway (its defaults if zero).
	Limits gateway.Limits
	// Cache bounds the watcher's history and streams (defaults if zero).
	Cache watcher.CacheConfig
	// QuotaBytes is each store's space quota (etcd's default if zero).
	QuotaBytes int64
	// Auth passes through to the gateways (bcrypt cost 4 if zero: tests
	// need not pay for strong hashes).
	Auth gateway.AuthConfig
	// SplitKeys cut the keyspace into data shards at bootstrap.
	SplitKeys []string
	// ReplicationFactor: stores per data shard (the replica's default, 3,
	// if zero).
	ReplicationFactor int
	// Zones label store i zone=Zones[i%len(Zones)] (none if empty).
	Zones []string
	// BalanceInterval passes through to the stores (their default if
	// zero).
	BalanceInterval time.Duration
	// RestoreFrom, a backup file, is restored into every store before it
	// first starts (as tessera snapshot restore does).
	RestoreFrom string
}

var handedOut struct {
	sync.Mutex
	ports map[string]bool
}

// FreePort returns a loopback address with a port that was free just now
// and that no earlier call of this process returned (the kernel may offer
// a port again once its listener closed, and a test that takes several
// ports before it binds them must not get one twice).
func FreePort(t testing.TB) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[string]bool{}
	}
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.ports[addr] {
			handedOut.ports[addr] = true
			return addr
		}
	}
}

// New starts n stores and a gateway; everything stops at test cleanup.
func New(t testing.TB, n int, opts ...Options) *Cluster {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	c := &Cluster{t: t, dir: t.TempDir(), replicas: make([]*replica.Replica, n), quota: o.QuotaBytes,
		splitKeys: o.SplitKeys, rf: o.ReplicationFactor, balance: o.BalanceInterval, log: logger(), net: NewNet()}
	for i := 0; i < n; i++ {
		m := replica.Member{ID: uint64(i + 1), RaftAddress: FreePort(t), APIAddress: FreePort(t)}
		if len(o.Zones) > 0 {
			m.Labels = map[string]string{"zone": o.Zones[i%len(o.Zones)]}
		}
		c.members = append(c.members, m)
		c.net.Register(m.RaftAddress, c.StoreName(i))
		c.net.Register(m.APIAddress, c.StoreName(i))
	}
	t.Cleanup(c.Close)
	for i, m := range c.members {
		if o.RestoreFrom == "" {
			break
		}
		if _, err := replica.RestoreBackup(o.RestoreFrom, c.storeDir(m), m.ID, c.members, cmp.Or(c.rf, replica.DefaultReplicationFactor), nil); err != nil {
			t.Fatalf("restore store %d: %v", i+1, err)
		}
	}
	for i := range c.members {
		c.StartReplica(i)
	}
	var apis []string
	for _, m := range c.members {
		apis = append(apis, m.APIAddress)
	}
	c.wcfg = watcher.Config{Replicas: apis, APIAddress: FreePort(t), Cache: o.Cache, RefreshInterval: time.Second,
		Peer: rpcconn.Peer{Dialer: c.net.Dialer(WatcherName)}, Logger: c.log}
	c.net.Register(c.wcfg.APIAddress, WatcherName)
	c.StartWatcher()
	if o.Auth.BcryptCost == 0 {
		o.Auth.BcryptCost = 4
	}
	c.gcfg = gateway.Config{ListenClientURLs: []string{"http://127.0.0.1:0"}, Replicas: apis, Watchers: []string{c.wcfg.APIAddress},
		ClusterName: "test", Name: "gw0", Limits: o.Limits, Auth: o.Auth, Peer: rpcconn.Peer{Dialer: c.net.Dialer(GatewayName)}, Logger: c.log}
	g, err := gateway.Start(c.gcfg)
	if err != nil {
		t.Fatal(err)
	}
	c.gateway = g
	c.WaitReady()
	return c
}

// StartGateway starts one more gateway, like the first, stopped at cleanup,
// and returns its client URLs.
func (c *Cluster) StartGateway() []string {
	c.t.Helper()
	cfg := c.gcfg
	cfg.Name = fmt.Sprintf("gw%d", len(c.extra)+1)
	g, err := gateway.Start(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.extra = append(c.extra, g)
	return g.ClientURLs()
}

// Gateway is gateway i: 0 the first, then StartGateway's in order.
func (c *Cluster) Gateway(i int) *gateway.Gateway {
	if i == 0 {
		return c.gateway
	}
	return c.extra[i-1]
}

// ClientAs returns a client of the given endpoints (the first gateway's if
// none) that authenticates as user, closed at cleanup.
func (c *Cluster) ClientAs(t testing.TB, user, password string, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Username: user, Password: password, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Names of the nodes on the fault network besides the stores.
const (
	WatcherName = "watcher"
	GatewayName = "gateway"
)

// Net is the network between the cluster's nodes.
func (c *Cluster) Net() *Net { return c.net }

// StoreName is store i's (0-based) name on the fault network.
func (c *Cluster) StoreName(i int) string { return fmt.Sprintf("store%d", c.members[i].ID) }

// Isolate cuts store i from every other node, both ways, for the given
// traffic.
func (c *Cluster) Isolate(i int, t Traffic) {
	for _, other := range c.nodeNames() {
		if other != c.StoreName(i) {
			c.net.Partition(c.StoreName(i), other, t)
		}
	}
}

// Deafen cuts everything sent to store i, for the given traffic: it hears
// nothing, while what it sends still arrives.
func (c *Cluster) Deafen(i int, t Traffic) {
	for _, other := range c.nodeNames() {
		if other != c.StoreName(i) {
			c.net.Cut(other, c.StoreName(i), t)
		}
	}
}

func (c *Cluster) nodeNames() []string {
	names := []string{WatcherName, GatewayName}
	for i := range c.members {
		names = append(names, c.StoreName(i))
	}
	return names
}

// Replica returns store i (0-based), nil if stopped.
func (c *Cluster) Replica(i int) *replica.Replica { return c.replicas[i] }

// Size is the number of stores.
func (c *Cluster) Size() int { return len(c.members) }

// StartReplica (re)starts store i on its data dir.
func (c *Cluster) StartReplica(i int) {
	c.t.Helper()
	cfg := replica.DefaultConfig()
	m := c.members[i]
	cfg.StoreID, cfg.RaftAddress, cfg.APIAddress, cfg.Cluster = m.ID, m.RaftAddress, m.APIAddress, c.members
	cfg.InitialSplitKeys, cfg.ReplicationFactor, cfg.BalanceInterval = c.splitKeys, c.rf, c.balance
	cfg.DataDir = c.storeDir(m)
	cfg.RTTMillisecond, cfg.ElectionRTT = 50, 10
	if c.quota > 0 {
		cfg.QuotaBytes = c.quota
	}
	cfg.Logger = c.log
	cfg.RaftTransport, cfg.Peer.Dialer = c.net.RaftTransport(c.StoreName(i)), c.net.Dialer(c.StoreName(i))
	r, err := replica.Start(cfg)
	if err != nil {
		c.t.Fatalf("start store %d: %v", m.ID, err)
	}
	c.replicas[i] = r
}

func (c *Cluster) storeDir(m replica.Member) string {
	return filepath.Join(c.dir, fmt.Sprintf("store%d", m.ID))
}

// StartWatcher (re)starts the watcher on its address.
func (c *Cluster) StartWatcher() {
	c.t.Helper()
	w, err := watcher.Start(c.wcfg)
	if err != nil {
		c.t.Fatalf("start watcher: %v", err)
	}
	c.watcher = w
}

// StopWatcher stops the watcher: open watch streams break.
func (c *Cluster) StopWatcher() {
	if c.watcher != nil {
		c.watcher.Close()
		c.watcher = nil
	}
}

// Watcher is the running watcher, nil if stopped.
func (c *Cluster) Watcher() *watcher.Watcher { return c.watcher }

// StopReplica stops store i (its data stays).
func (c *Cluster) StopReplica(i int) {
	if r := c.replicas[i]; r != nil {
		r.Close()
		c.replicas[i] = nil
	}
}

// LeaderIndex is the index of the store leading shardID, or -1.
func (c *Cluster) LeaderIndex(shardID uint64) int {
	for _, r := range c.replicas {
		if r == nil {
			continue
		}
		if l := r.LeaderOf(shardID); l != 0 {
			for i, m := range c.members {
				if m.ID == l && c.replicas[i] != nil {
					return i
				}
			}
		}
	}
	return -1
}

// Endpoints are the gateway's client URLs.
func (c *Cluster) Endpoints() []string { return c.gateway.ClientURLs() }

// Client returns a clientv3 client of the gateway, closed at cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// WaitReady waits until a linearizable read succeeds through the gateway
// and the meta shard has a leader (leases, alarms and the revision oracle
// need it).
func (c *Cluster) WaitReady() {
	c.t.Helper()
	cli := c.Client(c.t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "tessera-ready-probe")
		cancel()
		if err == nil && c.LeaderIndex(replica.MetaShardID) < 0 {
			err = fmt.Errorf("the meta shard has no leader")
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logger discards the cluster's logs unless TESTCLUSTER_LOG is set (to
// debug, info, warn or error), when they go to stderr at that level.
func logger() *slog.Logger {
	v := os.Getenv("TESTCLUSTER_LOG")
	if v == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(v)); err != nil {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Close stops everything.
func (c *Cluster) Close() {
	c.net.Heal()
	for _, g := range c.extra {
		g.Close()
	}
	c.extra = nil
	if c.gateway != nil {
		c.gateway.Close()
		c.gateway = nil
	}
	c.StopWatcher()
	for i := range c.replicas {
		c.StopReplica(i)
	}
}

// SplitShard splits the shard holding key at it through the gateway's
// Admin API, trying again (a store may be cut off) until ctx ends.
func (c *Cluster) SplitShard(ctx context.Context, key string) (*adminpb.SplitShardResponse, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	admin := adminpb.NewAdminClient(cli.ActiveConnection())
	for retried := false; ; retried = true {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := admin.SplitShard(actx, &adminpb.SplitShardRequest{SplitKey: []byte(key)})
		cancel()
		if retried && status.Code(err) == codes.AlreadyExists {
			// An attempt that timed out had split it.
			return c.shardAt(ctx, cli, key)
		}
		if err == nil || ctx.Err() != nil {
			return resp, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// shardAt describes the shard starting at key as a split response would.
func (c *Cluster) shardAt(ctx context.Context, cli *clientv3.Client, key string) (*adminpb.SplitShardResponse, error) {
	list, err := adminpb.NewAdminClient(cli.ActiveConnection()).ListShards(ctx, &adminpb.ListShardsRequest{})
	if err != nil {
		return nil, err
	}
	for i, s := range list.Shards {
		if string(s.Shard.StartKey) == key && i > 0 {
			return &adminpb.SplitShardResponse{Left: list.Shards[i-1].Shard, Right: s.Shard}, nil
		}
	}
	return nil, fmt.Errorf("testcluster: no shard starts at %q", key)
}
