package integration

import (
	"errors"
	"fmt"
	"io"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// TestRangeStream checks etcd 3.7's KV.RangeStream: merging the chunks gives
// exactly the Range answer; header, count and more come with the last chunk.
func TestRangeStream(t *testing.T) {
	c := testcluster.New(t, 1)
	cli := c.Client(t)
	ctx := ctxT(t)
	for i := 0; i < 2500; i++ {
		mustPut(t, cli, fmt.Sprintf("/rs/%05d", i), "v")
	}
	kv := pb.NewKVClient(cli.ActiveConnection())
	req := &pb.RangeRequest{Key: []byte("/rs/"), RangeEnd: []byte(clientv3.GetPrefixRangeEnd("/rs/")), Limit: 2200}
	want, err := kv.Range(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := kv.RangeStream(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	merged := &pb.RangeResponse{}
	chunks := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		chunks++
		proto.Merge(merged, m.RangeResponse)
	}
	if chunks < 2 {
		t.Fatalf("expected several chunks, got %d", chunks)
	}
	if !proto.Equal(merged, want) {
		t.Fatalf("merged stream differs from Range: count %d/%d kvs %d/%d more %v/%v",
			merged.Count, want.Count, len(merged.Kvs), len(want.Kvs), merged.More, want.More)
	}
	bad := &pb.RangeRequest{Key: []byte("/rs/"), SortOrder: pb.RangeRequest_DESCEND}
	s2, err := kv.RangeStream(ctx, bad)
	if err == nil {
		_, err = s2.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("custom sort in RangeStream: %v", err)
	}
}
