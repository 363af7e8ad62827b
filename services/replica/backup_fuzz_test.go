package replica

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/tessera-kv/tessera/pkg/mvcc"
	"github.com/tessera-kv/tessera/proto/metapb"
)

// validBackup writes a backup of one small shard the way Backup does.
func validBackup(t testing.TB) []byte {
	t.Helper()
	s, err := mvcc.Open(t.TempDir(), mvcc.Options{MemTableSize: 8 << 20, NumMemtables: 2, BlockCacheSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sh, err := s.OpenShard(2, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	d := &metapb.ShardDescriptor{Id: 2, Generation: 1}
	if err := writeBackupHead(&body, &metapb.MetaState{ShardMap: &metapb.ShardMap{Shards: []*metapb.ShardDescriptor{d}}, TsoLimit: 10}, 1); err != nil {
		t.Fatal(err)
	}
	if err := writeMessage(&body, d); err != nil {
		t.Fatal(err)
	}
	snap := sh.PrepareSnapshot()
	defer snap.Close()
	if err := snap.WriteTo(&body, nil); err != nil {
		t.Fatal(err)
	}
	body.Write(make([]byte, (512-body.Len()%512)%512))
	sum := sha256.Sum256(body.Bytes())
	return append(body.Bytes(), sum[:]...)
}

// FuzzInspectBackup: a crafted backup file is refused with an error
// (tessera snapshot status reads it before restore touches anything), and
// no length in it makes the reader allocate what it claims.
func FuzzInspectBackup(f *testing.F) {
	good := validBackup(f)
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(append(append([]byte{}, backupMagic...), 0xff, 0xff, 0xff, 0xff, 0xff, 0x07))
	path := filepath.Join(f.TempDir(), "backup.db")
	if _, err := func() (BackupInfo, error) { os.WriteFile(path, good, 0o600); return InspectBackup(path) }(); err != nil {
		f.Fatalf("a valid backup is refused: %v", err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		info, err := InspectBackup(path)
		if err == nil && (info.Meta == nil || len(info.SHA256) != sha256.Size) {
			t.Fatalf("accepted a backup without meta state or checksum: %+v", info)
		}
	})
}
