package e2e

import (
	"fmt"
	"math/rand"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	hist "github.com/tessera-kv/tessera/test/history"
)

// nemesisDuration is how long the process nemesis tests drive load:
// NEMESIS_DURATION overrides the short default CI runs.
func nemesisDuration(t *testing.T) time.Duration {
	if v := os.Getenv("NEMESIS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("NEMESIS_DURATION: %v", err)
		}
		return d
	}
	return 8 * time.Second
}

// Pause stops the process (SIGSTOP): its timers, goroutines and sockets
// freeze while the others go on.
func (p *proc) Pause() { _ = p.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused process (SIGCONT).
func (p *proc) Resume() { _ = p.cmd.Process.Signal(syscall.SIGCONT) }

// TestProcessNemesis runs etcd's workload (history.Workload: five clients,
// a watch) against three replica processes, a watcher and a gateway while
// real processes are killed with SIGKILL and restarted, or a shard leader
// is paused with SIGSTOP for longer than an election; then every process
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
			var clients []*clientv3.Client
			for range 5 {
				clients = append(clients, newClient(t, pc.url))
			}
			dur := nemesisDuration(t)
			stop := time.Now().Add(dur)
			run := hist.Workload{Prefix: "/nem/", Keys: 3, Clients: clients, Watch: newClient(t, pc.url)}.Start(t, stop)
			did := tc.nem(t, pc, rand.New(rand.NewSource(time.Now().UnixNano())), stop)
			run.Wait()
			pc.restartAll(t)
			summary := run.Check(t, newClient(t, pc.url))
			t.Logf("%s of load; nemesis: %s; then every process restarted: %s", dur, did, summary)
		})
	}
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
