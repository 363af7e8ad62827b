package main

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Workload names accepted by -workloads.
const (
	wlPut1     = "put-1"
	wlPut64    = "put-64"
	wlRangeLin = "range-lin-64"
	wlRangeSer = "range-ser-64"
	wlTxnCAS   = "txn-cas-64"
	// put-64 while thousands of short leases (one key each) expire.
	wlPutLeases = "put-64-leases"
	// Every put a new key with a value of random bytes (which no store can
	// compress): the data grows; with -ops and -value-size, a load of a
	// chosen size (e.g. 250 000 x 4 KiB).
	wlFill = "fill-64"
)

var allWorkloads = []string{wlPut1, wlPut64, wlRangeLin, wlRangeSer, wlTxnCAS}

const (
	putKeySpace  = 100000 // puts pick a random key among this many
	rangeKeys    = 1000   // keys preloaded for the range workloads
	opTimeout    = 10 * time.Second
	rangePrefix  = "bench/range/"
	putPrefix    = "bench/put/"
	fillPrefix   = "bench/fill/"
	casKeyPrefix = "bench/cas/"
)

// params are the knobs shared by every workload.
type params struct {
	duration   time.Duration
	warmup     time.Duration
	ops        int // if > 0, measure this many ops instead of a duration
	valueSize  int
	clients    int // concurrency of the "-64" workloads
	conns      int // clientv3 clients (gRPC connections) they share
	profileDir string
	blockRate  int // if > 0 (and profileDir set), also write block profiles
	leases     int // leases the put-64-leases workload grants
	watchRate  int // puts per second in the watch workloads
	deleteKeys int // keys the delete-1m workload deletes
}

// result is one workload's measurement on one target.
type result struct {
	workload, target string
	ops              int
	errs             int
	elapsed          time.Duration
	lat              []time.Duration // sorted
	cpu              time.Duration   // process CPU (user+sys) while measuring
	note             string
}

// cores is the average number of CPUs the whole process (server and load
// generator) used while measuring.
func (r *result) cores() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return r.cpu.Seconds() / r.elapsed.Seconds()
}

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (r *result) opsPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

func (r *result) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(p * float64(len(r.lat)-1))
	return r.lat[i]
}

// opFunc is one operation of worker w; it returns an error if the op failed.
type opFunc func(ctx context.Context, cli *clientv3.Client) error

// workerFactory builds the op of worker w (after any per-worker setup).
type workerFactory func(ctx context.Context, w int, cli *clientv3.Client) (opFunc, error)

