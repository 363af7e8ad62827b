package main

import (
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Targets "procs-N": N replica stores as separate processes (plus one
// watcher and one gateway process) holding 12 data shards with
// replication factor 3, so each process's CPU can be read on its own: what
// a store costs per write when 3 stores hold every shard, and when 6
// stores share them (placement puts each shard on 3 of them). "procs-3-1s"
// is 3 stores with the one data shard of a cluster made without splits:
// the shape of three etcd members.
var procTargets = map[string]procShape{"procs-3": {3, 12}, "procs-6": {6, 12}, "procs-3-1s": {3, 1}}

type procShape struct{ stores, shards int }

// clockTicks is Linux's USER_HZ, the unit of /proc/<pid>/stat's CPU times.
const clockTicks = 100

// buildTessera builds the tessera binary into dir.
func buildTessera(dir string) (string, error) {
	bin := filepath.Join(dir, "tessera")
	build := exec.Command("go", "build", "-o", bin, "github.com/tessera-kv/tessera/cmd/tessera")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build tessera: %w", err)
	}
	return bin, nil
}

// procSet is a target's server processes, each logging to DIR/NAME.log.
type procSet struct {
	dir   string
	procs map[string]*exec.Cmd
}

func (ps *procSet) start(name, bin string, args ...string) error {
	return ps.startWith(name, nil, bin, args...)
}

// startWith is start with env added to this process's environment.
func (ps *procSet) startWith(name string, env []string, bin string, args ...string) error {
	if ps.procs == nil {
		ps.procs = map[string]*exec.Cmd{}
	}
	c := exec.Command(bin, args...)
	if env != nil {
		c.Env = append(os.Environ(), env...)
	}
	f, err := os.Create(filepath.Join(ps.dir, name+".log"))
	if err != nil {
		return err
	}
	c.Stdout, c.Stderr = f, f
	if err := c.Start(); err != nil {
		f.Close()
		return err
	}
	ps.procs[name] = c
	return nil
}

// stop asks every process to stop (SIGTERM) and kills what has not
// stopped 15 s later.
func (ps *procSet) stop() {
	for _, c := range ps.procs {
		c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range ps.procs {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			c.Process.Kill()
			<-done
		}
	}
}

// running describes the set as a target.
func (ps *procSet) running(endpoint string) *running {
	return &running{endpoints: []string{endpoint}, stop: ps.stop,
		procCPU: func() map[string]time.Duration {
			out := map[string]time.Duration{}
			for name, c := range ps.procs {
				out[name] = pidCPU(c.Process.Pid)
			}
			return out
		},
		procMem: func() (rss, anon int64) {
			for _, c := range ps.procs {
				r, a := pidMem(c.Process.Pid)
				rss, anon = rss+r, anon+a
			}
			return rss, anon
		},
		diskUsage: ps.diskUsage}
}

// diskUsage is the space the files under the set's subdirectories (each
// server's data) take on disk; the binary and logs at the top are not
// counted.
func (ps *procSet) diskUsage() int64 {
	var n int64
	filepath.WalkDir(ps.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Dir(path) == ps.dir {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

func startProcs(dir string, shape procShape) (*running, error) {
	n := shape.stores
	bin, err := buildTessera(dir)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2*n + 2)
	if err != nil {
		return nil, err
	}
	var cluster, apis []string
	for i := 0; i < n; i++ {
		cluster = append(cluster, fmt.Sprintf("%d=%s/%s", i+1, ports[2*i], ports[2*i+1]))
		apis = append(apis, ports[2*i+1])
	}
	watcherAddr, client := ports[2*n], ports[2*n+1]
	ps := &procSet{dir: dir}
	split := strings.Join(splitKeys(shape.shards), ",")
	for i := 0; i < n; i++ {
		if err := ps.start(fmt.Sprintf("store%d", i+1), bin, "replica", "--id", strconv.Itoa(i+1), "--data-dir", filepath.Join(dir, fmt.Sprintf("r%d", i+1)),
			"--raft-address", ports[2*i], "--api-address", ports[2*i+1], "--initial-cluster", strings.Join(cluster, ","),
			"--initial-split-keys", split, "--replication-factor", "3"); err != nil {
			ps.stop()
			return nil, err
		}
	}
	if err := ps.start("watcher", bin, "watcher", "--replicas", strings.Join(apis, ","), "--api-address", watcherAddr); err != nil {
		ps.stop()
		return nil, err
	}
	if err := ps.start("gateway", bin, "gateway", "--listen-client-urls", "http://"+client, "--replicas", strings.Join(apis, ","),
		"--watchers", watcherAddr, "--name", "bench"); err != nil {
		ps.stop()
		return nil, err
	}
	return ps.running("http://" + client), nil
}

// startDevProc runs `tessera dev` as its own process (target dev-proc),
// with its defaults, so its CPU and memory are its own.
func startDevProc(dir string) (*running, error) {
	bin, err := buildTessera(dir)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	ps := &procSet{dir: dir}
	args := []string{"dev", "--data-dir", filepath.Join(dir, "data"), "--listen-client-urls", "http://" + ports[0],
		"--raft-address", ports[1], "--api-address", ports[2], "--watcher-address", ports[3]}
	if serverProfiles {
		args = append(args, "--enable-pprof")
	}
	if err := ps.start("server", bin, args...); err != nil {
		return nil, err
	}
	r := ps.running("http://" + ports[0])
	if serverProfiles {
		r.profileURL = "http://" + ports[0] + "/debug/pprof/profile"
	}
	return r, nil
}

// serverProfiles: -cpuprofile-dir was given, so dev-proc serves its
// profiles and each workload saves the server's CPU profile as well.
var serverProfiles bool

// serverProfile saves the CPU profile of a target's server over the next
// d to path, in the background; wait for the returned channel.
func serverProfile(t *running, d time.Duration, path string) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(fmt.Sprintf("%s?seconds=%d", t.profileURL, max(1, int(d.Round(time.Second)/time.Second))))
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: server profile: %v\n", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: server profile: %v\n", err)
			return
		}
		defer f.Close()
		io.Copy(f, resp.Body)
	}()
	return done
}

