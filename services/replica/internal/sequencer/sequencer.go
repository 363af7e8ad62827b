// Package sequencer orders a data shard's writes on its leader: it takes
// revisions from the revision oracle in batches and proposes entries in
// revision order from a single goroutine, so the shard's log is appended in
// revision order. The state machine rejects an entry whose revision is not
// above the last applied one (possible only around leader changes); such an
// entry changed nothing, so it is resubmitted with a fresh revision.
//
// A proposal that timed out may still be applied later, so it is never
// retried here: the client gets etcd's timeout error, as with etcd.
package sequencer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/telemetry"
	"github.com/tessera-kv/tessera/proto/raftcmdpb"
)

// RevisionSource grants n consecutive revisions and returns the first.
type RevisionSource interface {
	Allocate(ctx context.Context, n int64) (int64, error)
}

// Errors returned by Submit.
var (
	// ErrTimeout: the entry may or may not be applied.
	ErrTimeout = errors.New("sequencer: proposal timed out")
	// ErrStopped: the sequencer or the shard is shutting down before the
	// entry was proposed; nothing was applied.
	ErrStopped = errors.New("sequencer: stopped")
	// ErrIndeterminate: the entry was proposed but its outcome is unknown
	// (the sequencer stopped, or dragonboat aborted the request); it may
	// still apply, so the client must be told as for a timeout.
	ErrIndeterminate = errors.New("sequencer: proposal outcome unknown")
	// ErrBusy: dragonboat refused the proposal because the shard is
	// overloaded; nothing was applied.
	ErrBusy = errors.New("sequencer: shard busy")
	// ErrUnavailable: the shard could not take the entry (no leader, busy);
	// nothing was applied.
	ErrUnavailable = errors.New("sequencer: shard unavailable")
	// ErrDraining: the store is handing the shard to another replica and
	// takes no new proposals; nothing was proposed (retry on the leader).
	ErrDraining = fmt.Errorf("%w: handing off", ErrUnavailable)
)

const (
	maxBatch    = 512
	maxAttempts = 5
)

// Sequencer serializes one data shard's proposals on this replica.
type Sequencer struct {
	nh      *dragonboat.NodeHost
	shardID uint64
	revs    RevisionSource
	timeout time.Duration
	log     *slog.Logger

	reqc  chan *request
	stopc chan struct{}
	wg    sync.WaitGroup

	// Submissions in flight, and whether new ones are refused (Drain).
	inflight atomic.Int64
	draining atomic.Bool

	// Made once: every write records a span and metrics with them.
	tracer trace.Tracer
	attrs  attribute.Set // the shard
}

type request struct {
	ctx      context.Context
	cmd      *raftcmdpb.DataCommand
	attempts int
	done     chan reply
	// fixed: cmd carries its own revision (SubmitAt); it is proposed
	// before the batch's fresh ones and answered, not retried, if stale.
	fixed bool
}

type reply struct {
	res *raftcmdpb.DataResult
	err error
}

// New starts a sequencer for shardID. timeout bounds each proposal.
// The proposal metrics, one set per process: etcd's failed-proposal
// counter, and how long a proposal takes to apply on the leader.
var proposals = func() (m struct {
	failed   metric.Int64Counter
	duration metric.Float64Histogram
}) {
	meter := telemetry.Meter("tessera/replica")
	m.failed, _ = meter.Int64Counter("etcd_server_proposals_failed_total", metric.WithDescription("proposals that failed (etcd's; per shard)"))
	m.duration, _ = meter.Float64Histogram("tessera.replica.propose.duration", metric.WithUnit("s"),
		metric.WithDescription("from a data shard proposal to its apply on the leader"))
	return m
}()

func New(nh *dragonboat.NodeHost, shardID uint64, revs RevisionSource, timeout time.Duration, log *slog.Logger) *Sequencer {
	s := &Sequencer{nh: nh, shardID: shardID, revs: revs, timeout: timeout, log: log,
		reqc: make(chan *request, maxBatch), stopc: make(chan struct{}),
		tracer: telemetry.Tracer("tessera/replica"), attrs: attribute.NewSet(attribute.Int64("shard", int64(shardID)))}
	// Exported at 0 from the start, as etcd's, so alerts see the series.
	proposals.failed.Add(context.Background(), 0, metric.WithAttributeSet(s.attrs))
	s.wg.Add(1)
	go s.run()
	return s
}

// Stop ends the loop; pending submissions get ErrStopped.
func (s *Sequencer) Stop() {
	close(s.stopc)
	s.wg.Wait()
}

