package authgate

import (
	"context"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// LeaseKeys lists the keys attached to a lease, and Leases the live leases:
// etcd lets a user that is not root attach keys to, renew or revoke a
// lease only if it may write every key of it, and ask about leases only if
// it may read their keys.
type LeaseKeys interface {
	LeaseKeys(ctx context.Context, id int64) ([][]byte, error)
	LeaseIDs(ctx context.Context) ([]int64, error)
}

// SetLeaseKeys installs the lease lookups (the gateway's Lease service,
// which is built after the gate).
func (g *Gate) SetLeaseKeys(l LeaseKeys) { g.leases = l }

// Unary checks each unary call before it runs, with etcd's rules.
func (g *Gate) Unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(ctx, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream checks streaming calls: Snapshot is root's, and each keep-alive
// request of a stream is checked as it arrives. Watch checks its create
// requests itself (CheckWatch): a refused watch is a response, not an end.
func (g *Gate) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	switch info.FullMethod {
	case "/etcdserverpb.Maintenance/Snapshot":
		v, id, err := g.Who(ss.Context())
		if err != nil {
			return err
		}
		if err := v.CheckAdmin(id); err != nil {
			return err
		}
	case "/etcdserverpb.Lease/LeaseKeepAlive":
		ss = &checkedStream{ServerStream: ss, g: g}
	}
	return handler(srv, ss)
}

type checkedStream struct {
	grpc.ServerStream
	g *Gate
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.g.check(s.Context(), m)
}

// CheckWatch allows a watch of [key, end) (etcd's range encoding).
func (g *Gate) CheckWatch(ctx context.Context, key, end []byte) error {
	v, id, err := g.Who(ctx)
	if err != nil {
		return err
	}
	return v.Check(id, authpb.READ, keyspan.FromRequest(key, end))
}

// check applies etcd's rule for one request. Authenticate is open to
// anyone and reads no token; AuthStatus is open too, but an invalid token
// is refused first, as in etcd.
func (g *Gate) check(ctx context.Context, req any) error {
	if _, ok := req.(*pb.AuthenticateRequest); ok {
		return nil
	}
	v, id, err := g.Who(ctx)
	if err != nil {
		return err
	}
	if !v.Enabled() {
		return nil
	}
	switch r := req.(type) {
	case *pb.AuthStatusRequest:
		return nil
	case *pb.RangeRequest:
		return v.Check(id, authpb.READ, keyspan.FromRequest(r.Key, r.RangeEnd))
	case *pb.PutRequest:
		return g.checkPut(ctx, v, id, r)
	case *pb.DeleteRangeRequest:
		return checkDelete(v, id, r)
	case *pb.TxnRequest:
		return g.checkTxn(ctx, v, id, r)
	case *pb.LeaseRevokeRequest:
		return g.checkLeaseWrite(ctx, v, id, r.ID)
	case *pb.LeaseKeepAliveRequest:
		if err := v.CheckAuthenticated(id); err != nil {
			return err
		}
		return g.checkLeaseWrite(ctx, v, id, r.ID)
	case *pb.LeaseTimeToLiveRequest:
		if !r.Keys {
			return v.CheckAuthenticated(id) // the keys are what needs READ
		}
		return g.checkLeaseRead(ctx, v, id, r.ID)
	case *pb.LeaseLeasesRequest:
		if err := v.CheckAuthenticated(id); err != nil || v.IsAdmin(id) {
			return err
		}
		ids, err := g.leases.LeaseIDs(ctx)
		if err != nil {
			return err
		}
		for _, l := range ids {
			if err := g.checkLeaseRead(ctx, v, id, l); err != nil {
				return err
			}
		}
		return nil
	case *pb.AlarmRequest:
		if r.Action == pb.AlarmRequest_GET {
			return v.CheckAuthenticated(id)
		}
		return v.CheckAdmin(id)
	case *pb.StatusRequest, *pb.MemberListRequest, *pb.LeaseGrantRequest:
		return v.CheckAuthenticated(id)
	case *pb.AuthUserGetRequest:
		if v.CheckAdmin(id) != nil && r.Name == id.User && id.User != "" {
			return nil // a user may read its own roles
		}
		return v.CheckAdmin(id)
	case *pb.AuthRoleGetRequest:
		if v.CheckAdmin(id) != nil && v.HasRole(id.User, r.Role) {
			return nil // and the roles it has
		}
		return v.CheckAdmin(id)
	}
	// Everything else changes the cluster or reads all of it: compaction,
	// defragment, hashes, snapshots, leader moves, downgrades, membership
	// and the auth store.
	return v.CheckAdmin(id)
}

func (g *Gate) checkPut(ctx context.Context, v *auth.View, id auth.Identity, r *pb.PutRequest) error {
	if err := v.Check(id, authpb.WRITE, keyspan.Span{Key: r.Key}); err != nil {
		return err
	}
	if r.Lease != 0 {
		// The user must be able to revoke the lease it attaches the key to.
		if err := g.checkLeaseWrite(ctx, v, id, r.Lease); err != nil {
			return err
		}
	}
	if r.PrevKv {
		return v.Check(id, authpb.READ, keyspan.Span{Key: r.Key})
	}
	return nil
}

func checkDelete(v *auth.View, id auth.Identity, r *pb.DeleteRangeRequest) error {
	s := keyspan.FromRequest(r.Key, r.RangeEnd)
	if err := v.Check(id, authpb.WRITE, s); err != nil {
		return err
	}
	if r.PrevKv {
		return v.Check(id, authpb.READ, s)
	}
	return nil
}

// checkTxn checks the compares (reads), then both branches: whichever
// runs, the user must be allowed it.
func (g *Gate) checkTxn(ctx context.Context, v *auth.View, id auth.Identity, r *pb.TxnRequest) error {
	for _, c := range r.Compare {
		if err := v.Check(id, authpb.READ, keyspan.FromRequest(c.Key, c.RangeEnd)); err != nil {
			return err
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var err error
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if o.RequestRange != nil {
					err = v.Check(id, authpb.READ, keyspan.FromRequest(o.RequestRange.Key, o.RequestRange.RangeEnd))
				}
			case *pb.RequestOp_RequestPut:
				if o.RequestPut != nil {
					err = g.checkPut(ctx, v, id, o.RequestPut)
				}
			case *pb.RequestOp_RequestDeleteRange:
				if o.RequestDeleteRange != nil {
					err = checkDelete(v, id, o.RequestDeleteRange)
				}
			case *pb.RequestOp_RequestTxn:
				if o.RequestTxn != nil {
					err = g.checkTxn(ctx, v, id, o.RequestTxn)
				}
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// checkLeaseWrite allows root, and anyone who may write every key of the
// lease (a lease without keys, or unknown, asks nothing, as in etcd).
func (g *Gate) checkLeaseWrite(ctx context.Context, v *auth.View, id auth.Identity, lease int64) error {
	return g.checkLeaseKeys(ctx, v, id, lease, authpb.WRITE)
}

// checkLeaseRead is for questions about a lease: a user is needed, and
// root or read access to every key of it.
func (g *Gate) checkLeaseRead(ctx context.Context, v *auth.View, id auth.Identity, lease int64) error {
	if err := v.CheckAuthenticated(id); err != nil {
		return err
	}
	return g.checkLeaseKeys(ctx, v, id, lease, authpb.READ)
}

func (g *Gate) checkLeaseKeys(ctx context.Context, v *auth.View, id auth.Identity, lease int64, typ authpb.Permission_Type) error {
	if v.IsAdmin(id) {
		return nil
	}
	if g.leases == nil {
		return rpctypes.ErrGRPCPermissionDenied
	}
	keys, err := g.leases.LeaseKeys(ctx, lease)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := v.Check(id, typ, keyspan.Span{Key: k}); err != nil {
			return err
		}
	}
	return nil
}
