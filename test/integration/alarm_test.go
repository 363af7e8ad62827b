package integration

import (
	"errors"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestNoSpace: a store past its quota raises NOSPACE; puts and lease grants
// then get etcd's no-space error and change nothing, while reads and
// deletes go on; the alarm shows in alarm list and status. Disarming it
// while the store is still too big raises it again.
func TestNoSpace(t *testing.T) {
	c := testcluster.New(t, 1, testcluster.Options{QuotaBytes: 512 << 10})
	cli := c.Client(t)
	big := strings.Repeat("x", 64<<10)
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for i := 0; ; i++ {
		_, err = cli.Put(ctxT(t), "/big/"+string(rune('a'+i%26)), big)
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("puts past the quota: %v, want the no-space error", err)
	}
	if _, err := cli.Put(ctxT(t), "/big/refused", "v"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put under NOSPACE: %v", err)
	}
	if g, _ := cli.Get(ctxT(t), "/big/refused"); len(g.Kvs) != 0 {
		t.Fatal("a refused put was applied")
	}
	if _, err := cli.Grant(ctxT(t), 10); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("lease grant under NOSPACE: %v", err)
	}
	if _, err := cli.Delete(ctxT(t), "/big/a"); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	alarms, err := cli.AlarmList(ctxT(t))
	if err != nil || len(alarms.Alarms) != 1 || alarms.Alarms[0].Alarm != pb.AlarmType_NOSPACE {
		t.Fatalf("alarm list: %v %v", alarms, err)
	}
	st, err := cli.Status(ctxT(t), c.Endpoints()[0])
	if err != nil || len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "NOSPACE") || st.DbSizeQuota != 512<<10 {
		t.Fatalf("status: %v, %v", st, err)
	}
	if _, err := cli.AlarmDisarm(ctxT(t), (*clientv3.AlarmMember)(alarms.Alarms[0])); err != nil {
		t.Fatal(err)
	}
	// Still over the quota: the store raises it again.
	deadline = time.Now().Add(10 * time.Second)
	for {
		a, err := cli.AlarmList(ctxT(t))
		if err == nil && len(a.Alarms) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("NOSPACE not raised again while still over the quota")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAlarmActivateDeactivate raises and clears an alarm by hand.
func TestAlarmActivateDeactivate(t *testing.T) {
	c := testcluster.New(t, 1)
	cli := c.Client(t)
	store := c.Replica(0).StoreID()
	mc := pb.NewMaintenanceClient(cli.ActiveConnection())
	// Only etcd's alarms, only for stores that exist: the list cannot be
	// filled with junk.
	for _, bad := range []*pb.AlarmRequest{
		{Action: pb.AlarmRequest_ACTIVATE, MemberID: store + 1000, Alarm: pb.AlarmType_NOSPACE},
		{Action: pb.AlarmRequest_ACTIVATE, MemberID: store, Alarm: pb.AlarmType(77)},
	} {
		if _, err := mc.Alarm(ctxT(t), bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("raising %v for %d: %v, want InvalidArgument", bad.Alarm, bad.MemberID, err)
		}
	}
	if r, err := cli.AlarmList(ctxT(t)); err != nil || len(r.Alarms) != 0 {
		t.Fatalf("alarms after refused raises: %v %v", r, err)
	}
	if _, err := mc.Alarm(ctxT(t), &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: store, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := cli.Put(ctxT(t), "k", "v")
		if errors.Is(err, rpctypes.ErrNoSpace) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("puts still accepted after NOSPACE was raised: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := mc.Alarm(ctxT(t), &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: store, Alarm: pb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := cli.Put(ctxT(t), "k", "v"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("puts still refused after the alarm was cleared: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