// Submit proposes cmd (its Op set, its Revision filled here) and returns the
// state machine's result.
// Drain refuses new submissions (ErrDraining) and waits until those in
// flight have their answer or ctx ends: a store about to hand off its
// leadership then leaves no proposal with an unknown outcome behind.
func (s *Sequencer) Drain(ctx context.Context) error {
	s.draining.Store(true)
	for s.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func (s *Sequencer) Submit(ctx context.Context, cmd *raftcmdpb.DataCommand) (res *raftcmdpb.DataResult, err error) {
	return s.submit(ctx, cmd, false)
}

// Busy reports whether submissions are in flight: their entries will
// advance the shard's last entry without a tick.
func (s *Sequencer) Busy() bool { return s.inflight.Load() > 0 }

// SubmitAt proposes cmd at the revision it carries instead of a fresh one,
// for entries that change no key (a tick closing a revision already served
// to another shard): they need not consume a revision of their own, which
// keeps revisions free of gaps. An entry at or below the shard's last one
// is answered with its stale result, not retried; one that takes the
// revision first makes the shard's proposals in flight below it stale, and
// those are retried with fresh revisions as always.
func (s *Sequencer) SubmitAt(ctx context.Context, cmd *raftcmdpb.DataCommand) (*raftcmdpb.DataResult, error) {
	return s.submit(ctx, cmd, true)
}

func (s *Sequencer) submit(ctx context.Context, cmd *raftcmdpb.DataCommand, fixed bool) (res *raftcmdpb.DataResult, err error) {
	// Counted before the check, so a Drain that sees no submission in
	// flight sees every later one refused.
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	if s.draining.Load() {
		return nil, ErrDraining
	}
	// One span from the proposal to the leader's apply (the revision is
	// known once the entry is in the log's order).
	ctx, span := s.tracer.Start(ctx, "raft.propose", trace.WithAttributes(attribute.Int64("tessera.shard", int64(s.shardID))))
	began := time.Now()
	defer func() {
		shard := metric.WithAttributeSet(s.attrs)
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
			proposals.failed.Add(ctx, 1, shard)
		} else {
			span.SetAttributes(attribute.Int64("tessera.revision", res.Revision), attribute.String("tessera.result", res.Code.String()))
			proposals.duration.Record(ctx, time.Since(began).Seconds(), shard)
		}
		span.End()
	}()
	r := &request{ctx: ctx, cmd: cmd, done: make(chan reply, 1), fixed: fixed}
	select {
	case s.reqc <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.stopc:
		return nil, ErrStopped
	}
	select {
	case rep := <-r.done:
		return rep.res, rep.err
	case <-ctx.Done():
		// The entry may still apply; the caller reports the context error.
		return nil, ctx.Err()
	}
}

func (s *Sequencer) run() {
	defer s.wg.Done()
	session := s.nh.GetNoOPSession(s.shardID)
	batch := make([]*request, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case r := <-s.reqc:
			batch = append(batch, r)
		case <-s.stopc:
			return
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-s.reqc:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		// Entries at their own revisions go first: every fresh revision
		// is above them (they were served before this batch).
		var fixed, fresh []*request
		for _, r := range batch {
			switch {
			case r.ctx.Err() != nil:
				r.done <- reply{err: r.ctx.Err()}
			case r.fixed:
				fixed = append(fixed, r)
			default:
				fresh = append(fresh, r)
			}
		}
		if len(fresh) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
			first, err := s.revs.Allocate(ctx, int64(len(fresh)))
			cancel()
			if err != nil {
				for _, r := range fresh {
					r.done <- reply{err: fmt.Errorf("%w: revisions: %v", ErrUnavailable, err)}
				}
				fresh = nil
			}
			for i, r := range fresh {
				r.cmd.Revision = first + int64(i)
			}
		}
		for _, r := range append(fixed, fresh...) {
			b, err := proto.Marshal(r.cmd)
			if err != nil {
				r.done <- reply{err: err}
				continue
			}
			rs, err := s.nh.Propose(session, b, s.timeout)
			if err != nil {
				switch {
				case errors.Is(err, dragonboat.ErrSystemBusy):
					err = fmt.Errorf("%w: %v", ErrBusy, err)
				case dragonboat.IsTempError(err):
					err = fmt.Errorf("%w: %v", ErrUnavailable, err)
				}
				r.done <- reply{err: err}
				continue
			}
			s.wg.Add(1)
			go s.await(r, rs)
		}
	}
}

func (s *Sequencer) await(r *request, rs *dragonboat.RequestState) {
	defer s.wg.Done()
	var res dragonboat.RequestResult
	select {
	case res = <-rs.ResultC():
	case <-s.stopc:
		r.done <- reply{err: ErrIndeterminate}
		return
	}
	rs.Release()
	switch {
	case res.Completed():
		out := &raftcmdpb.DataResult{}
		if err := proto.Unmarshal(res.GetResult().Data, out); err != nil {
			r.done <- reply{err: fmt.Errorf("sequencer: decode result: %w", err)}
			return
		}
		if out.Code == raftcmdpb.DataResult_CODE_STALE_REVISION && !r.fixed {
			s.retry(r, "stale revision")
			return
		}
		r.done <- reply{res: out}
	case res.Dropped():
		// Never appended to the log: safe to try again.
		s.retry(r, "dropped")
	case res.Timeout():
		r.done <- reply{err: ErrTimeout}
	default:
		// Aborted or terminated after the proposal: it may still apply.
		r.done <- reply{err: ErrIndeterminate}
	}
}

func (s *Sequencer) retry(r *request, why string) {
	r.attempts++
	if r.attempts >= maxAttempts {
		r.done <- reply{err: fmt.Errorf("%w: %s after %d attempts", ErrUnavailable, why, r.attempts)}
		return
	}
	if why == "dropped" {
		// Give an election a moment before trying again.
		select {
		case <-time.After(50 * time.Millisecond):
		case <-s.stopc:
			r.done <- reply{err: ErrStopped}
			return
		}
	}
	select {
	case s.reqc <- r:
	case <-s.stopc:
		r.done <- reply{err: ErrStopped}
	case <-r.ctx.Done():
		r.done <- reply{err: r.ctx.Err()}
	}
}
