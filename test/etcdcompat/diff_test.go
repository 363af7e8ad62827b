package etcdcompat

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tessera-kv/tessera/test/testcluster"
)

var seedFlag = flag.Int64("etcdcompat.seed", 0, "run the differential test with this seed only")

// TestDifferential runs random KV, Txn, Range, DeleteRange and Compact
// sequences against embedded etcd and against Tessera and compares every
// answer: bodies, errors, and revisions under Tessera's documented revision
// rule (revisions may skip values where etcd's do not; the order of every
// revision that a client sees is the same, so each Tessera revision maps to
// one etcd revision).
func TestDifferential(t *testing.T) {
	seeds := []int64{1, time.Now().UnixNano()}
	if *seedFlag != 0 {
		seeds = []int64{*seedFlag}
	}
	steps := 800
	if testing.Short() {
		steps = 200
	}
	for _, mode := range []string{"", "split/", "split-online/"} {
		for _, seed := range seeds {
			name := mode + fmt.Sprintf("seed=%d", seed)
			var opts testcluster.Options
			if mode == "split/" {
				// Four data shards cut through the keys the sequences
				// use, so ranges, counts, limits, sorts, historical
				// reads and compactions cross shards.
				opts.SplitKeys = diffSplitKeys
			}
			t.Run(name, func(t *testing.T) {
				t.Logf("seed %d (rerun with -etcdcompat.seed=%d)", seed, seed)
				c := testcluster.New(t, 1, opts)
				p := newPair(t, startEtcd(t), c.Client(t))
				p.split = mode != ""
				if mode == "split-online/" {
					// The same four shards, made by splits of the
					// running cluster in the course of the sequence:
					// history from before each split is read after it.
					p.splitAt = map[int]string{}
					for i, key := range diffSplitKeys {
						p.splitAt[steps*(i+1)/(len(diffSplitKeys)+1)] = key
					}
					p.cluster = c
				}
				p.run(rand.New(rand.NewSource(seed)), steps)
			})
		}
	}
}

// diffSplitKeys cut the differential's keys into four shards.
var diffSplitKeys = []string{"/d/k3", "/d/k6", "/e"}

// revMap pairs the revisions the two stores answered with. Both start at 1.
type revMap struct {
	e2t, t2e     map[int64]int64
	known        []int64 // etcd revisions that exist, ascending
	eCur, tCur   int64
	eComp, tComp int64
}

func newRevMap() *revMap {
	return &revMap{e2t: map[int64]int64{1: 1}, t2e: map[int64]int64{1: 1}, known: []int64{1}, eCur: 1, tCur: 1}
}

// pair sends each request to both stores.
type pair struct {
	t          *testing.T
	etcd, tess *clientv3.Client
	revs       *revMap
	keys       []string
	step       int
	// split: Tessera has several data shards. A write across them is
	// refused (FailedPrecondition) and changes nothing there, so it is
	// not sent to etcd.
	split bool
	// splitAt: at these steps, split Tessera's shard holding the key.
	splitAt map[int]string
	cluster *testcluster.Cluster
}

