package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/tessera-kv/tessera/services/replica"
)

// runSnapshot handles "tessera snapshot save|restore|status". Backups can
// also be taken with etcd's own client: etcdctl snapshot save FILE.
func runSnapshot(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: tessera snapshot save FILE | restore FILE --data-dir DIR | status FILE")
	}
	switch args[0] {
	case "save":
		return snapshotSave(args[1:])
	case "status":
		return snapshotStatus(args[1:])
	case "restore":
		return snapshotRestore(args[1:])
	}
	return fmt.Errorf("unknown snapshot command %q (want save, restore or status)", args[0])
}

// splitFile takes the FILE argument wherever it stands among the flags.
func splitFile(fs *flag.FlagSet, args []string) (string, error) {
	var file string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		if file != "" {
			return "", fmt.Errorf("more than one file: %q and %q", file, fs.Arg(0))
		}
		file, args = fs.Arg(0), fs.Args()[1:]
	}
	if file == "" {
		return "", errors.New("a backup FILE is required")
	}
	return file, nil
}

func snapshotStatus(args []string) error {
	fs := flag.NewFlagSet("snapshot status", flag.ExitOnError)
	file, err := splitFile(fs, args)
	if err != nil {
		return err
	}
	info, err := replica.InspectBackup(file)
	if err != nil {
		return err
	}
	fmt.Printf("revision:   %d\nkeys:       %d\nsize:       %d bytes\nshards:     %d\nleases:     %d\nsha256:     %x\n",
		info.Revision(), info.Keys(), info.Size, len(info.Shards), len(info.Meta.Leases), info.SHA256)
	for _, s := range info.Shards {
		fmt.Printf("shard %d:    revision %d, compacted at %d, %d keys, %d versions\n",
			s.ShardID, s.State.Revision, s.State.CompactRevision, s.Keys, s.Versions)
	}
	return nil
}

func snapshotRestore(args []string) error {
	fs := flag.NewFlagSet("snapshot restore", flag.ExitOnError)
	dataDir := fs.String("data-dir", "", "where to create the restored data: a tessera dev --data-dir, or with --initial-cluster a tessera replica --data-dir")
	raftAddr := fs.String("raft-address", "127.0.0.1:2380", "for tessera dev: its --raft-address")
	apiAddr := fs.String("api-address", "127.0.0.1:2381", "for tessera dev: its --api-address")
	cluster := fs.String("initial-cluster", "", "for a cluster: every store, ID=RAFT_ADDR/API_ADDR[@zone=Z],... (restore each store from the same file)")
	id := fs.Uint64("id", 0, "for a cluster: this store's ID")
	rf := fs.Int("replication-factor", replica.DefaultReplicationFactor, "for a cluster: how many stores hold each shard (give every store the same)")
	file, err := splitFile(fs, args)
	if err != nil {
		return err
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}
	storeDir, storeID := filepath.Join(*dataDir, "replica"), uint64(1)
	members := []replica.Member{{ID: 1, RaftAddress: *raftAddr, APIAddress: *apiAddr}}
	if *cluster != "" {
		if members, err = parseCluster(*cluster); err != nil {
			return err
		}
		storeDir, storeID = *dataDir, *id
	}
	bar := newProgress(os.Stderr)
	info, err := replica.RestoreBackup(file, storeDir, storeID, members, *rf, bar.update)
	bar.done()
	if err != nil {
		return err
	}
	fmt.Printf("restored revision %d (%d keys, %d leases) into %s\n", info.Revision(), info.Keys(), len(info.Meta.Leases), storeDir)
	return nil
}

// progress draws a bar on a terminal line for each pass over the file
// (the restore checks the whole file before it writes anything).
type progress struct {
	w     io.Writer
	pass  int
	last  int64
	shown int
}

func newProgress(w io.Writer) *progress { return &progress{w: w} }

func (p *progress) update(read, total int64) {
	if read < p.last {
		fmt.Fprintln(p.w)
		p.pass++
		p.shown = -1
	}
	p.last = read
	pct := int(100 * read / max(total, 1))
	if pct == p.shown {
		return
	}
	p.shown = pct
	label := "checking "
	if p.pass > 0 {
		label = "restoring"
	}
	const width = 40
	fill := pct * width / 100
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%%  %s / %s", label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), pct,
		mib(read), mib(total))
}

func (p *progress) done() { fmt.Fprintln(p.w) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
