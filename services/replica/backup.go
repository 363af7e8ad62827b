package replica

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/shardpb"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
	"github.com/tessera-kv/tessera/services/replica/internal/placement"
)

// A backup (what etcd's Snapshot streams and etcdctl snapshot save writes)
// is Tessera's own format:
//
//	"TESSERA-BACKUP-1\n"
//	uvarint length, metapb.MetaState   (shard map, oracle limit, leases, alarms)
//	uvarint number of data shards
//	per shard: uvarint length, metapb.ShardDescriptor, then the shard's
//	           snapshot stream (pkg/mvcc, self-delimiting)
//	zero bytes up to a multiple of 512 (etcd's clients check that a
//	           snapshot is sectors plus a checksum)
//	32 bytes: SHA-256 of everything before
//
// Each shard's part is consistent at that shard's revision. With one data
// shard (today's layout) the backup is one consistent point in time.
var backupMagic = []byte("TESSERA-BACKUP-1\n")

// restoreFile is where a restored data dir keeps the meta state it starts
// from (in place of the bootstrap state of a fresh cluster).
const restoreFile = "restored-meta.pb"

// Backup streams the cluster's backup from this store: the meta state
// after a ReadIndex, then every data shard, from this store's copy where
// it holds one and from the shard's leader (ShardSnapshot) where not.
func (s *shardService) Backup(_ *shardpb.BackupRequest, stream shardpb.Shard_BackupServer) error {
	ctx := stream.Context()
	leave, err := s.r.maintenance.enter(ctx, s.r.cfg.StoreID, "Snapshot")
	if err != nil {
		return err
	}
	defer leave()
	local, err := s.r.metaState()
	if err != nil {
		return toStatus(err)
	}
	// One cut of every shard at the cluster's revision R: every shard
	// closes R first (an idle one with a tick), so none can still change
	// at or below it.
	cut, err := s.cutRevision(ctx, local.ShardMap.Shards)
	if err != nil {
		return err
	}
	// The meta state after the cut's revision was chosen: every lease a
	// key in the cut is attached to was granted before, so it is there.
	rctx, cancel := s.r.withTimeout(ctx)
	v, err := s.r.nh.SyncRead(rctx, MetaShardID, metasm.StateQuery{})
	cancel()
	if err != nil {
		return toStatus(err)
	}
	meta := v.(*metapb.MetaState)
	// Local parts are cut up front (each holds a read view at the cut);
	// remote ones are streamed in their turn.
	shards := meta.ShardMap.Shards
	snaps := make([]*mvcc.Snapshot, len(shards))
	defer func() {
		for _, sn := range snaps {
			if sn != nil {
				sn.Close()
			}
		}
	}()
	for i, d := range shards {
		ds, ok := s.r.dataShard(d.Id)
		if !ok || ds.shard() == nil {
			continue
		}
		sn, err := ds.shard().PrepareSnapshotAt(cut)
		if err != nil {
			return status.Errorf(codes.Unavailable, "tessera: shard %d at revision %d: %v; try again", d.Id, cut, err)
		}
		snaps[i] = sn
	}
	w := &chunkWriter{send: func(b []byte) error { return stream.Send(&shardpb.BackupResponse{Data: b}) }}
	bw := bufio.NewWriterSize(w, 1<<20)
	sum := sha256.New()
	cw := &countingWriter{}
	out := io.MultiWriter(bw, sum, cw)
	if err := writeBackupHead(out, meta, len(shards)); err != nil {
		return err
	}
	for i, d := range shards {
		if err := writeMessage(out, d); err != nil {
			return err
		}
		if snaps[i] == nil {
			err = s.remoteSnapshot(ctx, d.Id, cut, out)
		} else {
			err = snaps[i].WriteTo(out, ctx.Done())
		}
		if err != nil {
			return err
		}
	}
	if _, err := out.Write(make([]byte, (512-cw.n%512)%512)); err != nil {
		return err
	}
	if _, err := bw.Write(sum.Sum(nil)); err != nil {
		return err
	}
	return bw.Flush()
}