func newPair(t *testing.T, etcd, tess *clientv3.Client) *pair {
	p := &pair{t: t, etcd: etcd, tess: tess, revs: newRevMap()}
	for i := 0; i < 8; i++ {
		p.keys = append(p.keys, fmt.Sprintf("/d/k%d", i))
	}
	p.keys = append(p.keys, "/d/k1/sub", "/d/", "/e", "/d")
	return p
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// opMaker builds one request; rev translates an etcd revision into the
// store's own (identity for etcd).
type opMaker func(rev func(int64) int64) clientv3.Op

func (p *pair) run(rng *rand.Rand, steps int) {
	for p.step = 0; p.step < steps; p.step++ {
		if key, ok := p.splitAt[p.step]; ok {
			if _, err := p.cluster.SplitShard(ctx(p.t), key); err != nil {
				p.t.Fatalf("step %d: split at %s: %v", p.step, key, err)
			}
		}
		if rng.Intn(40) == 0 {
			p.compact(rng)
			continue
		}
		desc, mk := p.randomOp(rng)
		p.do(desc, mk)
		if p.t.Failed() {
			return
		}
	}
	// Every revision either side still has answers the same.
	for _, r := range p.revs.known {
		p.do(fmt.Sprintf("read all at %d", r), func(rev func(int64) int64) clientv3.Op {
			return clientv3.OpGet("\x00", clientv3.WithFromKey(), clientv3.WithRev(rev(r)))
		})
	}
}

// do sends the request to both stores and compares the answers.
func (p *pair) do(desc string, mk opMaker) {
	t := p.t
	t.Helper()
	tResp, tErr := p.tess.Do(ctx(t), mk(p.revs.toTessera))
	if p.split && status.Code(tErr) == codes.FailedPrecondition && strings.Contains(tErr.Error(), "across shards are not supported") {
		return
	}
	eResp, eErr := p.etcd.Do(ctx(t), mk(func(r int64) int64 { return r }))
	if (eErr == nil) != (tErr == nil) || (eErr != nil && eErr.Error() != tErr.Error()) {
		t.Fatalf("step %d %s: etcd error %v, tessera error %v", p.step, desc, eErr, tErr)
	}
	if eErr != nil {
		return
	}
	e, tm := opProto(eResp), opProto(tResp)
	p.revs.observe(t, desc, header(e).GetRevision(), header(tm).GetRevision())
	tm = p.revs.toEtcd(tm)
	clearIdentity(e)
	if !proto.Equal(e, tm) {
		t.Fatalf("step %d %s:\n etcd    %s\n tessera %s", p.step, desc, prototext.Format(e), prototext.Format(tm))
	}
}

func (p *pair) compact(rng *rand.Rand) {
	t := p.t
	var er int64
	switch rng.Intn(4) {
	case 0:
		er = p.revs.eCur + 3 // future on both
	case 1:
		// At the last compaction: compacted on both. (Not 0: etcd refuses
		// a second compaction at 0, Tessera does not; documented.)
		er = max(p.revs.eComp, 1)
	default:
		er = p.revs.known[rng.Intn(len(p.revs.known))]
	}
	tr := p.revs.toTessera(er)
	if er > p.revs.eCur {
		tr = p.revs.tCur + 3
	}
	eResp, eErr := p.etcd.Compact(ctx(t), er)
	tResp, tErr := p.tess.Compact(ctx(t), tr)
	desc := fmt.Sprintf("compact %d", er)
	if (eErr == nil) != (tErr == nil) || (eErr != nil && eErr.Error() != tErr.Error()) {
		t.Fatalf("step %d %s: etcd error %v, tessera error %v", p.step, desc, eErr, tErr)
	}
	if eErr != nil {
		return
	}
	p.revs.observe(t, desc, eResp.Header.Revision, tResp.Header.Revision)
	if eResp.Header.Revision != p.revs.t2e[tResp.Header.Revision] {
		t.Fatalf("step %d %s: header revision %d, tessera %d", p.step, desc, eResp.Header.Revision, tResp.Header.Revision)
	}
	p.revs.eComp, p.revs.tComp = er, tr
}

// observe records the header revisions of one answer: a change on one side
// must be a change on the other.
func (m *revMap) observe(t *testing.T, desc string, e, tr int64) {
	t.Helper()
	switch {
	case e == m.eCur && tr == m.tCur:
	case e > m.eCur && tr > m.tCur:
		m.e2t[e], m.t2e[tr] = tr, e
		m.known = append(m.known, e)
		m.eCur, m.tCur = e, tr
	default:
		t.Fatalf("%s: etcd moved %d -> %d, tessera %d -> %d", desc, m.eCur, e, m.tCur, tr)
	}
}

// toTessera translates an etcd revision a request names; one nobody has
// seen (a future one) keeps its distance above the current revision.
func (m *revMap) toTessera(e int64) int64 {
	if r, ok := m.e2t[e]; ok {
		return r
	}
	if e > m.eCur {
		return m.tCur + (e - m.eCur)
	}
	return e
}

// toEtcd translates every revision in a Tessera answer; a revision with no
// etcd counterpart is made negative so that the comparison reports it.
func (m *revMap) toEtcd(msg proto.Message) proto.Message {
	msg = proto.Clone(msg)
	walk(msg.ProtoReflect(), func(field string, v int64) int64 {
		if v == 0 {
			return 0
		}
		if e, ok := m.t2e[v]; ok {
			return e
		}
		return -v
	})
	clearIdentity(msg)
	return msg
}

// walk calls fn on every revision field of a response (header revisions,
// key-value create and mod revisions, compact revisions) and stores its
// answer.
func walk(m protoreflect.Message, fn func(field string, v int64) int64) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), fn)
			}
		case fd.Message() != nil && !fd.IsMap():
			walk(v.Message(), fn)
		case fd.Kind() == protoreflect.Int64Kind && isRevision(m, fd):
			m.Set(fd, protoreflect.ValueOfInt64(fn(string(fd.Name()), v.Int())))
		}
		return true
	})
}

func isRevision(m protoreflect.Message, fd protoreflect.FieldDescriptor) bool {
	switch m.Descriptor().FullName() {
	case "etcdserverpb.ResponseHeader":
		return fd.Name() == "revision"
	case "mvccpb.KeyValue":
		return fd.Name() == "create_revision" || fd.Name() == "mod_revision"
	}
	return false
}

// clearIdentity zeroes what names the server rather than the data.
func clearIdentity(msg proto.Message) {
	var clear func(m protoreflect.Message)
	clear = func(m protoreflect.Message) {
		if m.Descriptor().FullName() == "etcdserverpb.ResponseHeader" {
			h := m.Interface().(*pb.ResponseHeader)
			h.ClusterId, h.MemberId, h.RaftTerm = 0, 0, 0
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					clear(v.List().Get(i).Message())
				}
			case fd.Message() != nil && !fd.IsMap():
				clear(v.Message())
			}
			return true
		})
	}
	clear(msg.ProtoReflect())
}

func opProto(r clientv3.OpResponse) proto.Message {
	switch {
	case r.Get() != nil:
		return (*pb.RangeResponse)(r.Get())
	case r.Put() != nil:
		return (*pb.PutResponse)(r.Put())
	case r.Del() != nil:
		return (*pb.DeleteRangeResponse)(r.Del())
	case r.Txn() != nil:
		return (*pb.TxnResponse)(r.Txn())
	}
	return nil
}

func header(m proto.Message) *pb.ResponseHeader {
	switch r := m.(type) {
	case *pb.RangeResponse:
		return r.Header
	case *pb.PutResponse:
		return r.Header
	case *pb.DeleteRangeResponse:
		return r.Header
	case *pb.TxnResponse:
		return r.Header
	}
	return nil
}
