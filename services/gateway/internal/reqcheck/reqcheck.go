// Package reqcheck validates etcd requests in the gateway, before anything is
// routed or applied, with etcd's rules and its error values: bad input gets
// etcd's error and changes nothing.
package reqcheck

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// Limits are the bounds requests are checked against.
type Limits struct {
	// MaxTxnOps bounds the ops of one txn level (etcd's --max-txn-ops).
	MaxTxnOps int
	// MaxKeyBytes bounds the key of a put (Tessera's --max-key-bytes: etcd
	// has no such bound, the store has one).
	MaxKeyBytes int
}

// ErrKeyTooLarge is the answer to a put whose key is over the limit.
func ErrKeyTooLarge(max int) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf("etcdserver: key is too large (max %d bytes)", max))
}

// Range checks a RangeRequest.
func Range(r *pb.RangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

// Put checks a PutRequest.
func Put(r *pb.PutRequest, l Limits) error {
	switch {
	case len(r.Key) == 0:
		return rpctypes.ErrGRPCEmptyKey
	case l.MaxKeyBytes > 0 && len(r.Key) > l.MaxKeyBytes:
		return ErrKeyTooLarge(l.MaxKeyBytes)
	case r.IgnoreValue && len(r.Value) != 0:
		return rpctypes.ErrGRPCValueProvided
	case r.IgnoreLease && r.Lease != 0:
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

// DeleteRange checks a DeleteRangeRequest.
func DeleteRange(r *pb.DeleteRangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// Txn checks a TxnRequest: op count (the largest of compares, success and
// failure, per level, against maxOps), every op, then that no branch writes
// a key twice or puts a key it also deletes.
func Txn(r *pb.TxnRequest, l Limits) error {
	if err := txnOps(r, l.MaxTxnOps, l); err != nil {
		return err
	}
	if _, _, err := intervals(r.Success); err != nil {
		return err
	}
	_, _, err := intervals(r.Failure)
	return err
}

func txnOps(r *pb.TxnRequest, maxOps int, l Limits) error {
	opc := max(len(r.Compare), len(r.Success), len(r.Failure))
	if opc > maxOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			if err := op(u, maxOps-opc, l); err != nil {
				return err
			}
		}
	}
	return nil
}

func op(u *pb.RequestOp, maxOps int, l Limits) error {
	switch v := u.Request.(type) {
	case *pb.RequestOp_RequestRange:
		return Range(v.RequestRange)
	case *pb.RequestOp_RequestPut:
		return Put(v.RequestPut, l)
	case *pb.RequestOp_RequestDeleteRange:
		return DeleteRange(v.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		return txnOps(v.RequestTxn, maxOps, l)
	}
	// etcd answers an empty op this way.
	return rpctypes.ErrGRPCKeyNotFound
}

// intervals collects a branch's puts and deletes, recursing into nested
// txns, with etcd's rules: a key may be put in both branches of a nested txn
// (only one runs), but not twice on one path nor inside a range deleted on
// that path (a nested txn's puts are checked against the deletes of this
// level and of the nested txns before it; this level's puts against all).
//
// A delete's range_end is read literally, as etcd's check reads it: "\x00"
// (every key from key on, when the delete runs) makes an empty span, so
// etcd misses puts inside a from-key delete, and so does this check: a txn
// etcd accepts is accepted (compared with a real etcd in test/etcdcompat).
func intervals(reqs []*pb.RequestOp) (map[string]struct{}, *keyspan.Index[struct{}], error) {
	dels := &keyspan.Index[struct{}]{}
	for _, r := range reqs {
		if d := r.GetRequestDeleteRange(); d != nil {
			s := keyspan.Span{Key: d.Key}
			if len(d.RangeEnd) > 0 {
				s.End = d.RangeEnd
			}
			dels.Insert(s, struct{}{})
		}
	}
	puts := map[string]struct{}{}
	for _, r := range reqs {
		t := r.GetRequestTxn()
		if t == nil {
			continue
		}
		putsThen, delsThen, err := intervals(t.Success)
		if err != nil {
			return nil, nil, err
		}
		putsElse, delsElse, err := intervals(t.Failure)
		if err != nil {
			return nil, nil, err
		}
		for k := range putsThen {
			if _, dup := puts[k]; dup || dels.Any([]byte(k)) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range putsElse {
			if _, dup := puts[k]; dup {
				if _, fromThen := putsThen[k]; !fromThen {
					return nil, nil, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if dels.Any([]byte(k)) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		delsThen.Each(func(s keyspan.Span, _ struct{}) { dels.Insert(s, struct{}{}) })
		delsElse.Each(func(s keyspan.Span, _ struct{}) { dels.Insert(s, struct{}{}) })
	}
	for _, r := range reqs {
		p := r.GetRequestPut()
		if p == nil {
			continue
		}
		k := string(p.Key)
		if _, dup := puts[k]; dup || dels.Any(p.Key) {
			return nil, nil, rpctypes.ErrGRPCDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}

// ReadOnly reports whether a txn only reads (in every branch, at this level:
// nested txns count as writes, as in etcd).
func ReadOnly(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			if u.GetRequestRange() == nil {
				return false
			}
		}
	}
	return true
}

// Leases lists the non-zero lease IDs that puts anywhere in the txn attach.
func Leases(r *pb.TxnRequest) []int64 {
	var out []int64
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			switch {
			case u.GetRequestPut() != nil && u.GetRequestPut().Lease != 0:
				out = append(out, u.GetRequestPut().Lease)
			case u.GetRequestTxn() != nil:
				out = append(out, Leases(u.GetRequestTxn())...)
			}
		}
	}
	return out
}

// HasPuts reports whether a put appears anywhere in the txn.
func HasPuts(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			if u.GetRequestPut() != nil || (u.GetRequestTxn() != nil && HasPuts(u.GetRequestTxn())) {
				return true
			}
		}
	}
	return false
}

// Keys calls fn with every key range the txn touches (compares and ops, in
// nested txns too); end is nil for a single key.
func Keys(r *pb.TxnRequest, fn func(key, end []byte)) {
	for _, c := range r.Compare {
		fn(c.Key, c.RangeEnd)
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, u := range ops {
			switch v := u.Request.(type) {
			case *pb.RequestOp_RequestRange:
				fn(v.RequestRange.Key, v.RequestRange.RangeEnd)
			case *pb.RequestOp_RequestPut:
				fn(v.RequestPut.Key, nil)
			case *pb.RequestOp_RequestDeleteRange:
				fn(v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd)
			case *pb.RequestOp_RequestTxn:
				Keys(v.RequestTxn, fn)
			}
		}
	}
}