// cutRevision picks the revision a backup cuts every shard at, the
// cluster's current one (the highest shard revision after a ReadIndex on
// each), and returns once this store has applied every shard it holds up
// to it (the others are closed at it by their leaders as they are read).
func (s *shardService) cutRevision(ctx context.Context, shards []*metapb.ShardDescriptor) (int64, error) {
	var cut int64
	for _, d := range shards {
		st, err := s.closeAnywhere(ctx, &shardpb.CloseRequest{ShardId: d.Id, Linearizable: true})
		if err != nil {
			return 0, err
		}
		cut = max(cut, st.Revision)
	}
	for _, d := range shards {
		if !s.r.holdsOpen(d.Id) {
			continue
		}
		for attempt := 0; ; attempt++ {
			st, err := s.Close(ctx, &shardpb.CloseRequest{ShardId: d.Id, Linearizable: attempt > 0})
			if err != nil {
				return 0, err
			}
			if st.ClosedRevision >= cut {
				break
			}
			if attempt == 5 {
				return 0, status.Errorf(codes.Unavailable, "tessera: shard %d did not close revision %d for the backup; try again", d.Id, cut)
			}
			if err := s.closeOnLeader(ctx, d.Id, cut); err != nil {
				return 0, err
			}
		}
	}
	return cut, nil
}

// closeOnLeader closes rev on a shard: here if this store leads it, else
// through the leader's Shard.Close.
func (s *shardService) closeOnLeader(ctx context.Context, shardID uint64, rev int64) error {
	leader := s.r.LeaderOf(shardID)
	if leader == s.r.cfg.StoreID || leader == 0 {
		return s.closeRevision(ctx, shardID, rev)
	}
	conn, err := s.r.revs.conn(s.r.storeAddress(leader))
	if err != nil {
		return err
	}
	rctx, cancel := s.r.withTimeout(ctx)
	defer cancel()
	_, err = shardpb.NewShardClient(conn).Close(rctx, &shardpb.CloseRequest{ShardId: shardID, Revision: rev})
	return err
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n += int64(len(b))
	return len(b), nil
}

func writeBackupHead(w io.Writer, meta *metapb.MetaState, shards int) error {
	if _, err := w.Write(backupMagic); err != nil {
		return err
	}
	if err := writeMessage(w, meta); err != nil {
		return err
	}
	_, err := w.Write(binary.AppendUvarint(nil, uint64(shards)))
	return err
}

func writeMessage(w io.Writer, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := w.Write(binary.AppendUvarint(nil, uint64(len(b)))); err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// chunkWriter turns writes into stream messages.
type chunkWriter struct{ send func([]byte) error }

func (c *chunkWriter) Write(b []byte) (int, error) {
	return len(b), c.send(append([]byte(nil), b...))
}

// BackupInfo describes a backup file.
type BackupInfo struct {
	Meta   *metapb.MetaState
	Shards []mvcc.SnapshotInfo
	Size   int64
	SHA256 []byte
}

// Revision is the highest revision in the backup.
func (b BackupInfo) Revision() int64 {
	var r int64
	for _, s := range b.Shards {
		r = max(r, s.State.Revision)
	}
	return r
}

// Keys is the number of live keys in the backup.
func (b BackupInfo) Keys() int {
	n := 0
	for _, s := range b.Shards {
		n += s.Keys
	}
	return n
}

// hashingReader hashes what it reads and reports progress.
type hashingReader struct {
	r        io.Reader
	h        hash.Hash
	n        int64
	progress func(read int64)
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	if h.progress != nil {
		h.progress(h.n)
	}
	return n, err
}

// readBackup reads a backup file, calling shard for each data shard's part
// (which must consume exactly that part), and checks the trailing SHA-256.
func readBackup(path string, progress func(read, total int64), shard func(d *metapb.ShardDescriptor, r *bufio.Reader) error) (BackupInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return BackupInfo{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return BackupInfo{}, err
	}
	info := BackupInfo{Size: fi.Size()}
	if info.Size < int64(len(backupMagic))+sha256.Size {
		return info, errors.New("replica: not a Tessera backup (too short)")
	}
	body := io.LimitReader(f, info.Size-sha256.Size)
	hr := &hashingReader{r: body, h: sha256.New()}
	if progress != nil {
		hr.progress = func(n int64) { progress(n, info.Size-sha256.Size) }
	}
	r := bufio.NewReaderSize(hr, 1<<20)
	magic := make([]byte, len(backupMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic, backupMagic) {
		return info, errors.New("replica: not a Tessera backup (etcd's own snapshot files are restored with etcdutl)")
	}
	info.Meta = &metapb.MetaState{}
	if err := readMessage(r, info.Meta); err != nil {
		return info, fmt.Errorf("replica: backup meta state: %w", err)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return info, err
	}
	for i := uint64(0); i < n; i++ {
		d := &metapb.ShardDescriptor{}
		if err := readMessage(r, d); err != nil {
			return info, fmt.Errorf("replica: backup shard descriptor: %w", err)
		}
		if err := shard(d, r); err != nil {
			return info, fmt.Errorf("replica: backup of shard %d: %w", d.Id, err)
		}
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		return info, err
	}
	if len(rest) >= 512 || bytes.Count(rest, []byte{0}) != len(rest) {
		return info, fmt.Errorf("replica: %d unexpected bytes after the last shard", len(rest))
	}
	want := make([]byte, sha256.Size)
	if _, err := io.ReadFull(f, want); err != nil {
		return info, err
	}
	info.SHA256 = hr.h.Sum(nil)
	if !bytes.Equal(want, info.SHA256) {
		return info, errors.New("replica: backup checksum mismatch: the file is damaged or truncated")
	}
	return info, nil
}

func readMessage(r *bufio.Reader, m proto.Message) error {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return err
	}
	b, err := mvcc.ReadClaimed(r, n, 64<<20)
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, m)
}