// runWorkload runs one workload against a started target.
func runWorkload(ctx context.Context, name string, t *running, p params, preloaded *bool) (*result, error) {
	value := make([]byte, p.valueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	val := string(value)

	workers, conns := p.clients, p.conns
	if name == wlPut1 {
		workers, conns = 1, 1
	}
	if conns > workers {
		conns = workers
	}
	clis, err := newClients(t.endpoints, conns)
	if err != nil {
		return nil, err
	}
	defer closeClients(clis)

	res := &result{workload: name, target: t.name}
	var factory workerFactory
	switch name {
	case wlPutLeases:
		n, err := grantLeases(ctx, clis, p.leases, val)
		if err != nil {
			return nil, fmt.Errorf("leases: %w", err)
		}
		defer func() {
			res.note = joinNotes(fmt.Sprintf("%d leases of %ds, one key each, expiring", n, leaseTTL), res.note)
		}()
		fallthrough
	case wlPut1, wlPut64:
		factory = func(_ context.Context, w int, _ *clientv3.Client) (opFunc, error) {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			return func(ctx context.Context, cli *clientv3.Client) error {
				_, err := cli.Put(ctx, fmt.Sprintf("%s%08d", putPrefix, rng.IntN(putKeySpace)), val)
				return err
			}, nil
		}
	case wlFill:
		random := make([]byte, 1<<20+p.valueSize)
		crand.Read(random)
		var next atomic.Int64
		factory = func(_ context.Context, w int, _ *clientv3.Client) (opFunc, error) {
			return func(ctx context.Context, cli *clientv3.Client) error {
				i := next.Add(1)
				off := int(i*7919) % (1 << 20)
				_, err := cli.Put(ctx, fmt.Sprintf("%s%010d", fillPrefix, i), string(random[off:off+p.valueSize]))
				return err
			}, nil
		}
	case wlRangeLin, wlRangeSer:
		if !*preloaded {
			if err := preload(ctx, clis, val); err != nil {
				return nil, fmt.Errorf("preload: %w", err)
			}
			*preloaded = true
		}
		var opts []clientv3.OpOption
		if name == wlRangeSer {
			opts = append(opts, clientv3.WithSerializable())
		}
		factory = func(_ context.Context, w int, _ *clientv3.Client) (opFunc, error) {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			return func(ctx context.Context, cli *clientv3.Client) error {
				resp, err := cli.Get(ctx, rangeKey(rng.IntN(rangeKeys)), opts...)
				if err == nil && len(resp.Kvs) != 1 {
					err = errors.New("preloaded key missing")
				}
				return err
			}, nil
		}
	case wlTxnCAS:
		var ok, conflict atomic.Int64
		factory = func(ctx context.Context, w int, cli *clientv3.Client) (opFunc, error) {
			key := fmt.Sprintf("%s%04d", casKeyPrefix, w)
			// Kubernetes' GuaranteedUpdate: compare the mod revision we
			// last saw, put on success, read the current value otherwise.
			var last int64
			cas := func(ctx context.Context, cli *clientv3.Client) (bool, error) {
				resp, err := cli.Txn(ctx).
					If(clientv3.Compare(clientv3.ModRevision(key), "=", last)).
					Then(clientv3.OpPut(key, val)).
					Else(clientv3.OpGet(key)).Commit()
				if err != nil {
					return false, err
				}
				if resp.Succeeded {
					last = resp.Header.Revision
					return true, nil
				}
				kvs := resp.Responses[0].GetResponseRange().GetKvs()
				if len(kvs) == 0 {
					last = 0
				} else {
					last = kvs[0].ModRevision
				}
				return false, nil
			}
			// Create the key (or learn its revision) before measuring.
			for i := 0; i < 3; i++ {
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				done, err := cas(octx, cli)
				cancel()
				if err != nil {
					return nil, err
				}
				if done {
					break
				}
			}
			return func(ctx context.Context, cli *clientv3.Client) error {
				done, err := cas(ctx, cli)
				if err == nil {
					if done {
						ok.Add(1)
					} else {
						conflict.Add(1)
					}
				}
				return err
			}, nil
		}
		defer func() {
			if n := ok.Load() + conflict.Load(); n > 0 {
				res.note = joinNotes(fmt.Sprintf("cas ok %.1f%%", 100*float64(ok.Load())/float64(n)), res.note)
			}
		}()
	default:
		return nil, fmt.Errorf("unknown workload %q", name)
	}

	ops := make([]opFunc, workers)
	for w := range ops {
		op, err := factory(ctx, w, clis[w%conns])
		if err != nil {
			return nil, fmt.Errorf("worker setup: %w", err)
		}
		ops[w] = op
	}

	// Phases: 0 warmup, 1 measuring, 2 stopped. Only ops that start and
	// finish while measuring count.
	var phase atomic.Int32
	var remaining atomic.Int64
	remaining.Store(int64(p.ops))
	lats := make([][]time.Duration, workers)
	ends := make([][]time.Time, workers) // completion time of each lats entry
	errs := make([]int, workers)
	allDone := make(chan struct{})
	var wg sync.WaitGroup
	var doneOnce sync.Once
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cli := clis[w%conns]
			op := ops[w]
			for ctx.Err() == nil {
				ph := phase.Load()
				if ph == 2 {
					return
				}
				if ph == 1 && p.ops > 0 && remaining.Add(-1) < 0 {
					doneOnce.Do(func() { close(allDone) })
					return
				}
				t0 := time.Now()
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				err := op(octx, cli)
				cancel()
				t1 := time.Now()
				if ph != 1 {
					continue
				}
				if err != nil {
					if ctx.Err() != nil {
						return // interrupted
					}
					errs[w]++
					if errs[w] <= 3 {
						fmt.Fprintf(os.Stderr, "bench: %s/%s: %v\n", t.name, name, err)
					}
					continue
				}
				lats[w] = append(lats[w], t1.Sub(t0))
				ends[w] = append(ends[w], t1)
			}
		}()
	}

	stopAll := func() { phase.Store(2) }
	select {
	case <-time.After(p.warmup):
	case <-ctx.Done():
	}
	var prof *os.File
	if p.profileDir != "" {
		f, err := os.Create(filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.pprof", t.name, name)))
		if err != nil {
			stopAll()
			wg.Wait()
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			stopAll()
			wg.Wait()
			return nil, err
		}
		prof = f
	}
	if p.profileDir != "" && p.blockRate > 0 {
		// The block profile is cumulative: save a base to subtract.
		if err := writeProfile("block", filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.block-base.pprof", t.name, name))); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		runtime.SetBlockProfileRate(p.blockRate)
	}
	procs0, procs1 := readProcs(t), map[string]time.Duration(nil)
	mem := sampleMem(t)
	var serverProf <-chan struct{}
	if t.profileURL != "" && p.ops == 0 {
		serverProf = serverProfile(t, p.duration, filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.server.pprof", t.name, name)))
	}
	start, cpu0 := time.Now(), processCPU()
	phase.Store(1)
	end := time.Time{} // zero: keep every op (fixed op count)
	if p.ops > 0 {
		select {
		case <-allDone:
		case <-ctx.Done():
		}
		stopAll()
		wg.Wait()
		res.elapsed, res.cpu = time.Since(start), processCPU()-cpu0
		procs1 = readProcs(t)
	} else {
		select {
		case <-time.After(p.duration):
		case <-ctx.Done():
		}
		end = time.Now()
		res.cpu = processCPU() - cpu0
		procs1 = readProcs(t)
		stopAll()
		res.elapsed = end.Sub(start)
		wg.Wait()
	}
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	if serverProf != nil {
		<-serverProf
	}
	if p.profileDir != "" && p.blockRate > 0 {
		runtime.SetBlockProfileRate(0)
		if err := writeProfile("block", filepath.Join(p.profileDir, fmt.Sprintf("%s-%s.block.pprof", t.name, name))); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for w := range lats {
		for i, l := range lats[w] {
			// Ops still in flight when the window closed do not count.
			if end.IsZero() || !ends[w][i].After(end) {
				res.lat = append(res.lat, l)
			}
		}
		res.errs += errs[w]
	}
	slices.Sort(res.lat)
	res.ops = len(res.lat)
	if procs0 != nil {
		res.note = joinNotes(res.note, describeProcs(procs0, procs1, res.ops))
	}
	res.note = joinNotes(res.note, mem.end(t))
	return res, nil
}

func writeProfile(kind, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(kind).WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func rangeKey(i int) string { return fmt.Sprintf("%s%04d", rangePrefix, i) }

// preload writes the keys the range workloads read, 64 at a time.
func preload(ctx context.Context, clis []*clientv3.Client, val string) error {
	next := atomic.Int64{}
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cli := clis[w%len(clis)]
			for {
				i := int(next.Add(1) - 1)
				if i >= rangeKeys {
					return
				}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				_, err := cli.Put(octx, rangeKey(i), val)
				cancel()
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// leaseTTL is the TTL of the put-64-leases workload's leases: short enough
// that they expire while the workload measures.
const leaseTTL = 3

// grantLeases grants n leases of leaseTTL seconds, 64 at a time, and puts
// one key on each; they are never kept alive.
func grantLeases(ctx context.Context, clis []*clientv3.Client, n int, val string) (int, error) {
	var (
		wg       sync.WaitGroup
		granted  atomic.Int64
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, 64)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			cli := clis[i%len(clis)]
			octx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			g, err := cli.Grant(octx, leaseTTL)
			if err == nil {
				_, err = cli.Put(octx, fmt.Sprintf("bench/leased/%06d", i), val, clientv3.WithLease(g.ID))
			}
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			granted.Add(1)
		}()
	}
	wg.Wait()
	return int(granted.Load()), firstErr
}

// joinNotes joins a result's notes with "; ", skipping empty ones.
func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}
