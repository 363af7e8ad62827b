// Package containers runs Tessera as a cluster of real hosts: the project's
// image (make image), one container per process on a private Docker
// network, 3 replicas, 2 watchers and 2 gateways. Under load it kills,
// partitions and restarts containers, and checks the whole history. It
// needs a Docker engine (and skips without one).
package containers

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	hist "github.com/tessera-kv/tessera/test/history"
)

// docker runs the docker CLI and returns its trimmed output.
func docker(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return strings.TrimSpace(out.String()), err
}

func mustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := docker(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// container is one process of the cluster.
type container struct {
	name, ip string
}

type cluster struct {
	t        *testing.T
	net      string
	replicas []container
	watchers []container
	gateways []container
}

// image builds the project's image with "make image" under a test tag.
func image(t *testing.T) string {
	t.Helper()
	tag := fmt.Sprintf("test-%d", os.Getpid())
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "-C", root, "image", "IMAGE=tessera-test", "VERSION="+tag)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	img := "tessera-test:" + tag
	t.Cleanup(func() { docker(t, "rmi", "-f", img, "tessera-test:latest") })
	return img
}

// newCluster starts the cluster's containers on a network of its own.
func newCluster(t *testing.T, img string) *cluster {
	c := &cluster{t: t}
	var subnet string
	for attempt := 0; ; attempt++ {
		n := 1 + rand.Intn(250)
		subnet = fmt.Sprintf("10.215.%d", n)
		c.net = fmt.Sprintf("tessera-test-%d-%d", os.Getpid(), n)
		if _, err := docker(t, "network", "create", "--subnet", subnet+".0/24", c.net); err == nil {
			break
		} else if attempt == 5 {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, ct := range c.all() {
			if t.Failed() {
				// A container logs to stderr, which "docker logs" replays there.
				logs, _ := exec.Command("docker", "logs", "--tail", "40", ct.name).CombinedOutput()
				t.Logf("---- %s ----\n%s", ct.name, logs)
			}
			docker(t, "rm", "-f", "-v", ct.name)
		}
		docker(t, "network", "rm", c.net)
	})
	var initial, apis []string
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("%s.%d", subnet, 10+i)
		c.replicas = append(c.replicas, container{name: fmt.Sprintf("%s-replica%d", c.net, i), ip: ip})
		initial = append(initial, fmt.Sprintf("%d=%s:2380/%s:2381", i, ip, ip))
		apis = append(apis, ip+":2381")
	}
	for i, r := range c.replicas {
		c.run(r, img, "replica", fmt.Sprintf("--id=%d", i+1), "--data-dir=/var/lib/tessera",
			"--raft-address="+r.ip+":2380", "--api-address="+r.ip+":2381",
			"--initial-cluster="+strings.Join(initial, ","), "--listen-address=0.0.0.0:2390")
	}
	var watchers []string
	for i := 1; i <= 2; i++ {
		w := container{name: fmt.Sprintf("%s-watcher%d", c.net, i), ip: fmt.Sprintf("%s.%d", subnet, 20+i)}
		c.watchers = append(c.watchers, w)
		watchers = append(watchers, w.ip+":2382")
		c.run(w, img, "watcher", "--replicas="+strings.Join(apis, ","), "--api-address=0.0.0.0:2382", "--listen-address=0.0.0.0:2390")
	}
	for i := 1; i <= 2; i++ {
		g := container{name: fmt.Sprintf("%s-gateway%d", c.net, i), ip: fmt.Sprintf("%s.%d", subnet, 30+i)}
		c.gateways = append(c.gateways, g)
		c.run(g, img, "gateway", fmt.Sprintf("--name=gateway%d", i), "--listen-client-urls=http://0.0.0.0:2379",
			"--advertise-client-urls=http://"+g.ip+":2379", "--replicas="+strings.Join(apis, ","), "--watchers="+strings.Join(watchers, ","))
	}
	c.waitReady(2 * time.Minute)
	// And a write goes through (the revision oracle is up) before any load.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.client().Put(ctx, "/ready", "1"); err != nil {
		t.Fatalf("first write: %v", err)
	}
	return c
}

