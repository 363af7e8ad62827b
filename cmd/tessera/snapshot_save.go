package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/tessera-kv/tessera/services/replica"
)

// snapshotSave takes a backup through a gateway, as "etcdctl snapshot
// save" does, so the image needs no etcdctl: the stream goes to FILE.part,
// is checked (its SHA-256) and only then renamed to FILE. With --dir the
// file is named by the time, and --keep prunes the oldest.
func snapshotSave(args []string) error {
	fs := flag.NewFlagSet("snapshot save", flag.ExitOnError)
	gw := registerGatewayClient(fs, "backups are root's")
	dir := fs.String("dir", "", "write tessera-<UTC time>.db in this directory instead of FILE")
	keep := fs.Int("keep", 0, "with --dir: keep only the newest N backups there (0: all)")
	timeout := fs.Duration("timeout", time.Hour, "give up after this long")
	var file string
	var err error
	if hasFlag(args, "dir") {
		fs.Parse(args)
		if fs.NArg() > 0 {
			return errors.New("give FILE or --dir, not both")
		}
	} else if file, err = splitFile(fs, args); err != nil {
		return err
	}
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o755); err != nil {
			return err
		}
		file = filepath.Join(*dir, "tessera-"+time.Now().UTC().Format("20060102T150405Z")+".db")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	conn, ctx, err := gw.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := receiveSnapshot(ctx, pb.NewMaintenanceClient(conn), file); err != nil {
		return err
	}
	info, err := replica.InspectBackup(file)
	if err != nil {
		os.Remove(file)
		return fmt.Errorf("the backup received does not check out: %w", err)
	}
	fmt.Printf("saved %s: revision %d, %d keys, %s, sha256 %x\n", file, info.Revision(), info.Keys(), mib(info.Size), info.SHA256)
	if *dir != "" && *keep > 0 {
		return prune(*dir, *keep)
	}
	return nil
}

// receiveSnapshot streams the backup into file (through file.part),
// reporting progress on stderr once a second.
func receiveSnapshot(ctx context.Context, mc pb.MaintenanceClient, file string) error {
	part := file + ".part"
	f, err := os.OpenFile(part, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(part) // a no-op once renamed
	st, err := mc.Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		f.Close()
		return err
	}
	var n int64
	last := time.Now()
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("snapshot stream: %w", err)
		}
		if _, err := f.Write(r.Blob); err != nil {
			f.Close()
			return err
		}
		n += int64(len(r.Blob))
		if time.Since(last) >= time.Second {
			fmt.Fprintf(os.Stderr, "received %s\n", mib(n))
			last = time.Now()
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(part, file)
}

// prune deletes the oldest tessera-*.db backups in dir beyond the newest
// keep (their names sort by time).
func prune(dir string, keep int) error {
	names, err := filepath.Glob(filepath.Join(dir, "tessera-*.db"))
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, old := range names[:max(0, len(names)-keep)] {
		if err := os.Remove(old); err != nil {
			return err
		}
		fmt.Printf("removed %s\n", old)
	}
	return nil
}

// hasFlag reports whether args set --name (or -name).
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		a = strings.TrimLeft(a, "-")
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}
