package etcdapi

import (
	"context"
	"encoding/base64"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/services/gateway/internal/authgate"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Auth is etcd's Auth service. The store lives in the meta shard; the
// gateway hashes passwords (bcrypt, before anything reaches Raft, as etcd's
// API layer does), issues tokens, and returns from a change only once every
// gateway enforces it (authgate.Gate.Changed). Who may call what is the
// gate's interceptor's business.
type Auth struct {
	pb.UnsafeAuthServer
	router     *router.Router
	gate       *authgate.Gate
	bcryptCost int
	hdr        Header
}

var _ pb.AuthServer = (*Auth)(nil)

// NewAuth returns the Auth service; bcryptCost is etcd's --bcrypt-cost.
func NewAuth(r *router.Router, g *authgate.Gate, bcryptCost int, h Header) *Auth {
	return &Auth{router: r, gate: g, bcryptCost: bcryptCost, hdr: h}
}

// call sends one request to the meta shard and decodes etcd's response
// into resp; a change waits until every gateway sees it.
func (a *Auth) call(ctx context.Context, m proto.Message, resp proto.Message, tokenKey []byte) error {
	req, err := auth.Encode(m)
	if err != nil {
		return err
	}
	req.TokenKey = tokenKey
	read := auth.IsRead(req)
	var out *metapb.AuthResponse
	err = a.router.CallMeta(ctx, !read, func(ctx context.Context, c metapb.MetaClient) (err error) {
		out, err = c.Auth(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(out.Response, resp); err != nil {
		return err
	}
	if !read {
		return a.gate.Changed(ctx, time.Now())
	}
	return nil
}

// hash is etcd's: bcrypt at the configured cost, base64 as etcd writes
// its hashedPassword field.
func (a *Auth) hash(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), a.bcryptCost)
	if err != nil {
		return "", rpctypes.ErrGRPCAuthFailed
	}
	return base64.StdEncoding.EncodeToString(h), nil
}

func (a *Auth) AuthEnable(ctx context.Context, r *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	key, err := auth.NewTokenKey()
	if err != nil {
		return nil, err
	}
	resp := &pb.AuthEnableResponse{}
	if err := a.call(ctx, r, resp, key); err != nil {
		return nil, err
	}
	resp.Header = a.hdr.fill(resp.Header, 0)
	return resp, nil
}

func (a *Auth) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	resp := &pb.AuthDisableResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	resp := &pb.AuthStatusResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

// Authenticate checks the password against the store and issues a token.
func (a *Auth) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	v, err := a.gate.View(ctx)
	if err != nil {
		return nil, err
	}
	if err := v.CheckPassword(r.Name, r.Password); err != nil {
		return nil, err
	}
	tok, err := a.gate.Tokens().Issue(v, r.Name, time.Now())
	if err != nil {
		return nil, err
	}
	return &pb.AuthenticateResponse{Header: a.hdr.fill(nil, 0), Token: tok}, nil
}

func (a *Auth) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	r = proto.Clone(r).(*pb.AuthUserAddRequest)
	if r.Options == nil || !r.Options.NoPassword {
		h, err := a.hash(r.Password)
		if err != nil {
			return nil, err
		}
		r.HashedPassword = h
	} else {
		r.HashedPassword = ""
	}
	r.Password = ""
	resp := &pb.AuthUserAddResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	r = proto.Clone(r).(*pb.AuthUserChangePasswordRequest)
	h, err := a.hash(r.Password)
	if err != nil {
		return nil, err
	}
	r.HashedPassword, r.Password = h, ""
	resp := &pb.AuthUserChangePasswordResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	resp := &pb.AuthUserGetResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	resp := &pb.AuthUserListResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	resp := &pb.AuthUserDeleteResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	resp := &pb.AuthUserGrantRoleResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	resp := &pb.AuthUserRevokeRoleResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	resp := &pb.AuthRoleAddResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	resp := &pb.AuthRoleGetResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	resp := &pb.AuthRoleListResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	resp := &pb.AuthRoleDeleteResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	resp := &pb.AuthRoleGrantPermissionResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

func (a *Auth) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	resp := &pb.AuthRoleRevokePermissionResponse{}
	return resp, a.do(ctx, r, resp, &resp.Header)
}

// do is call for requests whose response only needs its header filled.
func (a *Auth) do(ctx context.Context, r, resp proto.Message, hdr **pb.ResponseHeader) error {
	if err := a.call(ctx, r, resp, nil); err != nil {
		return err
	}
	*hdr = a.hdr.fill(*hdr, 0)
	return nil
}
