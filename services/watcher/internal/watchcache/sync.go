package watchcache

import (
	"errors"
	"fmt"
	"sort"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tessera-kv/tessera/pkg/keyspan"
)

// syncUnsynced moves unsynced watches forward: from the history when it
// still covers them, from the replicas when they start before it.
func (c *Cache) syncUnsynced() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.mu.unsynced {
		c.catchUpLocked(w)
	}
	c.progressLocked()
}

// catchUpLocked sends an unsynced watch one bounded batch from the history.
func (c *Cache) catchUpLocked(w *watch) {
	rel := c.mu.released
	switch {
	case w.next < c.mu.compacted:
		c.cancelWatchLocked(w, c.mu.compacted, "")
		return
	case w.next > rel:
		c.syncLocked(w)
		return
	case w.next < c.mu.covered:
		if w.lagged {
			c.cancelWatchLocked(w, 0, fmt.Sprintf("tessera: watch fell behind: revision %d is no longer in the watcher's history (it starts at %d); re-watch from revision %d",
				w.next, c.mu.covered, w.next))
			return
		}
		delete(c.mu.unsynced, w)
		w.state = stateFetching
		go c.fetch(w, w.next, rel)
		return
	}
	hist := c.mu.hist
	i := sort.Search(len(hist), func(i int) bool { return hist[i].Rev >= w.next })
	var (
		evs  []*mvccpb.Event
		size int
		upto = rel
	)
	span := keyspan.Span{Key: w.key, End: w.end}
	for ; i < len(hist); i++ {
		e := hist[i]
		if size >= c.cfg.MaxResponseBytes && len(evs) > 0 {
			upto = e.Rev - 1 // a bounded batch; the rest next round
			break
		}
		for _, ev := range e.Events {
			if span.Contains(ev.Kv.Key) {
				evs = append(evs, ev)
				size += e.size / len(e.Events)
			}
		}
	}
	if w.prevKV {
		evs = etcdPrevKVs(evs, c.mu.compacted)
	} else {
		evs = withoutPrevKV(evs)
	}
	evs = w.filter(evs)
	if len(evs) > 0 {
		if !w.stream.q.tryPush(c.responses(w, evs, rel)...) {
			return // still behind; retried next round
		}
		w.sentEvents()
	}
	w.next = upto + 1
	if w.next > rel {
		c.syncLocked(w)
		return
	}
	select {
	case c.poke <- struct{}{}:
	default:
	}
}

// fetch catches a watch up over [from, to] from the replicas' change logs;
// then the watch goes back to catching up from the history.
func (c *Cache) fetch(w *watch, from, to int64) {
	next := from
	err := c.src.History(w.ctx, w.key, w.end, from, to, func(rev int64, evs []*mvccpb.Event) error {
		if w.prevKV {
			evs = etcdPrevKVs(evs, c.compactedRev())
		} else {
			evs = withoutPrevKV(evs)
		}
		evs = w.filter(evs)
		if len(evs) > 0 {
			if err := w.stream.q.push(w.ctx, c.responses(w, evs, to)...); err != nil {
				return err
			}
		}
		next = rev + 1
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.state != stateFetching || w.ctx.Err() != nil {
		return // cancelled meanwhile
	}
	var ce *CompactedError
	switch {
	case err == nil:
		w.sentEvents()
		c.unsyncLocked(w, to+1)
	case errors.As(err, &ce):
		c.cancelWatchLocked(w, ce.Revision, "")
	default:
		c.log.Warn("watch catch-up from the replicas failed; retrying", "watch", w.String(), "err", err)
		c.unsyncLocked(w, next)
	}
}
