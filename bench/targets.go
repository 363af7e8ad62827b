package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	dblogger "github.com/lni/dragonboat/v4/logger"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/tessera-kv/tessera/services/gateway"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/services/watcher"
)

// Target names accepted by -targets.
const (
	targetEtcd       = "etcd"
	targetTesseraDev = "tessera-dev"
	targetTessera3   = "tessera-3"
	// One store and two watcher processes: watch streams spread over both.
	targetTesseraDev2W = "tessera-dev-2w"
)

// Targets "tessera-dev-Ns" (N of 2, 4, 8): one store with N data shards, the
// put workloads' keys cut evenly among them.
var shardTargets = map[string]int{"tessera-dev-2s": 2, "tessera-dev-4s": 4, "tessera-dev-8s": 8}

// Targets of one server process each, so that CPU and memory are the
// server's alone: etcd (this binary, serving embedded etcd) and tessera dev.
const (
	targetEtcdProc  = "etcd-proc"
	targetDevProc   = "dev-proc"
	targetEtcd3Proc = "etcd-3-proc" // three etcd processes: procs-3's baseline
)

var allTargets = []string{targetEtcd, targetTesseraDev, targetTessera3, targetTesseraDev2W, "tessera-dev-2s", "tessera-dev-4s", "tessera-dev-8s", "procs-3", "procs-6", targetEtcdProc, targetDevProc, targetEtcd3Proc, "procs-3-1s"}

// defaultTargets are the two shapes the goals are stated for, each server
// a process of its own so that its CPU and memory are its own: tessera dev
// against one etcd, three stores (and a gateway, a watcher) against three
// etcd members.
var defaultTargets = []string{targetEtcdProc, targetDevProc, targetEtcd3Proc, "procs-3-1s"}

// baselineOf is the etcd target a target's row is compared with.
func baselineOf(target string) string {
	if target == targetDevProc || target == targetEtcdProc {
		return targetEtcdProc
	}
	if _, ok := procTargets[target]; ok || target == targetEtcd3Proc {
		return targetEtcd3Proc
	}
	return targetEtcd
}

// splitKeys cuts the put workloads' key space into n shards.
func splitKeys(n int) []string {
	var keys []string
	for i := 1; i < n; i++ {
		keys = append(keys, fmt.Sprintf("%s%08d", putPrefix, i*putKeySpace/n))
	}
	return keys
}

// running is a started target: its client endpoints and how to stop it.
type running struct {
	name      string
	endpoints []string
	// stop shuts the target down and removes its data; safe to call twice.
	stop func()
	// watchLoad describes each watcher's load (Tessera targets only).
	watchLoad func() string
	// procCPU reads each server process's CPU so far, and procMem their
	// resident memory (total, anonymous) now: targets of separate
	// processes only.
	procCPU func() map[string]time.Duration
	procMem func() (rss, anon int64)
	// diskUsage is the disk space the servers' data takes now (targets of
	// separate processes only).
	diskUsage func() int64
	// profileURL serves the server's CPU profile (dev-proc with
	// -cpuprofile-dir).
	profileURL string
}

