package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Watch fan-out workloads: N watches on one prefix, each on a gRPC stream
// of its own (as N kubelets or controllers would have), and one writer
// putting to that prefix at a fixed rate. ops/s is events delivered per
// second over all watches; p50/p99 is put-to-event latency.
const (
	wlWatch1k  = "watch-1k"
	wlWatch10k = "watch-10k"

	watchPrefix = "bench/watch/"
)

var watchWorkloads = map[string]int{wlWatch1k: 1000, wlWatch10k: 10000}

// runWatchWorkload opens the watches, writes at p.watchRate for warmup and
// the measured window, and counts what the watches receive.
func runWatchWorkload(ctx context.Context, name string, t *running, p params) (*result, error) {
	n := watchWorkloads[name]
	clis, err := newClients(t.endpoints, p.conns)
	if err != nil {
		return nil, err
	}
	defer closeClients(clis)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		measuring atomic.Bool
		delivered atomic.Int64
		failed    atomic.Int64
		lats      = make([][]time.Duration, n)
		wg        sync.WaitGroup
		opened    sync.WaitGroup
	)
	// Open the watches 64 at a time; clientv3.Watch returns once the
	// server confirmed the watch.
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		opened.Add(1)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			// Distinct metadata gives each watch its own stream.
			sctx := metadata.AppendToOutgoingContext(wctx, "bench-watch", strconv.Itoa(i))
			wch := clis[i%len(clis)].Watch(sctx, watchPrefix, clientv3.WithPrefix())
			<-sem
			opened.Done()
			for wr := range wch {
				if wr.Err() != nil {
					failed.Add(1)
					return
				}
				now := time.Now()
				if !measuring.Load() {
					continue
				}
				for _, ev := range wr.Events {
					sent, err := strconv.ParseInt(string(ev.Kv.Value[:19]), 10, 64)
					if err != nil {
						continue
					}
					lats[i] = append(lats[i], now.Sub(time.Unix(0, sent)))
					delivered.Add(1)
				}
			}
		}()
	}
	opened.Wait()

	// The writer: one put per tick; the value starts with the send time.
	pad := make([]byte, max(p.valueSize-19, 0))
	for i := range pad {
		pad[i] = 'x'
	}
	writerDone := make(chan struct{})
	var writes, writeErrs atomic.Int64
	go func() {
		defer close(writerDone)
		tick := time.NewTicker(time.Second / time.Duration(p.watchRate))
		defer tick.Stop()
		for i := 0; wctx.Err() == nil; i++ {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			v := fmt.Sprintf("%019d", time.Now().UnixNano()) + string(pad)
			octx, ocancel := context.WithTimeout(wctx, opTimeout)
			_, err := clis[0].Put(octx, fmt.Sprintf("%s%03d", watchPrefix, i%100), v)
			ocancel()
			if err != nil && wctx.Err() == nil {
				writeErrs.Add(1)
			}
			writes.Add(1)
		}
	}()

	sleepCtx(ctx, p.warmup)
	if p.profileDir != "" {
		f, err := os.Create(filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.pprof", t.name, name)))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	var serverProf <-chan struct{}
	if t.profileURL != "" {
		serverProf = serverProfile(t, p.duration, filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.server.pprof", t.name, name)))
	}
	procs0 := readProcs(t)
	mem := sampleMem(t)
	cpu0 := processCPU()
	start := time.Now()
	writes0 := writes.Load()
	measuring.Store(true)
	sleepCtx(ctx, p.duration)
	measuring.Store(false)
	procs1 := readProcs(t)
	memNote := mem.end(t) // before the watches close
	if p.profileDir != "" {
		pprof.StopCPUProfile()
	}
	if serverProf != nil {
		<-serverProf
	}
	res := &result{workload: name, target: t.name, elapsed: time.Since(start), cpu: processCPU() - cpu0}
	w := writes.Load() - writes0
	load := ""
	if t.watchLoad != nil {
		load = "; " + t.watchLoad() // before the watches close
	}
	// The memory the open watches hold, client and server sides together:
	// the heap with them open, less the heap once they are closed.
	open := heapInUse()
	cancel()
	<-writerDone
	wg.Wait()
	time.Sleep(time.Second) // let servers tear the streams down
	held := (int64(open) - int64(heapInUse())) >> 20

	for _, l := range lats {
		res.lat = append(res.lat, l...)
	}
	slices.Sort(res.lat)
	res.ops = int(delivered.Load())
	res.errs = int(failed.Load() + writeErrs.Load())
	res.note = fmt.Sprintf("%d watches, %d puts (%.0f%% of events delivered), watches hold %d MiB", n, w,
		100*float64(res.ops)/float64(max(w*int64(n), 1)), held)
	res.note += load
	if procs0 != nil {
		// Per delivered event: the servers' fan-out cost.
		res.note = joinNotes(res.note, describeProcs(procs0, procs1, res.ops))
	}
	res.note = joinNotes(res.note, memNote)
	return res, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
