package replica

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
	"github.com/tessera-kv/tessera/services/replica/internal/metasm"
)

// Auth serves etcd's Auth calls (the gateway has checked the caller and
// hashed passwords): reads after a ReadIndex of the meta shard, changes
// through its log. Any replica serves reads; changes need the meta leader's
// node, which dragonboat finds.
func (m *metaService) Auth(ctx context.Context, req *metapb.AuthRequest) (*metapb.AuthResponse, error) {
	if auth.IsRead(req) {
		st, err := m.r.authState(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := auth.Read(st, req)
		if err != nil {
			return nil, err
		}
		b, err := proto.Marshal(resp)
		if err != nil {
			return nil, err
		}
		return &metapb.AuthResponse{Response: b}, nil
	}
	if _, err := auth.Decode(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	res, err := m.r.proposeMeta(ctx, &raftcmdpb.MetaCommand{Op: &raftcmdpb.MetaCommand_Auth{Auth: req}})
	if err != nil {
		return nil, toStatus(err)
	}
	var ar raftcmdpb.AuthResult
	if err := proto.Unmarshal(res.Data, &ar); err != nil {
		return nil, status.Errorf(codes.Internal, "tessera: auth result: %v", err)
	}
	if ar.Error != "" {
		return nil, auth.ErrorFromMessage(ar.Error)
	}
	return &metapb.AuthResponse{Response: ar.Response}, nil
}

// GetAuthState returns the auth store after a ReadIndex, or only its
// generation if the caller has it.
func (m *metaService) GetAuthState(ctx context.Context, req *metapb.GetAuthStateRequest) (*metapb.GetAuthStateResponse, error) {
	st, err := m.r.authState(ctx)
	if err != nil {
		return nil, err
	}
	resp := &metapb.GetAuthStateResponse{Generation: st.Generation}
	if req.KnownGeneration != st.Generation || st.Generation == 0 {
		resp.State = st
	}
	return resp, nil
}

// authState reads the auth store after a ReadIndex of the meta shard.
func (r *Replica) authState(ctx context.Context) (*metapb.AuthState, error) {
	rctx, cancel := r.withTimeout(ctx)
	defer cancel()
	v, err := r.nh.SyncRead(rctx, MetaShardID, metasm.AuthQuery{})
	if err != nil {
		return nil, toStatus(err)
	}
	return v.(*metapb.AuthState), nil
}
