package e2e

import (
	"fmt"
	"math/rand"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	hist "github.com/tessera-kv/tessera/test/history"
	"github.com/tessera-kv/tessera/test/netns"
)

// Pause stops the process (SIGSTOP): its timers, goroutines and sockets
// freeze while the others go on.
func (p *proc) Pause() { _ = p.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused process (SIGCONT).
func (p *proc) Resume() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }

// TestProcessNemesis runs etcd's workload (history.Workload: five clients,
// a watch) against three replica processes, a watcher and a gateway while
// real processes are killed with SIGKILL and restarted, restarted one by
// one, or a shard leader is paused with SIGSTOP for longer than an
// election; then every process
// restarts and the history must be linearizable, the watch complete and in
// order, and every acknowledged write read back.
func TestProcessNemesis(t *testing.T) {
	if testing.Short() {
		t.Skip("process cluster under faults: not in -short")
	}
	cases := []struct {
		name string
		nem  func(t *testing.T, pc *procCluster, rng *rand.Rand, stop time.Time) string
	}{
		{"kill9-random-process", func(t *testing.T, pc *procCluster, rng *rand.Rand, stop time.Time) string {
			var did []string
			for time.Now().Add(2 * time.Second).Before(stop) {
				time.Sleep(time.Second)
				switch i := rng.Intn(len(pc.reps) + 2); {
				case i < len(pc.reps):
					pc.reps[i].p.Kill()
					time.Sleep(500 * time.Millisecond)
					pc.reps[i].start(t)
					did = append(did, fmt.Sprintf("replica%d", pc.reps[i].id))
				case i == len(pc.reps):
					pc.watcher.Kill()
					time.Sleep(500 * time.Millisecond)
					pc.startWatcher(t)
					did = append(did, "watcher")
				default:
					pc.gw.Kill()
					time.Sleep(500 * time.Millisecond)
					pc.startGateway(t)
					did = append(did, "gateway")
				}
			}
			return "kill -9 then restart of " + strings.Join(did, ", ")
		}},
		{"rolling-restart", func(t *testing.T, pc *procCluster, _ *rand.Rand, stop time.Time) string {
			step := time.Until(stop) / time.Duration(len(pc.reps)+3)
			for _, r := range pc.reps {
				r.p.Stop()
				r.start(t)
				time.Sleep(step)
			}
			pc.watcher.Stop()
			pc.startWatcher(t)
			time.Sleep(step)
			pc.gw.Stop()
			pc.startGateway(t)
			return "SIGTERM and restart of every replica in turn, then the watcher, then the gateway"
		}},
		{"pause-data-leader", func(t *testing.T, pc *procCluster, _ *rand.Rand, stop time.Time) string {
			return pauseLeader(t, pc, dataShardID, stop)
		}},
		{"pause-meta-leader", func(t *testing.T, pc *procCluster, _ *rand.Rand, stop time.Time) string {
			return pauseLeader(t, pc, 1, stop)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pc := startProcCluster(t)
			dur := hist.Duration(t, 8*time.Second)
			run, stop := workloadOn(t, pc, dur)
			did := tc.nem(t, pc, rand.New(rand.NewSource(time.Now().UnixNano())), stop)
			run.Wait()
			pc.restartAll(t)
			summary := run.Check(t, newClient(t, pc.url))
			t.Logf("%s of load; nemesis: %s; then every process restarted: %s", dur, did, summary)
		})
	}
}

// workloadOn starts the fault tests' workload (five clients and a watch,
// history.Workload) on the cluster's gateway, for dur from now.
func workloadOn(t *testing.T, pc *procCluster, dur time.Duration) (*hist.Run, time.Time) {
	var clients []*clientv3.Client
	for range 5 {
		clients = append(clients, newClient(t, pc.url))
	}
	stop := time.Now().Add(dur)
	return hist.Workload{Prefix: "/nem/", Keys: 3, Clients: clients, Watch: newClient(t, pc.url)}.Start(t, stop), stop
}

// pauseLeader pauses the shard's leader process with SIGSTOP for 2.5 s (five
// election timeouts), resumes it, and repeats until stop.
func pauseLeader(t *testing.T, pc *procCluster, shard uint64, stop time.Time) string {
	var did []string
	for time.Now().Add(3500 * time.Millisecond).Before(stop) {
		var leader *replicaNode
		for _, r := range pc.reps {
			if id, err := shardLeader(r.api, shard); err == nil && id != 0 {
				leader = pc.reps[id-1]
				break
			}
		}
		if leader == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		leader.p.Pause()
		time.Sleep(2500 * time.Millisecond)
		leader.p.Resume()
		did = append(did, fmt.Sprintf("replica%d", leader.id))
		time.Sleep(time.Second)
	}
	return fmt.Sprintf("SIGSTOP of the shard %d leader for 2.5 s, then SIGCONT: %s", shard, strings.Join(did, ", "))
}