// run starts a container as the Kubernetes manifests run pods: read-only
// root, no capabilities, no privilege escalation; a replica's store on a
// volume of its own that outlives restarts.
func (c *cluster) run(ct container, img string, args ...string) {
	c.t.Helper()
	opts := []string{"run", "-d", "--name", ct.name, "--network", c.net, "--ip", ct.ip,
		"--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"}
	if args[0] == "replica" {
		opts = append(opts, "-v", "/var/lib/tessera")
	}
	mustDocker(c.t, append(append(opts, img), args...)...)
}

func (c *cluster) all() []container {
	return append(append(append([]container(nil), c.replicas...), c.watchers...), c.gateways...)
}

func (c *cluster) endpoints() []string {
	var out []string
	for _, g := range c.gateways {
		out = append(out, "http://"+g.ip+":2379")
	}
	return out
}

func (c *cluster) client() *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// waitReady waits until a linearizable read goes through every gateway.
// It writes nothing: during a workload, the history checker must see every
// change of the revision.
func (c *cluster) waitReady(within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for _, ep := range c.endpoints() {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			c.t.Fatal(err)
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := cli.Get(ctx, "/ready")
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				cli.Close()
				c.t.Fatalf("the cluster did not serve through %s within %s: %v", ep, within, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		cli.Close()
	}
}

// TestContainerCluster: kill -9, a partition and a rolling restart of every
// tier, one container at a time, under load. Nothing acknowledged is lost,
// the history is linearizable, the watch sees every write once, in order;
// the errors clients saw during each rolling restart are reported.
func TestContainerCluster(t *testing.T) {
	if _, err := docker(t, "info"); err != nil {
		t.Skipf("no Docker engine here: %v", err)
	}
	c := newCluster(t, image(t))
	var clients []*clientv3.Client
	for range 4 {
		clients = append(clients, c.client())
	}
	dur := hist.Duration(t, 60*time.Second)
	stop := time.Now().Add(dur)
	run := hist.Workload{Prefix: "/ctr/", Keys: 3, Clients: clients, Watch: c.client()}.Start(t, stop)

	type phase struct {
		name     string
		from, to time.Time
	}
	var phases []phase
	do := func(name string, f func()) {
		from := time.Now()
		f()
		phases = append(phases, phase{name, from, time.Now()})
	}
	time.Sleep(3 * time.Second)
	do("kill -9 replica2, start it again after 3 s", func() {
		mustDocker(t, "kill", "-s", "KILL", c.replicas[1].name)
		time.Sleep(3 * time.Second)
		mustDocker(t, "start", c.replicas[1].name)
		time.Sleep(5 * time.Second)
	})
	do("disconnect replica3 from the network for 5 s", func() {
		mustDocker(t, "network", "disconnect", c.net, c.replicas[2].name)
		time.Sleep(5 * time.Second)
		mustDocker(t, "network", "connect", "--ip", c.replicas[2].ip, c.net, c.replicas[2].name)
		time.Sleep(5 * time.Second)
	})
	for _, tier := range []struct {
		name string
		cts  []container
	}{{"replicas", c.replicas}, {"watchers", c.watchers}, {"gateways", c.gateways}} {
		do("rolling restart of the "+tier.name, func() {
			for _, ct := range tier.cts {
				mustDocker(t, "restart", "-t", "15", ct.name)
				c.waitReady(time.Minute)
				time.Sleep(2 * time.Second)
			}
		})
	}
	if time.Now().After(stop) {
		t.Logf("the faults took longer than the load (%s)", dur)
	}
	run.Wait()
	summary := run.Check(t, c.client())
	lat := run.Latency()
	t.Logf("%s; write-to-event latency p50 %s p99 %s max %s", summary, hist.Percentile(lat, 0.5), hist.Percentile(lat, 0.99), hist.Percentile(lat, 1))
	for _, p := range phases {
		t.Logf("%s: %s, %d client-visible errors, longest time without a completed operation %s", p.name,
			p.to.Sub(p.from).Round(100*time.Millisecond), run.Failures(p.from, p.to), run.LongestStall(p.from, p.to).Round(10*time.Millisecond))
		if kinds := run.FailureKinds(p.from, p.to); kinds != "" {
			t.Logf("    errors: %s", kinds)
		}
	}
}