// InspectBackup reads a backup file and checks it (tessera snapshot status).
func InspectBackup(path string) (BackupInfo, error) { return InspectBackupProgress(path, nil) }

// InspectBackupProgress is InspectBackup reporting progress as it reads.
func InspectBackupProgress(path string, progress func(read, total int64)) (BackupInfo, error) {
	var shards []mvcc.SnapshotInfo
	info, err := readBackup(path, progress, func(_ *metapb.ShardDescriptor, r *bufio.Reader) error {
		si, err := mvcc.InspectSnapshot(r)
		shards = append(shards, si)
		return err
	})
	info.Shards = shards
	return info, err
}

// RestoreBackup creates the data dir of one store of a new cluster from a
// backup: its Badger store holds its shards' data and history, and the
// meta state (oracle limit, leases) comes back on first start. Every store
// of the new cluster is restored from the same file, and holds the shards
// placement gives it for replication factor rf. progress, if set, is
// called as the file is read.
func RestoreBackup(path, dataDir string, storeID uint64, members []Member, rf int, progress func(read, total int64)) (BackupInfo, error) {
	found := false
	for _, m := range members {
		found = found || m.ID == storeID
	}
	if !found {
		return BackupInfo{}, fmt.Errorf("replica: store %d is not in the cluster list", storeID)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "cluster.json")); err == nil {
		return BackupInfo{}, fmt.Errorf("replica: %s already holds a store; restore into a new directory", dataDir)
	}
	// Check the whole file before writing anything.
	checked, err := InspectBackupProgress(path, progress)
	if err != nil {
		return checked, err
	}
	meta := restoredMeta(checked, members, rf)
	mine := map[uint64]bool{}
	for _, d := range meta.ShardMap.Shards {
		mine[d.Id] = hasReplica(d, storeID)
	}
	if _, err := loadOrSaveCluster(dataDir, members); err != nil {
		return BackupInfo{}, err
	}
	if _, err := loadOrSaveReplicationFactor(dataDir, rf, len(members), false); err != nil {
		return BackupInfo{}, err
	}
	opts := mvcc.DefaultOptions()
	store, err := mvcc.Open(filepath.Join(dataDir, "store"), opts)
	if err != nil {
		return BackupInfo{}, err
	}
	info, err := readBackup(path, progress, func(d *metapb.ShardDescriptor, r *bufio.Reader) error {
		if !mine[d.Id] {
			_, err := mvcc.InspectSnapshot(r) // another store's: read past it
			return err
		}
		sh, err := store.OpenShard(d.Id, d.StartKey, d.EndKey)
		if err != nil {
			return err
		}
		return sh.RestoreFresh(r)
	})
	info.Shards = checked.Shards
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return info, err
	}
	b, err := proto.Marshal(meta)
	if err != nil {
		return info, err
	}
	return info, os.WriteFile(filepath.Join(dataDir, restoreFile), b, 0o644)
}

