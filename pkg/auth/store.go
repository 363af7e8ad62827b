// Package auth is etcd's auth model over Tessera's replicated auth store
// (metapb.AuthState, kept by the meta shard): the changes etcd's Auth calls
// make (Apply, deterministic, for the meta state machine), the answers to
// its reads (Read), the permission checks the gateways make (View), and
// the tokens they issue and verify (Tokens).
package auth

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/proto/metapb"
)

// RootUser and RootRole are etcd's: the root role may do everything, and
// auth can be enabled only when the root user exists and has it.
const (
	RootUser = "root"
	RootRole = "root"
)

// Decode returns the etcd request an AuthRequest carries.
func Decode(req *metapb.AuthRequest) (proto.Message, error) {
	var (
		m proto.Message
		b []byte
	)
	switch op := req.GetOp().(type) { // nil-safe: apply must never panic
	case *metapb.AuthRequest_Enable:
		m, b = &pb.AuthEnableRequest{}, op.Enable
	case *metapb.AuthRequest_Disable:
		m, b = &pb.AuthDisableRequest{}, op.Disable
	case *metapb.AuthRequest_Status:
		m, b = &pb.AuthStatusRequest{}, op.Status
	case *metapb.AuthRequest_UserAdd:
		m, b = &pb.AuthUserAddRequest{}, op.UserAdd
	case *metapb.AuthRequest_UserGet:
		m, b = &pb.AuthUserGetRequest{}, op.UserGet
	case *metapb.AuthRequest_UserList:
		m, b = &pb.AuthUserListRequest{}, op.UserList
	case *metapb.AuthRequest_UserDelete:
		m, b = &pb.AuthUserDeleteRequest{}, op.UserDelete
	case *metapb.AuthRequest_UserChangePassword:
		m, b = &pb.AuthUserChangePasswordRequest{}, op.UserChangePassword
	case *metapb.AuthRequest_UserGrantRole:
		m, b = &pb.AuthUserGrantRoleRequest{}, op.UserGrantRole
	case *metapb.AuthRequest_UserRevokeRole:
		m, b = &pb.AuthUserRevokeRoleRequest{}, op.UserRevokeRole
	case *metapb.AuthRequest_RoleAdd:
		m, b = &pb.AuthRoleAddRequest{}, op.RoleAdd
	case *metapb.AuthRequest_RoleGet:
		m, b = &pb.AuthRoleGetRequest{}, op.RoleGet
	case *metapb.AuthRequest_RoleList:
		m, b = &pb.AuthRoleListRequest{}, op.RoleList
	case *metapb.AuthRequest_RoleDelete:
		m, b = &pb.AuthRoleDeleteRequest{}, op.RoleDelete
	case *metapb.AuthRequest_RoleGrantPermission:
		m, b = &pb.AuthRoleGrantPermissionRequest{}, op.RoleGrantPermission
	case *metapb.AuthRequest_RoleRevokePermission:
		m, b = &pb.AuthRoleRevokePermissionRequest{}, op.RoleRevokePermission
	default:
		return nil, errors.New("auth: empty request")
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("auth: %T: %w", m, err)
	}
	return m, nil
}

