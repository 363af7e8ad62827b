package wirecodec

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// A response cut into a header part and a shared events part decodes to
// the same message as the whole one.
func TestFramePartsConcatenate(t *testing.T) {
	full := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 9, ClusterId: 3}, WatchId: 4,
		Events: []*mvccpb.Event{{Kv: &mvccpb.KeyValue{Key: []byte("k"), Value: []byte("v"), ModRevision: 9}}}}
	head, err := proto.Marshal(&pb.WatchResponse{Header: full.Header, WatchId: full.WatchId})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := proto.Marshal(&pb.WatchResponse{Events: full.Events})
	if err != nil {
		t.Fatal(err)
	}
	c := New()
	bs, err := c.Marshal(&Frame{Parts: [][]byte{head, evs}})
	if err != nil {
		t.Fatal(err)
	}
	var got pb.WatchResponse
	if err := c.Unmarshal(bs, &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, full) {
		t.Fatalf("got %v, want %v", &got, full)
	}
	var f Frame
	if err := c.Unmarshal(bs, &f); err != nil {
		t.Fatal(err)
	}
	if string(f.Bytes()) != string(head)+string(evs) {
		t.Fatal("frame bytes differ from the parts sent")
	}
}
