package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// wlDeleteMany deletes -delete-keys keys (a million by default) with one
// DeleteRange, as `etcdctl del --prefix` does: ops/s is keys deleted per
// second, p50 and p99 the time of the one delete.
const wlDeleteMany = "delete-1m"

const deletePrefix = "bench/del/"

// runDeleteWorkload fills the keys (txns of 128 puts from -clients
// goroutines, not measured), then measures the delete.
func runDeleteWorkload(ctx context.Context, t *running, p params) (*result, error) {
	clis, err := newClients(t.endpoints, p.conns)
	if err != nil {
		return nil, err
	}
	defer closeClients(clis)
	val := string(make([]byte, p.valueSize))
	fill := time.Now()
	batches := make(chan int)
	errc := make(chan error, p.clients)
	var wg sync.WaitGroup
	for w := 0; w < p.clients; w++ {
		wg.Add(1)
		go func(cli *clientv3.Client) {
			defer wg.Done()
			for b := range batches {
				ops := make([]clientv3.Op, 0, 128)
				for i := b; i < min(b+128, p.deleteKeys); i++ {
					ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%08d", deletePrefix, i), val))
				}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				_, err := cli.Txn(octx).Then(ops...).Commit()
				cancel()
				if err != nil {
					errc <- err
					return
				}
			}
		}(clis[w%len(clis)])
	}
feed:
	for b := 0; b < p.deleteKeys; b += 128 {
		select {
		case batches <- b:
		case err := <-errc:
			close(batches)
			wg.Wait()
			return nil, fmt.Errorf("fill: %w", err)
		}
		if ctx.Err() != nil {
			break feed
		}
	}
	close(batches)
	wg.Wait()
	select {
	case err := <-errc:
		return nil, fmt.Errorf("fill: %w", err)
	default:
	}
	filled := time.Since(fill)

	res := &result{workload: wlDeleteMany, target: t.name}
	if p.profileDir != "" {
		f, err := os.Create(filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.pprof", t.name, wlDeleteMany)))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0, t0 := processCPU(), time.Now()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	resp, err := clis[0].Delete(dctx, deletePrefix, clientv3.WithPrefix())
	cancel()
	answered := time.Since(t0)
	timedOut := errors.Is(err, rpctypes.ErrTimeout)
	if err != nil && !timedOut {
		return nil, fmt.Errorf("delete: %w", err)
	}
	deleted := int64(p.deleteKeys)
	if timedOut {
		// The server gave up waiting (etcd's request timeout); the entry is
		// committed and still applies: time it until the keys are gone.
		res.errs = 1
		for {
			g, err := clis[0].Get(ctx, deletePrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err == nil && g.Count == 0 {
				break
			}
			if ctx.Err() != nil || time.Since(t0) > 10*time.Minute {
				return nil, fmt.Errorf("delete timed out and did not apply: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		deleted = resp.Deleted
	}
	res.elapsed, res.cpu = time.Since(t0), processCPU()-cpu0
	res.ops = int(deleted)
	res.lat = []time.Duration{res.elapsed}
	if deleted != int64(p.deleteKeys) {
		res.errs = 1
	}
	res.note = fmt.Sprintf("deleted %d keys in %s (fill %s)", deleted, res.elapsed.Round(time.Millisecond), filled.Round(time.Second))
	if timedOut {
		res.note += fmt.Sprintf("; the client got 'request timed out' after %s", answered.Round(time.Millisecond))
	}
	return res, nil
}
