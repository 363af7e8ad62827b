package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Targets "procs-N": N replica stores as separate processes (plus one
// watcher and one gateway process) holding procShards data shards with
// replication factor 3, so each process's CPU can be read on its own: what
// a store costs per write when 3 stores hold every shard, and when 6
// stores share them (placement puts each shard on 3 of them).
var procTargets = map[string]int{"procs-3": 3, "procs-6": 6}

const procShards = 12

// clockTicks is Linux's USER_HZ, the unit of /proc/<pid>/stat's CPU times.
const clockTicks = 100

func startProcs(dir string, n int) (*running, error) {
	bin := filepath.Join(dir, "tessera")
	build := exec.Command("go", "build", "-o", bin, "github.com/tessera-kv/tessera/cmd/tessera")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build tessera: %w", err)
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
	procs := map[string]*exec.Cmd{}
	stop := func() {
		for _, c := range procs {
			c.Process.Signal(syscall.SIGTERM)
		}
		for _, c := range procs {
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
	start := func(name string, args ...string) error {
		c := exec.Command(bin, args...)
		f, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return err
		}
		c.Stdout, c.Stderr = f, f
		if err := c.Start(); err != nil {
			return err
		}
		procs[name] = c
		return nil
	}
	split := strings.Join(splitKeys(procShards), ",")
	for i := 0; i < n; i++ {
		if err := start(fmt.Sprintf("store%d", i+1), "replica", "--id", strconv.Itoa(i+1), "--data-dir", filepath.Join(dir, fmt.Sprintf("r%d", i+1)),
			"--raft-address", ports[2*i], "--api-address", ports[2*i+1], "--initial-cluster", strings.Join(cluster, ","),
			"--initial-split-keys", split, "--replication-factor", "3"); err != nil {
			stop()
			return nil, err
		}
	}
	if err := start("watcher", "watcher", "--replicas", strings.Join(apis, ","), "--api-address", watcherAddr); err != nil {
		stop()
		return nil, err
	}
	if err := start("gateway", "gateway", "--listen-client-urls", "http://"+client, "--replicas", strings.Join(apis, ","),
		"--watchers", watcherAddr, "--name", "bench"); err != nil {
		stop()
		return nil, err
	}
	return &running{endpoints: []string{"http://" + client}, stop: stop, procCPU: func() map[string]time.Duration {
		out := map[string]time.Duration{}
		for name, c := range procs {
			out[name] = pidCPU(c.Process.Pid)
		}
		return out
	}}, nil
}

// readProcs reads a procs-N target's processes' CPU (nil for others).
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
// the stores' mean and highest, the gateway's and the watcher's.
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
	sort.Float64s(stores)
	var sum float64
	for _, s := range stores {
		sum += s
	}
	return fmt.Sprintf("CPU µs/op: store mean %.0f, max %.0f, all %d stores %.0f; gateway %.0f; watcher %.0f",
		sum/float64(len(stores)), stores[len(stores)-1], len(stores), sum, per("gateway"), per("watcher"))
}