// restoredMeta is the meta state a restored cluster starts from: the
// backup's shards (placed on rf of the new stores), leases and alarms,
// and an oracle limit above every revision in the backup.
func restoredMeta(info BackupInfo, members []Member, rf int) *metapb.MetaState {
	meta := proto.Clone(info.Meta).(*metapb.MetaState)
	fresh := bootstrapState(members, nil, rf)
	meta.ShardMap.Stores = fresh.ShardMap.Stores
	plan := placement.New(placementStores(fresh.ShardMap.Stores), rf)
	// Each descriptor's generation is its shard's, from the snapshot (a
	// shard refuses splits planned at another): no gateway of the new
	// cluster holds an old descriptor to tell apart.
	gens := map[uint64]uint64{}
	for _, s := range info.Shards {
		gens[s.ShardID] = max(s.State.Bounds.Generation, 1)
	}
	for _, d := range meta.ShardMap.Shards {
		d.Replicas = plan.Next()
		if g, ok := gens[d.Id]; ok {
			d.Generation = g
		}
	}
	for _, s := range info.Shards {
		meta.TsoLimit = max(meta.TsoLimit, s.State.LastEntry+1)
	}
	meta.Alarms = nil // they belonged to the old stores
	return meta
}

// startState is the meta state this store starts from: the restored one if
// the data dir was made by RestoreBackup, else a fresh cluster's.
func startState(dataDir string, members []Member, splitKeys []string, rf int) (*metapb.MetaState, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, restoreFile))
	if errors.Is(err, os.ErrNotExist) {
		return bootstrapState(members, splitKeys, rf), nil
	}
	if err != nil {
		return nil, err
	}
	st := &metapb.MetaState{}
	if err := proto.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("replica: %s: %w", restoreFile, err)
	}
	return st, nil
}

// closeAnywhere is Close on this store's replica of the shard, or on the
// shard's leader if this store holds none.
func (s *shardService) closeAnywhere(ctx context.Context, req *shardpb.CloseRequest) (*shardpb.CloseResponse, error) {
	if s.r.holdsOpen(req.ShardId) {
		return s.Close(ctx, req)
	}
	var resp *shardpb.CloseResponse
	err := s.r.callShardLeader(ctx, req.ShardId, func(ctx context.Context, c shardpb.ShardClient) (err error) {
		resp, err = c.Close(ctx, req)
		return err
	})
	return resp, err
}

// remoteSnapshot copies a shard's snapshot stream at rev from its leader
// into out. Once a byte is written the call is not retried (the copy
// would follow a partial one): a broken stream fails the backup.
func (s *shardService) remoteSnapshot(ctx context.Context, shardID uint64, rev int64, out io.Writer) error {
	wrote := false
	return s.r.callShardLeader(ctx, shardID, func(ctx context.Context, c shardpb.ShardClient) error {
		st, err := c.ShardSnapshot(ctx, &shardpb.ShardSnapshotRequest{ShardId: shardID, Revision: rev})
		if err != nil {
			return err
		}
		for {
			chunk, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if wrote {
					return status.Errorf(codes.Aborted, "tessera: shard %d's part of the backup broke off: %v; try again", shardID, status.Convert(err).Message())
				}
				return err
			}
			wrote = true
			if _, err := out.Write(chunk.Data); err != nil {
				return status.Error(codes.Aborted, err.Error())
			}
		}
	})
}

// ShardSnapshot streams this leader's copy of a shard at a revision, once
// the shard has closed it (the part of a backup taken on another store).
func (s *shardService) ShardSnapshot(req *shardpb.ShardSnapshotRequest, stream shardpb.Shard_ShardSnapshotServer) error {
	ctx := stream.Context()
	if _, err := s.r.requireLeader(req.ShardId); err != nil {
		return err
	}
	if req.Revision <= 0 {
		return status.Error(codes.InvalidArgument, "tessera: a shard snapshot needs a revision")
	}
	if err := s.closeRevision(ctx, req.ShardId, req.Revision); err != nil {
		return err
	}
	sh, err := s.openShard(req.ShardId)
	if err != nil {
		return err
	}
	sn, err := sh.PrepareSnapshotAt(req.Revision)
	if err != nil {
		return status.Errorf(codes.Unavailable, "tessera: shard %d at revision %d: %v; try again", req.ShardId, req.Revision, err)
	}
	defer sn.Close()
	bw := bufio.NewWriterSize(&chunkWriter{send: func(b []byte) error { return stream.Send(&shardpb.ShardSnapshotResponse{Data: b}) }}, 1<<20)
	if err := sn.WriteTo(bw, ctx.Done()); err != nil {
		return err
	}
	return bw.Flush()
}

// holdsOpen reports whether this store holds the shard with its state
// machine open (a backup's part can be cut from it here).
func (r *Replica) holdsOpen(id uint64) bool {
	ds, ok := r.dataShard(id)
	return ok && ds.shard() != nil
}
