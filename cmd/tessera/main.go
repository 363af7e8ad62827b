// Command tessera runs Tessera: "tessera dev" runs everything in one process;
// "tessera replica", "tessera gateway" and "tessera watcher" run the tiers as
// separate processes.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/pkg/telemetry"
	"github.com/tessera-kv/tessera/pkg/tlsconf"
	"github.com/tessera-kv/tessera/services/gateway"
	"github.com/tessera-kv/tessera/services/replica"
	"github.com/tessera-kv/tessera/services/watcher"
)

const usage = `tessera: an etcd v3 compatible store for Kubernetes control planes.

Usage:
  tessera dev      [--data-dir DIR] [--listen-client-urls URLS] [--initial-split-keys kubernetes]   everything in one process
  tessera replica  --id N (or --ordinal N) --data-dir DIR --raft-address A --api-address A --initial-cluster LIST [--replication-factor 3]
  tessera gateway  --listen-client-urls URLS --replicas ADDRS --watchers ADDRS
  tessera watcher  --replicas ADDRS --api-address A [--listen-address A]
  tessera snapshot save FILE [--endpoints URL]    take a backup through a gateway (or: --dir DIR --keep N)
  tessera snapshot restore FILE --data-dir DIR    restore a backup (or etcdctl snapshot save's) into a new cluster
  tessera snapshot status FILE                    check a backup and describe it
  tessera shard list [--endpoints URL]            every data shard: range, replicas, leader, revisions
  tessera shard split KEY [--endpoints URL]       split the shard holding KEY at it, online
  tessera store list [--endpoints URL]            every store: up or down, labels, replicas and leaders held
  tessera certs    [--dir DIR] [--hosts LIST]     create a CA and server, peer and client certificates
  tessera version                                 print the version (the git revision it was built from)

Run "tessera COMMAND --help" for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	switch os.Args[1] {
	case "dev", "replica", "gateway", "watcher":
		// Traces go out with OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
		stop, err := telemetry.InitTracing(context.Background(), "tessera-"+os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "tessera: tracing:", err)
			os.Exit(1)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stop(ctx)
		}()
	}
	var err error
	switch os.Args[1] {
	case "dev":
		err = runDev(os.Args[2:], log)
	case "replica":
		err = runReplica(os.Args[2:], log)
	case "gateway":
		err = runGateway(os.Args[2:], log)
	case "watcher":
		err = runWatcher(os.Args[2:], log)
	case "snapshot":
		err = runSnapshot(os.Args[2:])
	case "certs":
		err = runCerts(os.Args[2:])
	case "shard":
		err = runShard(os.Args[2:])
	case "store":
		err = runStore(os.Args[2:])
	case "version", "--version":
		fmt.Println(buildVersion())
		return
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "tessera: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tessera:", err)
		os.Exit(1)
	}
}

func waitForSignal() os.Signal {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	return <-c
}

// drainTimeout bounds a gateway's graceful shutdown: less than the 15 s
// that process supervisors (and the tests) wait before SIGKILL.
const drainTimeout = 10 * time.Second

// drain shuts a gateway down gracefully (see gateway.Shutdown).
func drain(g *gateway.Gateway) {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	g.Shutdown(ctx)
}

// serverFlags are the flags every server command has.
type serverFlags struct {
	memoryLimit *int64
}

// parseFlags parses a server's flags, with the ones every server has.
func parseFlags(fs *flag.FlagSet, args []string) serverFlags {
	prof := fs.Bool("enable-pprof", false, "serve Go's runtime profiles at /debug/pprof/ where /metrics is served (etcd's flag)")
	sf := serverFlags{memoryLimit: fs.Int64("memory-limit", -1, "soft limit of the process's memory in bytes, near which the Go runtime collects garbage harder (as GOMEMLIMIT, which wins if set); -1: the budget of this process's other flags (memtables, caches, watch history), at most 90 % of a container's limit; 0: none")}
	fs.Parse(args)
	if *prof {
		telemetry.EnableProfiling()
	}
	return sf
}

// limitMemory sets the process's soft memory limit: the flag's, or the
// budget derived from the other flags, kept under a container's limit.
// Without one, Go lets the heap grow to twice what is live before
// collecting, and keeps what it freed for a while: under a burst of writes
// that is gigabytes.
func (sf serverFlags) limitMemory(budget int64, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		n := debug.SetMemoryLimit(-1)
		telemetry.SetMemoryLimit(n)
		log.Info("memory limit from GOMEMLIMIT", "bytes", n)
		return
	}
	n := *sf.memoryLimit
	derived := n < 0
	var hardCap int64
	if derived {
		hard := cgroupMemoryLimit("/sys/fs/cgroup")
		n, hardCap = softLimit(budget, hard), hard/10*9
	}
	if n == 0 {
		return
	}
	debug.SetMemoryLimit(n)
	telemetry.SetMemoryLimit(n)
	log.Info("memory limit", "bytes", n, "MiB", n>>20)
	if derived {
		// The budget counts no client's memory: the limit follows live
		// memory up (memory.go). A limit given by flag is kept as given.
		go governMemory(n, hardCap, time.Second, log)
	}
}

// storeFlags size a store's Badger DB (dev and replica).
type storeFlags struct{ memtable, blockCache, indexCache *int64 }

func registerStore(fs *flag.FlagSet) storeFlags {
	d := mvcc.DefaultOptions()
	return storeFlags{
		memtable:   fs.Int64("store-memtable-bytes", d.MemTableSize, "size of one of the store's memtables; table builds hold about twelve of them at the peak of a write burst"),
		blockCache: fs.Int64("store-block-cache-bytes", d.BlockCacheSize, "the store's cache of table blocks"),
		indexCache: fs.Int64("store-index-cache-bytes", d.IndexCacheSize, "the store's cache of table indexes and Bloom filters (0: every index held in memory, which grows with the data)"),
	}
}

func (f storeFlags) apply(o *mvcc.Options) {
	o.MemTableSize, o.BlockCacheSize, o.IndexCacheSize = *f.memtable, *f.blockCache, *f.indexCache
}

// historyFlags bound the watcher's in-memory history (dev and watcher).
type historyFlags struct{ revs, bytes *int }

func registerHistory(fs *flag.FlagSet) historyFlags {
	d := watcher.DefaultCacheConfig()
	return historyFlags{
		revs:  fs.Int("history-revisions", d.HistoryRevisions, "revisions of events kept in memory for watches that start in the past or fall behind"),
		bytes: fs.Int("history-bytes", d.HistoryBytes, "memory the kept events may take; older watches read from the replicas"),
	}
}

func (h historyFlags) apply(cc *watcher.CacheConfig) {
	cc.HistoryRevisions, cc.HistoryBytes = *h.revs, *h.bytes
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func runDev(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("dev", flag.ExitOnError)
	dataDir := fs.String("data-dir", "./tessera-data", "directory for all data")
	clientURLs := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve the etcd API on")
	raftAddr := fs.String("raft-address", "127.0.0.1:2380", "address of the replica's Raft transport")
	apiAddr := fs.String("api-address", "127.0.0.1:2381", "address of the replica's internal API")
	watcherAddr := fs.String("watcher-address", "127.0.0.1:2382", "address of the watcher's API")
	progress := fs.Duration("watch-progress-notify-interval", 10*time.Minute, "period of progress notifications for watches that ask for them")
	lim := gateway.DefaultLimits()
	lim.RegisterFlags(fs)
	maxWatches := fs.Int("max-watches-per-stream", watcher.DefaultCacheConfig().MaxWatchesPerStream, "most watches one watch stream may hold")
	history := registerHistory(fs)
	quota := fs.Int64("quota-backend-bytes", replica.DefaultQuotaBytes, "store size past which NOSPACE is raised and puts are refused")
	reserve := fs.Int64("free-space-reserve-bytes", replica.DefaultFreeSpaceReserveBytes, "free disk space below which NOSPACE is raised and puts are refused (0: off)")
	authCfg := registerAuth(fs)
	store := registerStore(fs)
	splitKeys := fs.String("initial-split-keys", "", splitKeysHelp)
	useTLS := fs.Bool("tls", false, "serve the client URLs over https with client certificates, made in DATA_DIR/certs on the first run, and use mutual TLS between the tiers")
	tlsFlags := registerClientTLS(fs)
	peerFlags := registerPeerTLS(fs)
	sf := parseFlags(fs, args)
	if err := lim.Validate(); err != nil {
		return err
	}
	urls := splitList(*clientURLs)
	serverTLS, err := tlsFlags.server()
	if err != nil {
		return err
	}
	peer, raftTLS, err := peerFlags.peer()
	if err != nil {
		return err
	}
	if *useTLS {
		var files tlsconf.Files
		if serverTLS, urls, files, err = devTLS(*dataDir, urls); err != nil {
			return err
		}
		if peer, raftTLS, err = peerFrom(files); err != nil {
			return err
		}
	}

	cfg := replica.DefaultConfig()
	cfg.StoreID = 1
	cfg.DataDir = filepath.Join(*dataDir, "replica")
	cfg.RaftAddress = *raftAddr
	cfg.APIAddress = *apiAddr
	cfg.Cluster = []replica.Member{{ID: 1, RaftAddress: *raftAddr, APIAddress: *apiAddr}}
	if cfg.InitialSplitKeys, err = replica.ParseSplitKeys(*splitKeys); err != nil {
		return err
	}
	cfg.QuotaBytes, cfg.FreeSpaceReserveBytes = *quota, *reserve
	// One voter: elections need not wait for peers.
	cfg.RTTMillisecond, cfg.ElectionRTT = 10, 10
	cfg.Logger = log.With("tier", "replica")
	cfg.Peer, cfg.RaftTLS = peer, raftTLS
	store.apply(&cfg.Store)
	cc := watcher.DefaultCacheConfig()
	cc.ProgressInterval, cc.MaxResponseBytes = *progress, lim.MaxRequestBytes // etcd fragments at its max request size
	cc.MaxWatchesPerStream = *maxWatches
	history.apply(&cc)
	// One process runs every tier: one limit, the sum of their budgets.
	sf.limitMemory(cfg.MemoryBudget()+watcher.MemoryBudget(cc)+gateway.MemoryBudget, log)
	r, err := replica.Start(cfg)
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := watcher.Start(watcher.Config{Replicas: []string{r.APIAddr()}, APIAddress: *watcherAddr, Cache: cc, Peer: peer, Logger: log.With("tier", "watcher")})
	if err != nil {
		return err
	}
	defer w.Close()
	g, err := gateway.Start(gateway.Config{ListenClientURLs: urls, Replicas: []string{r.APIAddr()}, Watchers: []string{w.APIAddr()},
		Local:       map[string]*rpcconn.Local{r.APIAddr(): r.Local()},
		ClusterName: "tessera-dev", Name: "dev", Limits: lim, TLS: serverTLS, Peer: peer, Auth: *authCfg, Logger: log.With("tier", "gateway")})
	if err != nil {
		return err
	}
	log.Info("tessera dev ready", "client-urls", strings.Join(g.ClientURLs(), ","), "data-dir", *dataDir)
	sig := waitForSignal()
	log.Info("shutting down", "signal", sig.String())
	drain(g)
	return nil
}

const splitKeysHelp = "when the cluster is created, start a data shard at each of these comma-separated keys, where \"kubernetes\" stands for Kubernetes' busiest resource prefixes (9 shards); every replica must be given the same"

// parseCluster reads "1=raftaddr/apiaddr@zone=a,2=...": each store with
// its labels (where it runs), which every store must know alike since
// they place the first shards' replicas.
func parseCluster(s string) ([]replica.Member, error) {
	var out []replica.Member
	for _, part := range splitList(s) {
		entry, labels, _ := strings.Cut(part, "@")
		id, addrs, ok := strings.Cut(entry, "=")
		raft, api, ok2 := strings.Cut(addrs, "/")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || !ok2 || err != nil || n == 0 {
			return nil, fmt.Errorf("bad --initial-cluster entry %q (want ID=RAFT_ADDR/API_ADDR[@LABEL=VALUE...])", part)
		}
		m := replica.Member{ID: n, RaftAddress: raft, APIAddress: api}
		for _, l := range strings.Split(labels, "@") {
			if l == "" {
				continue
			}
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" || v == "" {
				return nil, fmt.Errorf("bad label %q in --initial-cluster entry %q (want NAME=VALUE)", l, part)
			}
			if m.Labels == nil {
				m.Labels = map[string]string{}
			}
			m.Labels[k] = v
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("--initial-cluster is required")
	}
	return out, nil
}

func runReplica(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("replica", flag.ExitOnError)
	id := fs.Uint64("id", 0, "store ID (non-zero, unique)")
	ordinal := fs.Int("ordinal", -1, "a StatefulSet pod index, instead of --id: the store ID is ordinal+1")
	dataDir := fs.String("data-dir", "", "data directory")
	raftAddr := fs.String("raft-address", "", "Raft transport address host:port")
	apiAddr := fs.String("api-address", "", "internal API address host:port")
	cluster := fs.String("initial-cluster", "", "every store: ID=RAFT_ADDR/API_ADDR[@zone=Z...],... (labels say where a store runs; replicas of a shard go to different values)")
	rf := fs.Int("replication-factor", replica.DefaultReplicationFactor, "how many stores hold each data shard, when the cluster is created (every store must be given the same)")
	splitKeys := fs.String("initial-split-keys", "", splitKeysHelp)
	httpAddr := fs.String("listen-address", "", "address for /livez, /readyz and /metrics (off if empty)")
	rtt := fs.Uint64("rtt-ms", 50, "Raft tick in milliseconds")
	quota := fs.Int64("quota-backend-bytes", replica.DefaultQuotaBytes, "store size past which NOSPACE is raised and puts are refused")
	reserve := fs.Int64("free-space-reserve-bytes", replica.DefaultFreeSpaceReserveBytes, "free disk space below which NOSPACE is raised and puts are refused (0: off)")
	store := registerStore(fs)
	peerFlags := registerPeerTLS(fs)
	sf := parseFlags(fs, args)
	if *ordinal >= 0 {
		if *id != 0 {
			return errors.New("give --id or --ordinal, not both")
		}
		*id = uint64(*ordinal) + 1
	}
	members, err := parseCluster(*cluster)
	if err != nil {
		return err
	}
	peer, raftTLS, err := peerFlags.peer()
	if err != nil {
		return err
	}
	cfg := replica.DefaultConfig()
	cfg.StoreID, cfg.DataDir, cfg.RaftAddress, cfg.APIAddress, cfg.Cluster = *id, *dataDir, *raftAddr, *apiAddr, members
	cfg.ReplicationFactor = *rf
	if cfg.InitialSplitKeys, err = replica.ParseSplitKeys(*splitKeys); err != nil {
		return err
	}
	cfg.RTTMillisecond, cfg.QuotaBytes, cfg.HTTPAddress = *rtt, *quota, *httpAddr
	cfg.FreeSpaceReserveBytes = *reserve
	store.apply(&cfg.Store)
	cfg.Peer, cfg.RaftTLS = peer, raftTLS
	cfg.Logger = log.With("tier", "replica")
	sf.limitMemory(cfg.MemoryBudget(), log)
	r, err := replica.Start(cfg)
	if err != nil {
		return err
	}
	defer r.Close()
	waitForSignal()
	// Leaders move before the process goes, so a rolling restart costs no
	// election timeouts.
	ctx, cancel := context.WithTimeout(context.Background(), handOffTimeout)
	defer cancel()
	r.HandOff(ctx)
	return nil
}

// handOffTimeout bounds the leadership hand-off of a stopping replica.
const handOffTimeout = 5 * time.Second

func runGateway(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("gateway", flag.ExitOnError)
	clientURLs := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve the etcd API on")
	advertise := fs.String("advertise-client-urls", "", "comma-separated URLs clients are told to use (member list); the listen URLs if empty")
	replicas := fs.String("replicas", "", "comma-separated internal API addresses of replicas")
	watchers := fs.String("watchers", "", "comma-separated API addresses of watchers")
	host, _ := os.Hostname()
	name := fs.String("name", cmp.Or(host, "gateway"), "member name, unique per gateway (the member ID derives from it); the host name by default")
	clusterName := fs.String("cluster-name", "tessera", "cluster name")
	lim := gateway.DefaultLimits()
	lim.RegisterFlags(fs)
	httpAddr := fs.String("listen-address", "", "also serve /livez, /readyz and /metrics in plaintext here (for probes that present no client certificate)")
	authCfg := registerAuth(fs)
	tlsFlags := registerClientTLS(fs)
	peerFlags := registerPeerTLS(fs)
	sf := parseFlags(fs, args)
	if err := lim.Validate(); err != nil {
		return err
	}
	serverTLS, err := tlsFlags.server()
	if err != nil {
		return err
	}
	peer, _, err := peerFlags.peer()
	if err != nil {
		return err
	}
	sf.limitMemory(gateway.MemoryBudget, log)
	g, err := gateway.Start(gateway.Config{ListenClientURLs: splitList(*clientURLs), AdvertiseClientURLs: splitList(*advertise),
		Replicas: splitList(*replicas), Watchers: splitList(*watchers),
		ClusterName: *clusterName, Name: *name, Limits: lim, TLS: serverTLS, Peer: peer, Auth: *authCfg, HTTPAddress: *httpAddr, Logger: log.With("tier", "gateway")})
	if err != nil {
		return err
	}
	waitForSignal()
	drain(g)
	return nil
}

func runWatcher(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("watcher", flag.ExitOnError)
	replicas := fs.String("replicas", "", "comma-separated internal API addresses of replicas")
	api := fs.String("api-address", "127.0.0.1:2382", "address of the Watch API that gateways call")
	listen := fs.String("listen-address", "127.0.0.1:2390", "address for /livez and /readyz")
	history := registerHistory(fs)
	progress := fs.Duration("watch-progress-notify-interval", 10*time.Minute, "period of progress notifications for watches that ask for them")
	maxReq := fs.Int("max-request-bytes", 1536*1024, "size at which responses of watches that ask for fragments are cut (etcd's max request bytes)")
	maxWatches := fs.Int("max-watches-per-stream", watcher.DefaultCacheConfig().MaxWatchesPerStream, "most watches one watch stream may hold")
	peerFlags := registerPeerTLS(fs)
	sf := parseFlags(fs, args)
	peer, _, err := peerFlags.peer()
	if err != nil {
		return err
	}
	cc := watcher.DefaultCacheConfig()
	history.apply(&cc)
	cc.ProgressInterval, cc.MaxResponseBytes = *progress, *maxReq
	cc.MaxWatchesPerStream = *maxWatches
	sf.limitMemory(watcher.MemoryBudget(cc), log)
	w, err := watcher.Start(watcher.Config{Replicas: splitList(*replicas), APIAddress: *api, HTTPAddress: *listen, Cache: cc, Peer: peer, Logger: log.With("tier", "watcher")})
	if err != nil {
		return err
	}
	defer w.Close()
	waitForSignal()
	return nil
}