// Encode wraps an etcd Auth request for the meta shard.
func Encode(m proto.Message) (*metapb.AuthRequest, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	r := &metapb.AuthRequest{}
	switch m.(type) {
	case *pb.AuthEnableRequest:
		r.Op = &metapb.AuthRequest_Enable{Enable: b}
	case *pb.AuthDisableRequest:
		r.Op = &metapb.AuthRequest_Disable{Disable: b}
	case *pb.AuthStatusRequest:
		r.Op = &metapb.AuthRequest_Status{Status: b}
	case *pb.AuthUserAddRequest:
		r.Op = &metapb.AuthRequest_UserAdd{UserAdd: b}
	case *pb.AuthUserGetRequest:
		r.Op = &metapb.AuthRequest_UserGet{UserGet: b}
	case *pb.AuthUserListRequest:
		r.Op = &metapb.AuthRequest_UserList{UserList: b}
	case *pb.AuthUserDeleteRequest:
		r.Op = &metapb.AuthRequest_UserDelete{UserDelete: b}
	case *pb.AuthUserChangePasswordRequest:
		r.Op = &metapb.AuthRequest_UserChangePassword{UserChangePassword: b}
	case *pb.AuthUserGrantRoleRequest:
		r.Op = &metapb.AuthRequest_UserGrantRole{UserGrantRole: b}
	case *pb.AuthUserRevokeRoleRequest:
		r.Op = &metapb.AuthRequest_UserRevokeRole{UserRevokeRole: b}
	case *pb.AuthRoleAddRequest:
		r.Op = &metapb.AuthRequest_RoleAdd{RoleAdd: b}
	case *pb.AuthRoleGetRequest:
		r.Op = &metapb.AuthRequest_RoleGet{RoleGet: b}
	case *pb.AuthRoleListRequest:
		r.Op = &metapb.AuthRequest_RoleList{RoleList: b}
	case *pb.AuthRoleDeleteRequest:
		r.Op = &metapb.AuthRequest_RoleDelete{RoleDelete: b}
	case *pb.AuthRoleGrantPermissionRequest:
		r.Op = &metapb.AuthRequest_RoleGrantPermission{RoleGrantPermission: b}
	case *pb.AuthRoleRevokePermissionRequest:
		r.Op = &metapb.AuthRequest_RoleRevokePermission{RoleRevokePermission: b}
	default:
		return nil, fmt.Errorf("auth: %T is not an auth request", m)
	}
	return r, nil
}

// IsRead reports whether the request only reads the store (it is served
// after a ReadIndex, not through the log).
func IsRead(req *metapb.AuthRequest) bool {
	switch req.Op.(type) {
	case *metapb.AuthRequest_Status, *metapb.AuthRequest_UserGet, *metapb.AuthRequest_UserList,
		*metapb.AuthRequest_RoleGet, *metapb.AuthRequest_RoleList:
		return true
	}
	return false
}

// Apply makes the change an auth request asks for, as etcd's auth store
// does, and returns etcd's response (without header) or etcd's error, in
// which case st is unchanged. It is deterministic: the meta shard's state
// machine calls it. A read request is an error here.
func Apply(st *metapb.AuthState, req *metapb.AuthRequest) (proto.Message, error) {
	resp, err := apply(st, req)
	if err == nil {
		st.Generation++ // even for a no-op: a refetch costs little
	}
	return resp, err
}

