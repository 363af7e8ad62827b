package testcluster

import (
	"context"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Fill writes n keys prefix%07d (value "v", with opts) in txns of 128 puts
// from workers goroutines: how the large-request tests build big key sets.
func Fill(ctx context.Context, cli *clientv3.Client, prefix string, n, workers int, opts ...clientv3.OpOption) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan int)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				ops := make([]clientv3.Op, 0, 128)
				for i := b; i < min(b+128, n); i++ {
					ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%07d", prefix, i), "v", opts...))
				}
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					once.Do(func() { first = fmt.Errorf("fill %s: %w", prefix, err); cancel() })
					return
				}
			}
		}()
	}
feed:
	for b := 0; b < n; b += 128 {
		select {
		case batches <- b:
		case <-ctx.Done():
			break feed
		}
	}
	close(batches)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}
