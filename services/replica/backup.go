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

// Backup streams this store's backup: the meta state after a ReadIndex,
// then every data shard it holds.
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
	var shards []*metapb.ShardDescriptor
	var snaps []*mvcc.Snapshot
	defer func() {
		for _, sn := range snaps {
			sn.Close()
		}
	}()
	for _, d := range meta.ShardMap.Shards {
		ds, ok := s.r.dataShard(d.Id)
		if !ok || ds.shard() == nil {
			return status.Errorf(codes.FailedPrecondition, "tessera: store %d does not hold shard %d; back up from a store that holds every shard", s.r.cfg.StoreID, d.Id)
		}
		sn, err := ds.shard().PrepareSnapshotAt(cut)
		if err != nil {
			return status.Errorf(codes.Unavailable, "tessera: shard %d at revision %d: %v; try again", d.Id, cut, err)
		}
		shards = append(shards, d)
		snaps = append(snaps, sn)
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
		if err := snaps[i].WriteTo(out, ctx.Done()); err != nil {
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
// each), and returns once this store has applied every shard up to it.
func (s *shardService) cutRevision(ctx context.Context, shards []*metapb.ShardDescriptor) (int64, error) {
	var cut int64
	for _, d := range shards {
		st, err := s.Close(ctx, &shardpb.CloseRequest{ShardId: d.Id, Linearizable: true})
		if err != nil {
			return 0, err
		}
		cut = max(cut, st.Revision)
	}
	for _, d := range shards {
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
// backup: its Badger store holds every shard's data and history, and the
// meta state (oracle limit, leases) comes back on first start. Every store
// of the new cluster is restored from the same file. progress, if set, is
// called as the file is read.
func RestoreBackup(path, dataDir string, storeID uint64, members []Member, progress func(read, total int64)) (BackupInfo, error) {
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
	if _, err := loadOrSaveCluster(dataDir, members); err != nil {
		return BackupInfo{}, err
	}
	opts := mvcc.DefaultOptions()
	store, err := mvcc.Open(filepath.Join(dataDir, "store"), opts)
	if err != nil {
		return BackupInfo{}, err
	}
	info, err := readBackup(path, progress, func(d *metapb.ShardDescriptor, r *bufio.Reader) error {
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
	meta := restoredMeta(info, members)
	b, err := proto.Marshal(meta)
	if err != nil {
		return info, err
	}
	return info, os.WriteFile(filepath.Join(dataDir, restoreFile), b, 0o644)
}

// restoredMeta is the meta state a restored cluster starts from: the
// backup's shards (replicated on every new store), leases and alarms, and
// an oracle limit above every revision in the backup.
func restoredMeta(info BackupInfo, members []Member) *metapb.MetaState {
	meta := proto.Clone(info.Meta).(*metapb.MetaState)
	fresh := bootstrapState(members, nil)
	meta.ShardMap.Stores = fresh.ShardMap.Stores
	for _, d := range meta.ShardMap.Shards {
		d.Replicas = nil
		for _, m := range members {
			d.Replicas = append(d.Replicas, m.ID)
		}
		d.Generation++
	}
	for _, s := range info.Shards {
		meta.TsoLimit = max(meta.TsoLimit, s.State.LastEntry+1)
	}
	meta.Alarms = nil // they belonged to the old stores
	return meta
}

// startState is the meta state this store starts from: the restored one if
// the data dir was made by RestoreBackup, else a fresh cluster's.
func startState(dataDir string, members []Member, splitKeys []string) (*metapb.MetaState, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, restoreFile))
	if errors.Is(err, os.ErrNotExist) {
		return bootstrapState(members, splitKeys), nil
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
