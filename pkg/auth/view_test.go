package auth

import (
	"testing"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/keyspan"
	"github.com/tessera-kv/tessera/proto/metapb"
)

func spanOf(key string) keyspan.Span { return keyspan.Span{Key: []byte(key)} }

func applyMsg(t *testing.T, st *metapb.AuthState, m proto.Message) error {
	t.Helper()
	req, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Apply(st, req)
	return err
}

// Permissions merge over a user's roles, READWRITE counts as both, and a
// request must lie wholly inside what is granted.
func TestViewChecks(t *testing.T) {
	st := &metapb.AuthState{}
	for _, m := range []proto.Message{
		&pb.AuthUserAddRequest{Name: "root", HashedPassword: "x"},
		&pb.AuthUserGrantRoleRequest{User: "root", Role: RootRole},
		&pb.AuthUserAddRequest{Name: "u", HashedPassword: "x"},
		&pb.AuthRoleAddRequest{Name: "a"},
		&pb.AuthRoleAddRequest{Name: "b"},
		&pb.AuthRoleGrantPermissionRequest{Name: "a", Perm: &authpb.Permission{PermType: authpb.READ, Key: []byte("/a/"), RangeEnd: []byte("/a0")}},
		&pb.AuthRoleGrantPermissionRequest{Name: "b", Perm: &authpb.Permission{PermType: authpb.READWRITE, Key: []byte("/a0"), RangeEnd: []byte("/b")}},
		&pb.AuthUserGrantRoleRequest{User: "u", Role: "a"},
		&pb.AuthUserGrantRoleRequest{User: "u", Role: "b"},
		&pb.AuthEnableRequest{},
	} {
		if err := applyMsg(t, st, m); err != nil {
			t.Fatalf("%T: %v", m, err)
		}
	}
	v := NewView(st)
	u := Identity{User: "u"}
	for _, tc := range []struct {
		typ  authpb.Permission_Type
		span keyspan.Span
		want error
	}{
		{authpb.READ, keyspan.Span{Key: []byte("/a/"), End: []byte("/b")}, nil}, // two roles' ranges meet at /a0
		{authpb.READ, keyspan.Span{Key: []byte("/a/"), End: []byte("/b\x00")}, rpctypes.ErrGRPCPermissionDenied},
		{authpb.WRITE, spanOf("/a/x"), rpctypes.ErrGRPCPermissionDenied},
		{authpb.WRITE, spanOf("/a1"), nil},
		{authpb.READ, keyspan.Span{Key: []byte("/a/"), End: []byte{}}, rpctypes.ErrGRPCPermissionDenied},
	} {
		if err := v.Check(u, tc.typ, tc.span); err != tc.want {
			t.Errorf("%v %q-%q: %v, want %v", tc.typ, tc.span.Key, tc.span.End, err, tc.want)
		}
	}
	if err := v.Check(Identity{}, authpb.READ, spanOf("/a/x")); err != rpctypes.ErrGRPCUserEmpty {
		t.Errorf("nobody: %v", err)
	}
	if err := v.Check(Identity{User: "ghost"}, authpb.READ, spanOf("/a/x")); err != rpctypes.ErrGRPCPermissionDenied {
		t.Errorf("unknown user: %v", err)
	}
	if err := v.CheckAdmin(Identity{User: "ghost"}); err != rpctypes.ErrGRPCUserNotFound {
		t.Errorf("unknown user as admin: %v", err)
	}
	if v.CheckAdmin(u) != rpctypes.ErrGRPCPermissionDenied || v.CheckAdmin(Identity{User: "root"}) != nil {
		t.Error("admin checks")
	}
	if err := v.Check(Identity{User: "root"}, authpb.WRITE, keyspan.Span{Key: []byte{0}, End: []byte{}}); err != nil {
		t.Errorf("root everywhere: %v", err)
	}
	// A refused change leaves the store as it was.
	before := proto.Clone(st)
	if err := applyMsg(t, st, &pb.AuthUserDeleteRequest{Name: "root"}); err != rpctypes.ErrGRPCInvalidAuthMgmt {
		t.Errorf("deleting root with auth on: %v", err)
	}
	if !proto.Equal(before, st) {
		t.Error("a refused change changed the store")
	}
}