func apply(st *metapb.AuthState, req *metapb.AuthRequest) (proto.Message, error) {
	m, err := Decode(req)
	if err != nil {
		return nil, err
	}
	if st.Revision == 0 {
		st.Revision = 1 // etcd's store starts at revision 1
	}
	switch r := m.(type) {
	case *pb.AuthEnableRequest:
		if st.Enabled {
			return &pb.AuthEnableResponse{}, nil
		}
		u := st.Users[RootUser]
		if u == nil {
			return nil, rpctypes.ErrGRPCRootUserNotExist
		}
		if !slices.Contains(u.Roles, RootRole) {
			return nil, rpctypes.ErrGRPCRootRoleNotExist
		}
		// As etcd, enabling does not change the auth revision.
		st.Enabled, st.TokenKey = true, bytes.Clone(req.TokenKey)
		return &pb.AuthEnableResponse{}, nil
	case *pb.AuthDisableRequest:
		if st.Enabled {
			st.Enabled, st.TokenKey = false, nil
			st.Revision++
		}
		return &pb.AuthDisableResponse{}, nil
	case *pb.AuthUserAddRequest:
		if r.Name == "" {
			return nil, rpctypes.ErrGRPCUserEmpty
		}
		if st.Users[r.Name] != nil {
			return nil, rpctypes.ErrGRPCUserAlreadyExist
		}
		noPassword := r.Options != nil && r.Options.NoPassword
		if !noPassword && r.HashedPassword == "" {
			return nil, rpctypes.ErrGRPCAuthFailed // the gateway hashes every password; an empty one is refused there
		}
		if st.Users == nil {
			st.Users = map[string]*metapb.AuthUser{}
		}
		st.Users[r.Name] = &metapb.AuthUser{Name: r.Name, PasswordHash: r.HashedPassword, NoPassword: noPassword}
		st.Revision++
		return &pb.AuthUserAddResponse{}, nil
	case *pb.AuthUserDeleteRequest:
		if st.Enabled && r.Name == RootUser {
			return nil, rpctypes.ErrGRPCInvalidAuthMgmt
		}
		if st.Users[r.Name] == nil {
			return nil, rpctypes.ErrGRPCUserNotFound
		}
		delete(st.Users, r.Name)
		st.Revision++
		return &pb.AuthUserDeleteResponse{}, nil
	case *pb.AuthUserChangePasswordRequest:
		u := st.Users[r.Name]
		if u == nil {
			return nil, rpctypes.ErrGRPCUserNotFound
		}
		if r.HashedPassword == "" {
			return nil, rpctypes.ErrGRPCAuthFailed
		}
		u.PasswordHash, u.NoPassword = r.HashedPassword, false
		st.Revision++
		return &pb.AuthUserChangePasswordResponse{}, nil
	case *pb.AuthUserGrantRoleRequest:
		u := st.Users[r.User]
		if u == nil {
			return nil, rpctypes.ErrGRPCUserNotFound
		}
		if r.Role != RootRole && st.Roles[r.Role] == nil {
			return nil, rpctypes.ErrGRPCRoleNotFound
		}
		i, found := slices.BinarySearch(u.Roles, r.Role)
		if found {
			return &pb.AuthUserGrantRoleResponse{}, nil
		}
		u.Roles = slices.Insert(u.Roles, i, r.Role)
		st.Revision++
		return &pb.AuthUserGrantRoleResponse{}, nil
	case *pb.AuthUserRevokeRoleRequest:
		if st.Enabled && r.Name == RootUser && r.Role == RootRole {
			return nil, rpctypes.ErrGRPCInvalidAuthMgmt
		}
		u := st.Users[r.Name]
		if u == nil {
			return nil, rpctypes.ErrGRPCUserNotFound
		}
		i, found := slices.BinarySearch(u.Roles, r.Role)
		if !found {
			return nil, rpctypes.ErrGRPCRoleNotGranted
		}
		u.Roles = slices.Delete(u.Roles, i, i+1)
		st.Revision++
		return &pb.AuthUserRevokeRoleResponse{}, nil
	case *pb.AuthRoleAddRequest:
		if r.Name == "" {
			return nil, rpctypes.ErrGRPCRoleEmpty
		}
		if st.Roles[r.Name] != nil {
			return nil, rpctypes.ErrGRPCRoleAlreadyExist
		}
		if st.Roles == nil {
			st.Roles = map[string]*metapb.AuthRole{}
		}
		st.Roles[r.Name] = &metapb.AuthRole{Name: r.Name}
		st.Revision++
		return &pb.AuthRoleAddResponse{}, nil
	case *pb.AuthRoleDeleteRequest:
		if st.Enabled && r.Role == RootRole {
			return nil, rpctypes.ErrGRPCInvalidAuthMgmt
		}
		if st.Roles[r.Role] == nil {
			return nil, rpctypes.ErrGRPCRoleNotFound
		}
		delete(st.Roles, r.Role)
		// The role leaves every user that had it.
		for _, name := range sortedKeys(st.Users) {
			u := st.Users[name]
			if i, found := slices.BinarySearch(u.Roles, r.Role); found {
				u.Roles = slices.Delete(u.Roles, i, i+1)
			}
		}
		st.Revision++
		return &pb.AuthRoleDeleteResponse{}, nil
	case *pb.AuthRoleGrantPermissionRequest:
		if r.Perm == nil {
			return nil, rpctypes.ErrGRPCPermissionNotGiven
		}
		if !validPermissionRange(r.Perm.Key, r.Perm.RangeEnd) {
			return nil, rpctypes.ErrGRPCInvalidAuthMgmt
		}
		role := st.Roles[r.Name]
		if role == nil {
			return nil, rpctypes.ErrGRPCRoleNotFound
		}
		p := &metapb.AuthPermission{Type: int32(r.Perm.PermType), Key: bytes.Clone(r.Perm.Key), RangeEnd: bytes.Clone(r.Perm.RangeEnd)}
		i, found := slices.BinarySearchFunc(role.Permissions, p, comparePerm)
		if found {
			role.Permissions[i].Type = p.Type // the same range again: the new type replaces the old
		} else {
			role.Permissions = slices.Insert(role.Permissions, i, p)
		}
		st.Revision++
		return &pb.AuthRoleGrantPermissionResponse{}, nil
	case *pb.AuthRoleRevokePermissionRequest:
		role := st.Roles[r.Role]
		if role == nil {
			return nil, rpctypes.ErrGRPCRoleNotFound
		}
		i, found := slices.BinarySearchFunc(role.Permissions, &metapb.AuthPermission{Key: r.Key, RangeEnd: r.RangeEnd}, comparePerm)
		if !found {
			return nil, rpctypes.ErrGRPCPermissionNotGranted
		}
		role.Permissions = slices.Delete(role.Permissions, i, i+1)
		st.Revision++
		return &pb.AuthRoleRevokePermissionResponse{}, nil
	}
	return nil, fmt.Errorf("auth: %T does not change the store", m)
}