// startTarget starts the named target with its data under a fresh temp dir.
func startTarget(name string, log *slog.Logger) (*running, error) {
	dir, err := os.MkdirTemp("", "tessera-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	var r *running
	switch name {
	case targetEtcd:
		r, err = startEtcd(dir)
	case targetTesseraDev:
		r, err = startTessera(dir, 1, 1, nil, log)
	case targetTessera3:
		r, err = startTessera(dir, 3, 1, nil, log)
	case targetTesseraDev2W:
		r, err = startTessera(dir, 1, 2, nil, log)
	case targetEtcdProc:
		r, err = startEtcdProc(dir, 1)
	case targetEtcd3Proc:
		r, err = startEtcdProc(dir, 3)
	case targetDevProc:
		r, err = startDevProc(dir)
	default:
		if n, ok := shardTargets[name]; ok {
			r, err = startTessera(dir, 1, 1, splitKeys(n), log)
		} else if shape, ok := procTargets[name]; ok {
			r, err = startProcs(dir, shape)
		} else {
			err = fmt.Errorf("unknown target %q", name)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r.name = name
	stop := r.stop
	done := false
	r.stop = func() {
		if done {
			return
		}
		done = true
		stop()
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "bench: remove %s: %v\n", dir, err)
		}
	}
	if err := waitReady(r.endpoints, 60*time.Second); err != nil {
		r.stop()
		return nil, fmt.Errorf("%s not ready: %w", name, err)
	}
	return r, nil
}

// freePorts returns n distinct loopback host:ports that were free just now.
func freePorts(n int) ([]string, error) {
	// Hold all listeners until every port is chosen so they are distinct.
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// startEtcd starts a one-member etcd with go.etcd.io/etcd/server/v3/embed,
// default settings (fsync on, 100ms heartbeat), logging errors only.
func startEtcd(dir string) (*running, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	return startEtcdAt(dir, "bench", ports[0], ports[1], "")
}

// startEtcdAt starts etcd member name serving clients at client and peers
// at peer, in a cluster of initialCluster (etcd's --initial-cluster; empty:
// this member alone).
func startEtcdAt(dir, name, client, peer, initialCluster string) (*running, error) {
	cu, _ := url.Parse("http://" + client)
	pu, _ := url.Parse("http://" + peer)
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = filepath.Join(dir, "etcd-"+name)
	cfg.LogLevel = "error"
	// Log errors to stderr, but silence the listener errors etcd reports
	// while it closes (raise the level before Close).
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	zc.DisableStacktrace = true
	lg, err := zc.Build()
	if err != nil {
		return nil, err
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cmp.Or(initialCluster, cfg.InitialClusterFromName(cfg.Name))
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	stop := func() {
		zc.Level.SetLevel(zap.FatalLevel)
		e.Close()
		lg.Sync()
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		stop()
		return nil, fmt.Errorf("etcd failed: %w", err)
	case <-time.After(60 * time.Second):
		stop()
		return nil, errors.New("etcd took too long to start")
	}
	return &running{endpoints: []string{cu.String()}, stop: stop}, nil
}

// startTessera starts n replica stores (with data shards cut at splitKeys)
// and one gateway in this process.
func startTessera(dir string, n, watchers int, splitKeys []string, log *slog.Logger) (*running, error) {
	ports, err := freePorts(2*n + watchers)
	if err != nil {
		return nil, err
	}
	var members []replica.Member
	for i := 0; i < n; i++ {
		members = append(members, replica.Member{ID: uint64(i + 1), RaftAddress: ports[2*i], APIAddress: ports[2*i+1]})
	}
	var reps []*replica.Replica
	var gw *gateway.Gateway
	var ws []*watcher.Watcher
	stop := func() {
		if gw != nil {
			gw.Close()
		}
		for _, w := range ws {
			w.Close()
		}
		// Stores stopping one by one make the others' Raft transport log
		// connection errors; they are expected here.
		tl := dblogger.GetLogger("transport")
		tl.SetLevel(dblogger.CRITICAL)
		for _, r := range reps {
			r.Close()
		}
		tl.SetLevel(dblogger.ERROR)
	}
	var apis []string
	for _, m := range members {
		cfg := replica.DefaultConfig()
		cfg.StoreID, cfg.RaftAddress, cfg.APIAddress, cfg.Cluster = m.ID, m.RaftAddress, m.APIAddress, members
		cfg.InitialSplitKeys = splitKeys
		cfg.DataDir = filepath.Join(dir, fmt.Sprintf("store%d", m.ID))
		if n == 1 {
			cfg.RTTMillisecond, cfg.ElectionRTT = 10, 10
		} else {
			cfg.RTTMillisecond, cfg.ElectionRTT = 50, 10
		}
		cfg.Logger = log
		r, err := replica.Start(cfg)
		if err != nil {
			stop()
			return nil, fmt.Errorf("start store %d: %w", m.ID, err)
		}
		reps = append(reps, r)
		apis = append(apis, m.APIAddress)
	}
	var waddrs []string
	for i := 0; i < watchers; i++ {
		w, err := watcher.Start(watcher.Config{Replicas: apis, APIAddress: ports[2*n+i], Logger: log})
		if err != nil {
			stop()
			return nil, fmt.Errorf("start watcher: %w", err)
		}
		ws = append(ws, w)
		waddrs = append(waddrs, w.APIAddr())
	}
	gw, err = gateway.Start(gateway.Config{ListenClientURLs: []string{"http://127.0.0.1:0"}, Replicas: apis, Watchers: waddrs,
		ClusterName: "bench", Name: "gw0", Logger: log})
	if err != nil {
		stop()
		return nil, fmt.Errorf("start gateway: %w", err)
	}
	load := func() string {
		var parts []string
		for i, w := range ws {
			st := w.Stats()
			parts = append(parts, fmt.Sprintf("watcher%d: %d streams, %d responses sent", i+1, st.Streams, st.ResponsesSent))
		}
		return strings.Join(parts, "; ")
	}
	return &running{endpoints: gw.ClientURLs(), stop: stop, watchLoad: load}, nil
}

// waitReady retries a linearizable Get until it succeeds.
func waitReady(endpoints []string, timeout time.Duration) error {
	cli, err := newClient(endpoints)
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "bench-ready-probe")
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func newClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// newClients opens n clients (n gRPC connections) to the endpoints.
func newClients(endpoints []string, n int) ([]*clientv3.Client, error) {
	clis := make([]*clientv3.Client, 0, n)
	for i := 0; i < n; i++ {
		c, err := newClient(endpoints)
		if err != nil {
			closeClients(clis)
			return nil, err
		}
		clis = append(clis, c)
	}
	return clis, nil
}

func closeClients(clis []*clientv3.Client) {
	for _, c := range clis {
		c.Close()
	}
}