// startEtcdProc runs an etcd cluster of n members, each in a process of
// its own (targets etcd-proc, etcd-3-proc): this benchmark binary again,
// serving an embedded etcd (serveEtcdEnv). Clients get every member.
func startEtcdProc(dir string, n int) (*running, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var cluster, endpoints []string
	for i := 0; i < n; i++ {
		cluster = append(cluster, fmt.Sprintf("m%d=http://%s", i+1, ports[2*i+1]))
		endpoints = append(endpoints, "http://"+ports[2*i])
	}
	ps := &procSet{dir: dir}
	for i := 0; i < n; i++ {
		spec := strings.Join([]string{dir, fmt.Sprintf("m%d", i+1), ports[2*i], ports[2*i+1], strings.Join(cluster, ",")}, ";")
		name := "server"
		if n > 1 {
			name = fmt.Sprintf("store%d", i+1)
		}
		if err := ps.startWith(name, []string{serveEtcdEnv + "=" + spec}, self); err != nil {
			ps.stop()
			return nil, err
		}
	}
	r := ps.running(endpoints[0])
	r.endpoints = endpoints
	return r, nil
}

// serveEtcdEnv, set to DIR;NAME;CLIENT;PEER;INITIAL_CLUSTER, makes this
// binary serve an etcd member until SIGTERM instead of benchmarking.
const serveEtcdEnv = "BENCH_SERVE_ETCD"

func serveEtcd(spec string) error {
	f := strings.Split(spec, ";")
	if len(f) != 5 {
		return fmt.Errorf("%s=%q: want DIR;NAME;CLIENT;PEER;INITIAL_CLUSTER", serveEtcdEnv, spec)
	}
	r, err := startEtcdAt(f[0], f[1], f[2], f[3], f[4])
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	r.stop()
	return nil
}

// readProcs reads a process target's processes' CPU (nil for others).
func readProcs(t *running) map[string]time.Duration {
	if t.procCPU == nil {
		return nil
	}
	return t.procCPU()
}

// pidCPU is a process's user+system CPU time so far (0 if unreadable).
func pidCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields from after it. utime and stime are fields 14 and 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * time.Second / clockTicks
}

// describeProcs says what each process spent per op between two readings:
// the stores' mean and highest, the gateway's and the watcher's (or the
// one server's).
func describeProcs(before, after map[string]time.Duration, ops int) string {
	if ops == 0 {
		return ""
	}
	per := func(name string) float64 { return float64((after[name] - before[name]).Microseconds()) / float64(ops) }
	var stores []float64
	for name := range after {
		if strings.HasPrefix(name, "store") {
			stores = append(stores, per(name))
		}
	}
	if len(stores) == 0 {
		return fmt.Sprintf("CPU µs/op %.0f", per("server"))
	}
	sort.Float64s(stores)
	var sum, all float64
	for _, s := range stores {
		sum += s
	}
	for name := range after {
		all += per(name)
	}
	out := fmt.Sprintf("CPU µs/op: all processes %.0f; %d stores mean %.0f, max %.0f", all, len(stores), sum/float64(len(stores)), stores[len(stores)-1])
	for _, name := range []string{"gateway", "watcher"} {
		if _, ok := after[name]; ok {
			out += fmt.Sprintf("; %s %.0f", name, per(name))
		}
	}
	return out
}

// pidMem is a process's resident memory and the anonymous part of it
// (heap, stacks), in bytes; the rest is file pages mapped in (Badger's
// tables, bbolt's file), which the kernel can reclaim.
func pidMem(pid int) (rss, anon int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "RssAnon:":
			anon = kb << 10
		}
	}
	return rss, anon
}

// memSampler records a target's highest resident memory while it runs.
type memSampler struct {
	stop           chan struct{}
	done           chan struct{}
	peak, peakAnon int64
}

func sampleMem(t *running) *memSampler {
	if t.procMem == nil {
		return nil
	}
	m := &memSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			rss, anon := t.procMem()
			m.peak, m.peakAnon = max(m.peak, rss), max(m.peakAnon, anon)
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

// end stops sampling and says the peak and the memory now.
func (m *memSampler) end(t *running) string {
	if m == nil {
		return ""
	}
	close(m.stop)
	<-m.done
	rss, anon := t.procMem()
	note := fmt.Sprintf("RSS peak %d MiB (anon %d), end %d MiB (anon %d)", m.peak>>20, m.peakAnon>>20, rss>>20, anon>>20)
	if t.diskUsage != nil {
		note += fmt.Sprintf("; disk %d MiB", t.diskUsage()>>20)
	}
	return note
}