// validPermissionRange is etcd's rule: a key, and a range end (if any)
// above it or "\x00" (every key from key on).
func validPermissionRange(key, end []byte) bool {
	return len(key) > 0 && (len(end) == 0 || bytes.Compare(key, end) < 0 || bytes.Equal(end, []byte{0}))
}

// comparePerm orders permissions by key, then range end.
func comparePerm(a, b *metapb.AuthPermission) int {
	if c := bytes.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return bytes.Compare(a.RangeEnd, b.RangeEnd)
}

// Read answers the requests that only read the store.
func Read(st *metapb.AuthState, req *metapb.AuthRequest) (proto.Message, error) {
	m, err := Decode(req)
	if err != nil {
		return nil, err
	}
	switch r := m.(type) {
	case *pb.AuthStatusRequest:
		return &pb.AuthStatusResponse{Enabled: st.Enabled, AuthRevision: max(st.Revision, 1)}, nil
	case *pb.AuthUserGetRequest:
		u := st.Users[r.Name]
		if u == nil {
			return nil, rpctypes.ErrGRPCUserNotFound
		}
		return &pb.AuthUserGetResponse{Roles: slices.Clone(u.Roles)}, nil
	case *pb.AuthUserListRequest:
		return &pb.AuthUserListResponse{Users: sortedKeys(st.Users)}, nil
	case *pb.AuthRoleGetRequest:
		role := st.Roles[r.Role]
		if role == nil {
			return nil, rpctypes.ErrGRPCRoleNotFound
		}
		if r.Role == RootRole {
			// etcd shows the root role as able to do everything.
			return &pb.AuthRoleGetResponse{Perm: []*authpb.Permission{{PermType: authpb.READWRITE, Key: []byte{}, RangeEnd: []byte{0}}}}, nil
		}
		resp := &pb.AuthRoleGetResponse{}
		for _, p := range role.Permissions {
			resp.Perm = append(resp.Perm, &authpb.Permission{PermType: authpb.Permission_Type(p.Type), Key: bytes.Clone(p.Key), RangeEnd: bytes.Clone(p.RangeEnd)})
		}
		return resp, nil
	case *pb.AuthRoleListRequest:
		return &pb.AuthRoleListResponse{Roles: sortedKeys(st.Roles)}, nil
	}
	return nil, fmt.Errorf("auth: %T is not a read", m)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// errorsByMessage are etcd's auth errors, found again from their message
// after they crossed the meta shard's log as text.
var errorsByMessage = func() map[string]error {
	m := map[string]error{}
	for _, e := range []error{
		rpctypes.ErrGRPCRootUserNotExist, rpctypes.ErrGRPCRootRoleNotExist, rpctypes.ErrGRPCUserAlreadyExist,
		rpctypes.ErrGRPCUserEmpty, rpctypes.ErrGRPCUserNotFound, rpctypes.ErrGRPCRoleAlreadyExist,
		rpctypes.ErrGRPCRoleNotFound, rpctypes.ErrGRPCRoleEmpty, rpctypes.ErrGRPCAuthFailed,
		rpctypes.ErrGRPCPermissionNotGiven, rpctypes.ErrGRPCPermissionDenied, rpctypes.ErrGRPCRoleNotGranted,
		rpctypes.ErrGRPCPermissionNotGranted, rpctypes.ErrGRPCAuthNotEnabled, rpctypes.ErrGRPCInvalidAuthToken,
		rpctypes.ErrGRPCInvalidAuthMgmt, rpctypes.ErrGRPCAuthOldRevision,
	} {
		m[rpctypes.ErrorDesc(e)] = e
	}
	return m
}()

// ErrorFromMessage turns an error message written by Apply back into the
// error (etcd's gRPC error for etcd's messages).
func ErrorFromMessage(msg string) error {
	if e, ok := errorsByMessage[msg]; ok {
		return e
	}
	return errors.New(strings.TrimSpace(msg))
}