// TestNetworkNemesis runs the same workload and checks with each replica
// process in its own network namespace (test/netns) while the network
// fails: a random replica isolated from everything, or deafened (it hears
// nothing, both its peers' and the watcher's and gateway's packets
// dropped), the meta leader isolated, or the Raft port alone cut so that
// the watcher still reaches a replica that no longer hears its leader.
// In that last case, the watch must keep up: every acknowledged write's
// event arrives within 5 s.
func TestNetworkNemesis(t *testing.T) {
	if testing.Short() {
		t.Skip("network faults between namespaces: not in -short")
	}
	if why := netns.Available(); why != "" {
		t.Skip(why)
	}
	const raftPort = 2380
	type nemesis func(nw *netns.Network, pc *procCluster, rng *rand.Rand, stop time.Time) string
	each := func(what string, cut func(nw *netns.Network, pc *procCluster, rng *rand.Rand) int) nemesis {
		return func(nw *netns.Network, pc *procCluster, rng *rand.Rand, stop time.Time) string {
			var did []string
			for time.Now().Add(3 * time.Second).Before(stop) {
				i := cut(nw, pc, rng)
				time.Sleep(2 * time.Second)
				nw.Heal()
				time.Sleep(time.Second)
				did = append(did, fmt.Sprintf("replica%d", i+1))
			}
			return what + " for 2 s: " + strings.Join(did, ", ")
		}
	}
	cases := []struct {
		name       string
		nem        nemesis
		maxLatency time.Duration // 0: not checked
	}{
		{"isolate-random-replica", each("isolated", func(nw *netns.Network, pc *procCluster, rng *rand.Rand) int {
			i := rng.Intn(len(pc.reps))
			nw.Isolate(pc.reps[i].host)
			return i
		}), 0},
		{"deafen-random-replica", each("deafened (hears nothing)", func(nw *netns.Network, pc *procCluster, rng *rand.Rand) int {
			i := rng.Intn(len(pc.reps))
			pc.reps[i].host.Deafen(pc.reps[i].host.Others())
			return i
		}), 0},
		{"isolate-meta-leader", each("isolated the meta leader", func(nw *netns.Network, pc *procCluster, rng *rand.Rand) int {
			i := leaderIndex(pc, 1)
			nw.Isolate(pc.reps[i].host)
			return i
		}), 0},
		// Each replica in turn, with time to recover between cuts: the
		// latency bound is about one cut, not cuts in a row.
		{"cut-raft-only", func(nw *netns.Network, pc *procCluster, _ *rand.Rand, stop time.Time) string {
			var did []string
			for i := 0; time.Now().Add(5 * time.Second).Before(stop); i = (i + 1) % len(pc.reps) {
				began := time.Now().UTC()
				nw.Isolate(pc.reps[i].host, raftPort)
				time.Sleep(2500 * time.Millisecond)
				nw.Heal()
				time.Sleep(2500 * time.Millisecond)
				did = append(did, fmt.Sprintf("replica%d at %s", i+1, began.Format("15:04:05.000")))
			}
			return "cut from its peers' Raft traffic for 2.5 s, reachable by the watcher: " + strings.Join(did, ", ")
		}, 5 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nw := netns.New(t, 3)
			pc := startProcClusterOn(t, nw.Hosts())
			dur := hist.Duration(t, 16*time.Second)
			run, stop := workloadOn(t, pc, dur)
			did := tc.nem(nw, pc, rand.New(rand.NewSource(time.Now().UnixNano())), stop)
			nw.Heal()
			run.Wait()
			pc.restartAll(t)
			summary := run.Check(t, newClient(t, pc.url))
			lat := run.Latency()
			t.Logf("%s of load; nemesis: %s; then every process restarted: %s; write-to-event latency p50 %s p99 %s max %s",
				dur, did, summary, hist.Percentile(lat, 0.5), hist.Percentile(lat, 0.99), hist.Percentile(lat, 1))
			if worst := hist.Percentile(lat, 1); tc.maxLatency > 0 && worst > tc.maxLatency {
				t.Fatalf("a write's event took %s to reach the watch (limit %s):\n%s", worst, tc.maxLatency, strings.Join(run.Slow(tc.maxLatency), "\n"))
			}
		})
	}
}

// leaderIndex is the index of the replica leading shard, as the first
// replica that answers sees it (0 if none knows).
func leaderIndex(pc *procCluster, shard uint64) int {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, r := range pc.reps {
			if id, err := shardLeader(r.api, shard); err == nil && id != 0 {
				return int(id) - 1
			}
		}
	}
	return 0
}
