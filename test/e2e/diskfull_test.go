package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// smallFS mounts a tmpfs of size MiB for the test (root only; the test is
// skipped where mounting is not allowed) and unmounts it at the end.
func smallFS(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small filesystem needs root")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestDiskFull writes 8 KiB values into tessera dev on a 200 MiB filesystem
// until it refuses them: it refuses with etcd's no-space error before the
// disk is full (the process used to die of SIGBUS), keeps serving reads,
// deletes and compactions, and takes writes again once space is back and
// the alarm is disarmed, as etcd's operators do it.
func TestDiskFull(t *testing.T) {
	fs := smallFS(t, 200)
	d := newDevNode(t)
	d.dataDir = filepath.Join(fs, "data")
	d.extraArgs = []string{"--free-space-reserve-bytes", fmt.Sprint(48 << 20)}
	d.start(t)
	// Stopped before the unmount (cleanups run last-in first-out).
	t.Cleanup(d.p.Stop)
	cli := newClient(t, d.endpoint())
	val := strings.Repeat("v", 8<<10)
	written := 0
	var lastErr error
	for i := 0; i < 40000 && lastErr == nil; i++ {
		_, lastErr = cli.Put(ctxT(t), fmt.Sprintf("/fill/%06d", i), val)
		if lastErr == nil {
			written++
		}
	}
	if !errors.Is(lastErr, rpctypes.ErrNoSpace) {
		t.Fatalf("after %d puts of 8 KiB: %v, want etcd's no-space error", written, lastErr)
	}
	t.Logf("refused after %d puts of 8 KiB", written)
	if d.p.exited() {
		t.Fatalf("tessera dev died: %s", d.p.exitErr())
	}

	// The alarm is raised through the meta shard's log right after the
	// first refusal.
	var alarms *clientv3.AlarmResponse
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		alarms, err = cli.AlarmList(ctxT(t))
		if err == nil && len(alarms.Alarms) == 1 && alarms.Alarms[0].Alarm == pb.AlarmType_NOSPACE {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alarm list: %v, %v", alarms, err)
		}
	}
	// Reads, deletes and compactions go on.
	g, err := cli.Get(ctxT(t), "/fill/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || g.Count != int64(written) {
		t.Fatalf("count while full: %v, %v (wrote %d)", g, err, written)
	}
	if _, err := cli.Delete(ctxT(t), "/fill/000000", clientv3.WithRange("/fill/000100")); err != nil {
		t.Fatalf("delete while full: %v", err)
	}
	if _, err := cli.Compact(ctxT(t), g.Header.Revision); err != nil {
		t.Fatalf("compact while full: %v", err)
	}
	if _, err := cli.Put(ctxT(t), "/more", "x"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put while full: %v", err)
	}

	// The operator adds space and disarms the alarm.
	if out, err := exec.Command("mount", "-o", "remount,size=600m", fs).CombinedOutput(); err != nil {
		t.Fatalf("grow the filesystem: %v: %s", err, out)
	}
	if _, err := cli.AlarmDisarm(ctxT(t), &clientv3.AlarmMember{MemberID: alarms.Alarms[0].MemberID, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatalf("disarm: %v", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := cli.Put(ctxT(t), "/more", "x")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put after adding space and disarming: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Everything acknowledged is there after a restart.
	d.p.Stop()
	d.start(t)
	cli = newClient(t, d.endpoint())
	g, err = cli.Get(ctxT(t), "/fill/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || g.Count != int64(written-100) {
		t.Fatalf("after restart: %v, %v (want %d)", g, err, written-100)
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
