package watchcache

import (
	"context"
	"errors"
	"sync"
)

// errStreamClosed is returned by pushes to a closed stream.
var errStreamClosed = errors.New("watchcache: stream closed")

// queue is a stream's bounded outbox. Live deliveries use tryPush, which
// never blocks (the cache delivers under its lock); replies to the client's
// own requests and catch-up reads use push, which waits for room. pop takes
// everything queued.
type queue struct {
	mu     sync.Mutex
	items  []*Response
	limit  int
	closed bool
	ready  chan struct{} // signalled (cap 1) when items were added
	// space is closed when items are taken; made only by a push that
	// waits for room (a channel per pop cost 14 % of the CPU of 10 000
	// streams with one event each).
	space chan struct{}
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, ready: make(chan struct{}, 1)}
}

// tryPush queues all of rs, or none of them if that would pass the limit.
func (q *queue) tryPush(rs ...*Response) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || len(q.items)+len(rs) > q.limit {
		return false
	}
	q.appendLocked(rs)
	return true
}

// push queues rs, waiting while the queue is at its limit. A single
// response larger than the remaining room is still accepted once the queue
// is below its limit, so push always makes progress.
func (q *queue) push(ctx context.Context, rs ...*Response) error {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return errStreamClosed
		}
		if len(q.items) < q.limit {
			q.appendLocked(rs)
			q.mu.Unlock()
			return nil
		}
		if q.space == nil {
			q.space = make(chan struct{})
		}
		space := q.space
		q.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// force queues r past the limit: for the few server-initiated messages
// (cancellations) that must reach the client however full the queue is.
func (q *queue) force(r *Response) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.appendLocked([]*Response{r})
	}
}

func (q *queue) appendLocked(rs []*Response) {
	q.items = append(q.items, rs...)
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop waits for queued responses and takes them all.
func (q *queue) pop(ctx context.Context) ([]*Response, error) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			out := q.items
			q.items = nil
			q.wakePushersLocked()
			q.mu.Unlock()
			return out, nil
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, errStreamClosed
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (q *queue) wakePushersLocked() {
	if q.space != nil {
		close(q.space)
		q.space = nil
	}
}

func (q *queue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		q.wakePushersLocked()
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
}
