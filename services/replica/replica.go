// Package replica runs one replica process (a "store"): a dragonboat
// NodeHost hosting the meta shard and data shards, one Badger store shared by
// the data shards, and the internal gRPC API (Shard and Meta services) that
// gateways and other replicas call.
package replica

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	dblogger "github.com/lni/dragonboat/v4/logger"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/pkg/tlsconf"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/lessor"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
	"github.com/tessera-kv/tessera/services/replica/internal/placement"
	"github.com/tessera-kv/tessera/services/replica/internal/sequencer"
	"github.com/tessera-kv/tessera/services/replica/internal/tso"
)

// MetaShardID is the Raft shard ID of the meta shard; data shards start at
// FirstDataShardID.
const (
	MetaShardID      = 1
	FirstDataShardID = 2
)

// Member is one store of the cluster's initial configuration.
type Member struct {
	ID          uint64 `json:"id"`
	RaftAddress string `json:"raft_address"`
	APIAddress  string `json:"api_address"`
	// Labels say where the store runs (zone=a): placement spreads a
	// shard's replicas over their values.
	Labels map[string]string `json:"labels,omitempty"`
}

// Config configures a replica process.
type Config struct {
	// StoreID identifies this store; it is the dragonboat replica ID of every
	// shard replica it hosts. Required, non-zero.
	StoreID uint64
	// DataDir holds the Raft log (raft/) and the Badger store (store/).
	DataDir string
	// RaftAddress is host:port of dragonboat's transport.
	RaftAddress string
	// APIAddress is host:port the internal gRPC API listens on.
	APIAddress string
	// HTTPAddress serves /livez, /readyz and /metrics; empty disables it.
	HTTPAddress string
	// Cluster is every store of the initial configuration, this one
	// included. It is recorded in DataDir on first start; later starts use
	// the recorded one.
	Cluster []Member
	// InitialSplitKeys cut the keyspace into data shards when the cluster
	// is created (every store must be given the same); recorded in DataDir
	// on first start like Cluster.
	InitialSplitKeys []string
	// ReplicationFactor is how many stores hold each data shard (the
	// meta shard is on every store of the initial cluster); fixed when the
	// cluster is created, recorded in DataDir like Cluster. Zero: 3.
	ReplicationFactor int
	// BalanceInterval is how often the store looks for a leadership to
	// move to a store leading fewer shards (0: 5 s); leaderships younger
	// than three intervals stay.
	BalanceInterval time.Duration
	// RTTMillisecond is the Raft tick; elections take ElectionRTT ticks.
	RTTMillisecond uint64
	ElectionRTT    uint64
	// ProposalTimeout bounds one Raft proposal (until applied) or
	// linearizable read. The default is etcd's request timeout (5 s plus
	// two of its default election timeouts): a delete of a million keys
	// takes seconds to apply, in etcd too.
	ProposalTimeout time.Duration
	// TSOWindow is how many revisions the oracle saves ahead.
	TSOWindow int64
	// QuotaBytes is the store's space quota (etcd's --quota-backend-bytes):
	// past it the store raises NOSPACE and the cluster refuses puts.
	QuotaBytes int64
	// FreeSpaceReserveBytes is the free disk space the store keeps: when
	// less is left on the data dir's filesystem it raises NOSPACE, so puts
	// stop before the disk is full while reads, deletes and compactions
	// (which need a little space) go on. 0 disables the check.
	FreeSpaceReserveBytes int64
	// Store sizes the Badger DB.
	Store mvcc.Options
	// Peer is the transport of the internal API, to and from other
	// processes (zero: plaintext TCP).
	Peer rpcconn.Peer
	// RaftTLS is dragonboat's mutual TLS between stores (PEM files;
	// empty: plaintext), from the same peer certificate as Peer.
	RaftTLS tlsconf.Files
	// RaftTransport replaces dragonboat's TCP transport (nil: TCP). Tests
	// use it to cut, delay or drop Raft traffic between stores.
	RaftTransport config.TransportFactory
	// Logger is the component logger; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a config with every optional field set.
func DefaultConfig() Config {
	return Config{RTTMillisecond: 50, ElectionRTT: 10, ProposalTimeout: 7 * time.Second,
		TSOWindow: tso.DefaultWindow, QuotaBytes: DefaultQuotaBytes, FreeSpaceReserveBytes: DefaultFreeSpaceReserveBytes,
		Store: mvcc.DefaultOptions()}
}

// Validate checks the fields and their combinations.
func (c *Config) Validate() error {
	switch {
	case c.StoreID == 0:
		return errors.New("replica: store ID must be non-zero")
	case c.DataDir == "":
		return errors.New("replica: data dir required")
	case c.RaftAddress == "" || c.APIAddress == "":
		return errors.New("replica: raft and API addresses required")
	case c.RTTMillisecond == 0 || c.ElectionRTT < 5 || c.ProposalTimeout <= 0:
		return errors.New("replica: RTT, election RTT (>= 5) and proposal timeout required")
	case c.QuotaBytes <= 0:
		return errors.New("replica: quota bytes must be positive")
	case c.FreeSpaceReserveBytes < 0:
		return errors.New("replica: free space reserve must not be negative")
	}
	found := false
	for _, m := range c.Cluster {
		if m.ID == c.StoreID {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("replica: store %d is not in the cluster list", c.StoreID)
	}
	return nil
}

// Replica is a running replica process.
type Replica struct {
	cfg          Config
	deploymentID uint64
	maintenance  maintenanceGate
	log          *slog.Logger
	nh           *dragonboat.NodeHost
	store        *mvcc.Store
	oracle       *tso.Oracle
	revs         *revisionRouter
	lessor       *lessor.Lessor
	grpcSrv      *grpc.Server
	local        *rpcconn.Local
	lis          net.Listener
	httpSrv      *http.Server
	// metricsReg is the metrics callback, unregistered at Close.
	metricsReg metric.Registration

	mu     sync.RWMutex
	shards map[uint64]*dataShard // guarded by mu

	// storeTable: the stores' heartbeats, while this store leads the
	// meta shard.
	storeTable storeTable
	// sizes: the last estimate of the led shards' sizes (heartbeat).
	sizes struct {
		mu    sync.Mutex
		bytes map[uint64]int64
	}

	snapshotsRestored atomic.Uint64
	// noSpace: a NOSPACE alarm is raised somewhere in the cluster.
	noSpace   atomic.Bool
	free      diskFigure
	used      diskFigure    // the store's size (its data dir walked)
	quotaPoke chan struct{} // cap 1: wakes checkQuota early
	stopc     chan struct{}
	wg        sync.WaitGroup
	children  sync.WaitGroup // starts of split children (splitApplied)
}

// SnapshotsRestored counts data-shard snapshots this store installed since
// it started (a lagging replica catching up).
func (r *Replica) SnapshotsRestored() uint64 { return r.snapshotsRestored.Load() }

// dataShard is a data shard replica hosted here.
type dataShard struct {
	id     uint64
	seq    *sequencer.Sequencer
	closer closer
	mu     sync.RWMutex
	mvcc   *mvcc.Shard // set when the state machine opens
}

func (d *dataShard) shard() *mvcc.Shard {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.mvcc
}

var quietOnce sync.Once

// Start opens the store, starts the shards and serves the internal API.
func Start(cfg Config) (*Replica, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	quietOnce.Do(func() {
		for _, p := range []string{"dragonboat", "raft", "rsm", "transport", "logdb", "raftpb", "config", "settings", "grpc", "tan", "registry"} {
			dblogger.GetLogger(p).SetLevel(dblogger.ERROR)
		}
	})
	_, statErr := os.Stat(filepath.Join(cfg.DataDir, "cluster.json"))
	members, err := loadOrSaveCluster(cfg.DataDir, cfg.Cluster)
	if err != nil {
		return nil, err
	}
	cfg.Cluster = members
	keys, err := normalSplitKeys(cfg.InitialSplitKeys)
	if err != nil {
		return nil, err
	}
	keys, ignored, err := loadOrSaveSplitKeys(cfg.DataDir, keys, statErr == nil)
	if err != nil {
		return nil, err
	}
	if ignored {
		cfg.Logger.Warn("--initial-split-keys applies when a store is created; this store keeps its own", "keys", keys)
	}
	cfg.InitialSplitKeys = keys
	rf, err := loadOrSaveReplicationFactor(cfg.DataDir, cmp.Or(cfg.ReplicationFactor, DefaultReplicationFactor), len(members), statErr == nil)
	if err != nil {
		return nil, err
	}
	cfg.ReplicationFactor = rf
	did, err := loadOrSaveDeploymentID(cfg.DataDir, members, keys, rf, statErr == nil)
	if err != nil {
		return nil, err
	}
	r := &Replica{cfg: cfg, log: cfg.Logger.With("store", cfg.StoreID), shards: map[uint64]*dataShard{}, stopc: make(chan struct{}), deploymentID: did,
		quotaPoke: make(chan struct{}, 1), maintenance: newMaintenanceGate()}
	if err := r.start(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Replica) start() error {
	var err error
	storeOpts := r.cfg.Store
	storeOpts.Logger = r.log
	if r.store, err = mvcc.Open(filepath.Join(r.cfg.DataDir, "store"), storeOpts); err != nil {
		return err
	}
	r.free.measure = r.store.FreeBytes
	r.used.measure, r.used.maxAge = r.store.Size, 500*time.Millisecond
	logdb := config.GetTinyMemLogDBConfig()
	nhc := config.NodeHostConfig{
		NodeHostDir:    filepath.Join(r.cfg.DataDir, "raft"),
		RTTMillisecond: r.cfg.RTTMillisecond,
		RaftAddress:    r.cfg.RaftAddress,
		DeploymentID:   r.deploymentID,
		Expert:         config.ExpertConfig{LogDB: logdb, TransportFactory: r.cfg.RaftTransport},
	}
	if f := r.cfg.RaftTLS; f.Cert != "" {
		nhc.MutualTLS, nhc.CAFile, nhc.CertFile, nhc.KeyFile = true, f.CA, f.Cert, f.Key
	}
	if nhc.RaftEventListener, err = newLeaderEvents(r.cfg.StoreID); err != nil {
		return err
	}
	r.nh, err = dragonboat.NewNodeHost(nhc)
	if err != nil {
		return fmt.Errorf("replica: start raft: %w", err)
	}
	// The oracle's leader lease: half an election timeout.
	r.oracle = tso.New(&metaLog{r: r}, tso.Config{Window: r.cfg.TSOWindow,
		Lease: electionTimeout(r.cfg) / 2})
	r.revs = newRevisionRouter(r)
	// etcd's shortest lease: 1.5 election timeouts, in whole seconds.
	election := electionTimeout(r.cfg)
	minTTL := int64(math.Ceil((election * 3 / 2).Seconds()))
	r.lessor = lessor.New(lessor.Config{MinTTL: minTTL, Logger: r.log}, leaseStore{r: r, metaLog: &metaLog{r: r}})

	boot, err := startState(r.cfg.DataDir, r.cfg.Cluster, r.cfg.InitialSplitKeys, r.cfg.ReplicationFactor)
	if err != nil {
		return err
	}
	initial := map[uint64]dragonboat.Target{}
	for _, m := range r.cfg.Cluster {
		initial[m.ID] = m.RaftAddress
	}
	if err := r.nh.StartReplica(initial, false, metasm.Factory(boot), r.shardConfig(MetaShardID, 1000)); err != nil {
		return fmt.Errorf("replica: start meta shard: %w", err)
	}
	for _, d := range boot.ShardMap.Shards {
		if !hasReplica(d, r.cfg.StoreID) {
			continue
		}
		if err := r.startShard(d.Id, d.StartKey, d.EndKey, d.Replicas); err != nil {
			return err
		}
	}
	if err := r.startStoredChildren(); err != nil {
		return err
	}

	r.lis, err = net.Listen("tcp", r.cfg.APIAddress)
	if err != nil {
		return fmt.Errorf("replica: listen %s: %w", r.cfg.APIAddress, err)
	}
	r.grpcSrv = grpc.NewServer(append(r.cfg.Peer.ServerOptions(), grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(math32))...)
	// The same services over the network and in-process (Local).
	r.local = rpcconn.NewLocal()
	shards, meta := &shardService{r: r}, &metaService{r: r}
	for _, reg := range []grpc.ServiceRegistrar{r.grpcSrv, r.local} {
		shardpb.RegisterShardServer(reg, shards)
		metapb.RegisterMetaServer(reg, meta)
	}
	go func() {
		if err := r.grpcSrv.Serve(r.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			r.log.Error("internal API stopped", "err", err)
		}
	}()
	if err := r.serveHTTP(); err != nil {
		return err
	}
	r.every(quotaCheckInterval, r.quotaPoke, r.checkQuota)
	r.every(reconcileInterval, nil, r.reconcileOnce)
	r.every(heartbeatInterval, nil, r.heartbeat)
	r.every(sizeInterval, nil, r.estimateSizes)
	balance, led := cmp.Or(r.cfg.BalanceInterval, defaultBalanceInterval), map[uint64]time.Time{}
	r.every(balance, nil, func() { r.balanceStep(balance, led) })
	r.log.Info("replica started", "raft", r.cfg.RaftAddress, "api", r.lis.Addr().String())
	return nil
}

const math32 = 1<<31 - 1

func (r *Replica) shardConfig(shardID, snapshotEntries uint64) config.Config {
	return config.Config{
		ReplicaID:          r.cfg.StoreID,
		ShardID:            shardID,
		CheckQuorum:        true,
		PreVote:            true,
		ElectionRTT:        r.cfg.ElectionRTT,
		HeartbeatRTT:       1,
		SnapshotEntries:    snapshotEntries,
		CompactionOverhead: snapshotEntries / 2,
		MaxInMemLogSize:    256 << 20,
	}
}

// APIAddr is the address the internal API listens on.
func (r *Replica) APIAddr() string { return r.lis.Addr().String() }

// Local serves the internal API's unary calls to a gateway in this
// process (tessera dev) without the network.
func (r *Replica) Local() *rpcconn.Local { return r.local }

// StoreID is this store's ID.
func (r *Replica) StoreID() uint64 { return r.cfg.StoreID }

// Close stops serving and releases the store. It is safe on a partly
// started replica.
func (r *Replica) Close() {
	if r.httpSrv != nil {
		r.httpSrv.Close()
	}
	if r.metricsReg != nil {
		r.metricsReg.Unregister()
	}
	if r.grpcSrv != nil {
		r.grpcSrv.Stop()
	}
	close(r.stopc)
	r.wg.Wait()
	if r.lessor != nil {
		r.lessor.Stop()
	}
	r.mu.Lock()
	for _, ds := range r.shards {
		if ds.seq != nil {
			ds.seq.Stop()
		}
	}
	r.mu.Unlock()
	if r.revs != nil {
		r.revs.close()
	}
	if r.nh != nil {
		r.nh.Close()
	}
	r.children.Wait()
	if r.store != nil {
		if err := r.store.Close(); err != nil {
			r.log.Error("close store", "err", err)
		}
	}
}

// LeaderOf reports the leader store of a shard as seen here (0: unknown).
func (r *Replica) LeaderOf(shardID uint64) uint64 {
	id, _, valid, err := r.nh.GetLeaderID(shardID)
	if err != nil || !valid {
		return 0
	}
	return id
}

func (r *Replica) dataShard(id uint64) (*dataShard, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ds, ok := r.shards[id]
	return ds, ok
}

// metaState reads the local copy of the meta state (not linearizable).
func (r *Replica) metaState() (*metapb.MetaState, error) {
	v, err := r.nh.StaleRead(MetaShardID, metasm.StateQuery{})
	if err != nil {
		return nil, err
	}
	return v.(*metapb.MetaState), nil
}

func (r *Replica) storeAddress(id uint64) string {
	if st, err := r.metaState(); err == nil {
		for _, s := range st.ShardMap.Stores {
			if s.Id == id {
				return s.ApiAddress
			}
		}
	}
	return ""
}

func hasReplica(d *metapb.ShardDescriptor, store uint64) bool {
	for _, id := range d.Replicas {
		if id == store {
			return true
		}
	}
	return false
}

// DefaultReplicationFactor is etcd's usual cluster size.
const DefaultReplicationFactor = 3

// bootstrapState is the meta state every replica starts from: a data shard
// for each range between split keys (one over the whole keyspace without
// any), IDs from FirstDataShardID in key order, each on rf stores of the
// initial cluster chosen by placement (the preferred leader first); rf 0
// (a cluster created before placement) is every store in member order.
func bootstrapState(members []Member, splitKeys []string, rf int) *metapb.MetaState {
	sm := &metapb.ShardMap{MetaShardId: MetaShardID}
	for _, m := range members {
		sm.Stores = append(sm.Stores, &metapb.Store{Id: m.ID, RaftAddress: m.RaftAddress, ApiAddress: m.APIAddress, Labels: m.Labels})
	}
	plan := placement.New(placementStores(sm.Stores), rf)
	for i, r := range splitRanges(splitKeys) {
		d := &metapb.ShardDescriptor{Id: FirstDataShardID + uint64(i), StartKey: r[0], EndKey: r[1], Generation: 1}
		if rf > 0 {
			d.Replicas = plan.Next()
		} else {
			for _, m := range members {
				d.Replicas = append(d.Replicas, m.ID)
			}
		}
		sm.Shards = append(sm.Shards, d)
	}
	// The first revision served is one above etcd's initial revision.
	return &metapb.MetaState{ShardMap: sm, TsoLimit: mvcc.InitialRevision + 1}
}

// loadOrSaveCluster pins the initial configuration in the data dir: the
// meta state machine is rebuilt from it on every start, so it must never
// change after the first.
func loadOrSaveCluster(dir string, members []Member) ([]Member, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "cluster.json")
	b, err := os.ReadFile(path)
	if err == nil {
		var saved []Member
		if err := json.Unmarshal(b, &saved); err != nil {
			return nil, fmt.Errorf("replica: %s: %w", path, err)
		}
		return saved, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	b, err = json.MarshalIndent(members, "", "  ")
	if err != nil {
		return nil, err
	}
	return members, writeFileAtomic(path, b)
}

// loadOrSaveDeploymentID pins dragonboat's deployment ID in the data dir:
// on a new store, a hash of the initial cluster and split keys (the same on every member,
// so stores of two clusters never exchange Raft messages); 0 for a store
// created before the ID was set (dragonboat keeps its data under the ID).
func loadOrSaveDeploymentID(dir string, members []Member, splitKeys []string, rf int, existed bool) (uint64, error) {
	path := filepath.Join(dir, "deployment-id")
	b, err := os.ReadFile(path)
	if err == nil {
		id, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil {
			return 0, fmt.Errorf("replica: %s: %w", path, perr)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	if existed {
		return 0, nil
	}
	h := fnv.New64a()
	for _, m := range members {
		fmt.Fprintf(h, "%d=%s;", m.ID, m.RaftAddress)
	}
	// Stores given different split keys would build different shard maps:
	// they get different IDs, so they never exchange Raft messages.
	for _, k := range splitKeys {
		fmt.Fprintf(h, "split=%q;", k)
	}
	// So do stores given different replication factors or labels (the
	// hash of a cluster created before either existed is unchanged).
	if rf > 0 && rf != len(members) {
		fmt.Fprintf(h, "rf=%d;", rf)
	}
	for _, m := range members {
		for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
			fmt.Fprintf(h, "label=%d:%q=%q;", m.ID, k, m.Labels[k])
		}
	}
	id := h.Sum64() | 1
	return id, writeFileAtomic(path, []byte(strconv.FormatUint(id, 10)+"\n"))
}

// withTimeout bounds a Raft operation by the proposal timeout.
func (r *Replica) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.ProposalTimeout)
}

// every runs fn each interval (and when wake fires, if not nil) until the
// replica closes.
func (r *Replica) every(interval time.Duration, wake <-chan struct{}, fn func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-r.stopc:
				return
			case <-t.C:
			case <-wake:
			}
			fn()
		}
	}()
}
