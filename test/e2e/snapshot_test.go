package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSnapshotSaveRestore backs up "tessera dev" with etcdctl snapshot save,
// checks the file with tessera snapshot status, restores it into a new data
// dir and starts a new tessera dev on it: keys, history, leases and the
// revision are back, and new writes get higher revisions.
func TestSnapshotSaveRestore(t *testing.T) {
	t.Run("one shard", func(t *testing.T) { snapshotSaveRestore(t, nil) })
	// Three shards cut through the keys: the backup is one cut of all of
	// them at one revision, and the restore brings back the same shards.
	t.Run("three shards", func(t *testing.T) { snapshotSaveRestore(t, nil, "--initial-split-keys", "/snap/05,/snap/1") })
	// The same three shards, made by splits of a running cluster.
	t.Run("three shards split online", func(t *testing.T) { snapshotSaveRestore(t, []string{"/snap/1", "/snap/05"}) })
}

func snapshotSaveRestore(t *testing.T, splits []string, devArgs ...string) {
	d := newDevNode(t)
	d.extraArgs = devArgs
	d.start(t)
	cli := newClient(t, d.endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/snap/000", "before the splits"); err != nil {
		t.Fatal(err)
	}
	for _, key := range splits {
		if out := tessera(t, "shard", "split", "--endpoints", d.endpoint(), key); !strings.Contains(out, "split shard") {
			t.Fatalf("tessera shard split %s: %s", key, out)
		}
	}
	var last int64
	for i := 0; i < 200; i++ {
		r, err := cli.Put(ctx, fmt.Sprintf("/snap/%03d", i), fmt.Sprintf("v%d", i))
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	_, err := cli.Put(ctx, "/snap/000", "v0-again")
	if err != nil {
		t.Fatal(err)
	}
	lease, err := cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := cli.Put(ctx, "/snap/leased", "x", clientv3.WithLease(lease.ID))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "backup.db")
	if out, errOut, code := runCtl(t, d.endpoint(), "", "snapshot", "save", file); code != 0 || !strings.Contains(out+errOut, "Snapshot saved") {
		t.Fatalf("snapshot save: exit %d: %s %s", code, out, errOut)
	}
	// tessera's own snapshot save (what the image's backup CronJob runs)
	// writes the same backup, and prunes old ones.
	dir := t.TempDir()
	for range 3 {
		if out := tessera(t, "snapshot", "save", "--endpoints", d.endpoint(), "--dir", dir, "--keep", "2"); !strings.Contains(out, fmt.Sprintf("revision %d, 201 keys", lr.Header.Revision)) {
			t.Fatalf("tessera snapshot save: %s", out)
		}
		time.Sleep(1100 * time.Millisecond) // names are by the second
	}
	if saved, _ := filepath.Glob(filepath.Join(dir, "tessera-*.db")); len(saved) != 2 {
		t.Fatalf("--keep 2 left %v", saved)
	}
	d.p.Stop()

	status := tessera(t, "snapshot", "status", file)
	if !strings.Contains(status, fmt.Sprintf("revision:   %d", lr.Header.Revision)) || !strings.Contains(status, "keys:       201") ||
		!strings.Contains(status, "leases:     1") {
		t.Fatalf("snapshot status:\n%s", status)
	}

	n := newDevNode(t)
	out := tessera(t, "snapshot", "restore", file, "--data-dir", n.dataDir, "--raft-address", n.raft, "--api-address", n.api)
	if !strings.Contains(out, fmt.Sprintf("restored revision %d (201 keys, 1 leases)", lr.Header.Revision)) {
		t.Fatalf("restore: %s", out)
	}
	n.start(t)
	cli2 := newClient(t, n.endpoint())
	g, err := cli2.Get(ctx, "/snap/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || g.Count != 201 || g.Header.Revision != lr.Header.Revision {
		t.Fatalf("after restore: %v (%v), want 201 keys at %d", g, err, lr.Header.Revision)
	}
	old, err := cli2.Get(ctx, "/snap/000", clientv3.WithRev(last))
	if err != nil || len(old.Kvs) != 1 || string(old.Kvs[0].Value) != "v0" {
		t.Fatalf("history at %d: %v %v", last, old, err)
	}
	ttl, err := cli2.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) != 1 {
		t.Fatalf("restored lease: %+v %v", ttl, err)
	}
	next, err := cli2.Put(ctx, "/snap/after", "x")
	if err != nil || next.Header.Revision <= lr.Header.Revision {
		t.Fatalf("write after restore: %v (%v), want a revision above %d", next, err, lr.Header.Revision)
	}
	if len(devArgs) > 0 || len(splits) > 0 {
		if !strings.Contains(status, "shards:     3") {
			t.Fatalf("snapshot status of a 3-shard backup:\n%s", status)
		}
		// The restored cluster has the same three shards: a delete
		// across them is refused.
		if _, err := cli2.Delete(ctx, "/snap/", clientv3.WithPrefix()); err == nil || !strings.Contains(err.Error(), "shards 2, ") {
			t.Fatalf("delete across the restored shards: %v", err)
		}
		// The restored shards split again, and keep their keys.
		if out := tessera(t, "shard", "split", "--endpoints", n.endpoint(), "/snap/07"); !strings.Contains(out, "split shard") {
			t.Fatalf("split after restore: %s", out)
		}
		if g, err := cli2.Get(ctx, "/snap/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || g.Count != 202 {
			t.Fatalf("after a split of the restored cluster: %v (%v), want 202 keys", g, err)
		}
	}

}

// tessera runs the tessera binary and returns its combined output.
func tessera(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, tesseraBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("tessera %v: %v\n%s", args, err, out)
	}
	return string(out)
}
