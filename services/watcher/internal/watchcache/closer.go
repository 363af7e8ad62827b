package watchcache

import (
	"context"
	"time"
)

// Releasing across idle shards. The cache releases a revision only once
// every shard has closed it, and a shard with no writes closes nothing by
// itself. So while the cache holds something back that a watch waits for
// (another shard's events, a progress request, a watch created "from now"),
// it asks each shard that lags to close the revision it needs; an idle
// shard answers with a tick entry. It asks at most once per CloseInterval
// per shard, one request at a time, and only while some stream has a
// watch: an idle cluster, or one nobody watches, writes no ticks.

// closeLoop asks lagging shards to close what the cache waits for.
func (c *Cache) closeLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.CloseInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for {
		select {
		case <-c.stopc:
			return
		case <-t.C:
		}
		c.mu.Lock()
		target, lagging := c.closeTargetLocked()
		for _, id := range lagging {
			c.mu.shards[id].closing = true
		}
		c.mu.Unlock()
		for _, id := range lagging {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				if err := c.src.CloseRevision(ctx, id, target); err != nil && ctx.Err() == nil {
					c.log.Debug("closing a revision failed", "shard", id, "revision", target, "err", err)
				}
				c.mu.Lock()
				if sf := c.mu.shards[id]; sf != nil {
					sf.closing = false
				}
				c.mu.Unlock()
			}()
		}
	}
}

// closeTargetLocked returns the revision the cache waits for and the shards
// to ask for it (none when nothing waits).
func (c *Cache) closeTargetLocked() (int64, []uint64) {
	if len(c.mu.shards) < 2 {
		return 0, nil
	}
	target := c.mu.wanted
	for _, sf := range c.mu.shards {
		if sf.closed < 0 {
			return 0, nil // a feed not subscribed yet: it will report where it is
		}
		target = max(target, sf.closed)
	}
	if target <= c.mu.released || !c.watchedLocked() {
		return 0, nil
	}
	var lagging []uint64
	for id, sf := range c.mu.shards {
		if sf.closed < target && !sf.closing {
			lagging = append(lagging, id)
		}
	}
	return target, lagging
}

// watchedLocked reports whether any stream has a watch.
func (c *Cache) watchedLocked() bool {
	for s := range c.mu.streams {
		if len(s.watches) > 0 {
			return true
		}
	}
	return false
}
