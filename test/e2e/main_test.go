// Package e2e runs the real tessera binary (and etcdctl) as separate
// processes on loopback ports and checks what clients observe: durability
// across kill -9, leader failover, etcdctl and the REST gateway.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tessera-kv/tessera/test/testcluster"
	"go.uber.org/zap"
)

// Paths of the binaries built once by TestMain.
var (
	tesseraBin string
	etcdctlBin string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tessera-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The test runs in <root>/test/e2e: the workspace root is ../.., the
	// test module (with its "tool go.etcd.io/etcd/etcdctl/v3") is "..".
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	tesseraBin = filepath.Join(dir, "tessera")
	etcdctlBin = filepath.Join(dir, "etcdctl")
	builds := []struct{ dir, out, pkg string }{
		{root, tesseraBin, "github.com/tessera-kv/tessera/cmd/tessera"},
		{filepath.Join(root, "test"), etcdctlBin, "go.etcd.io/etcd/etcdctl/v3"},
	}
	for _, b := range builds {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.out, b.pkg)
		cmd.Dir = b.dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build %s (in %s): %v\n%s", b.pkg, b.dir, err, out)
			return 1
		}
	}
	return m.Run()
}

// freePort returns a loopback address whose port was free just now.
func freePort(t testing.TB) string { return testcluster.FreePort(t) }

// proc is a process started by a test. Every proc is stopped at cleanup;
// its combined output goes to a log file that is printed if the test fails.
type proc struct {
	t       testing.TB
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, valid after done
}

var logSeq struct {
	sync.Mutex
	n int
}

// startProc starts bin with args. name labels the log.
func startProc(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	logSeq.Lock()
	logSeq.n++
	n := logSeq.n
	logSeq.Unlock()
	logPath := filepath.Join(t.TempDir(), fmt.Sprintf("%02d-%s.log", n, name))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			p.dumpLog()
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits; after 15 s it kills the process.
func (p *proc) Stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.t.Logf("%s (pid %d) did not stop within 15s of SIGTERM; killing", p.name, p.cmd.Process.Pid)
		p.Kill()
	}
}

// Kill sends SIGKILL (kill -9) and waits for the exit.
func (p *proc) Kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) dumpLog() {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		p.t.Logf("%s log: %v", p.name, err)
		return
	}
	const max = 64 << 10
	if len(b) > max {
		b = append([]byte("...(truncated)...\n"), b[len(b)-max:]...)
	}
	p.t.Logf("---- %s (pid %d, exit: %v) log %s ----\n%s", p.name, p.cmd.Process.Pid, p.exitErr(), p.logPath, b)
}

func (p *proc) exitErr() string {
	if !p.exited() {
		return "running"
	}
	if p.err == nil {
		return "0"
	}
	return p.err.Error()
}

// newClient returns a clientv3 client closed at cleanup.
func newClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// waitReady polls a linearizable Get through endpoint until it succeeds. It
// fails fast if any of procs exits meanwhile.
func waitReady(t testing.TB, endpoint string, timeout time.Duration, procs ...*proc) {
	t.Helper()
	cli := newClient(t, endpoint)
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("%s exited while waiting for readiness: %s", p.name, p.exitErr())
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "e2e-ready-probe")
		cancel()
		if err == nil {
			return
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s not ready after %v: %v", endpoint, timeout, lastErr)
}

// devNode is a "tessera dev" process with its addresses.
type devNode struct {
	dataDir, client, raft, api, watcher string
	extraArgs                           []string
	p                                   *proc
}

func newDevNode(t testing.TB) *devNode {
	return &devNode{dataDir: filepath.Join(t.TempDir(), "data"),
		client: freePort(t), raft: freePort(t), api: freePort(t), watcher: freePort(t)}
}

func (d *devNode) endpoint() string { return "http://" + d.client }

// start (re)starts the process on the same data dir and ports and waits
// until it serves.
func (d *devNode) start(t testing.TB) {
	t.Helper()
	args := append([]string{"dev", "--data-dir", d.dataDir, "--listen-client-urls", d.endpoint(),
		"--raft-address", d.raft, "--api-address", d.api, "--watcher-address", d.watcher}, d.extraArgs...)
	d.p = startProc(t, "dev", tesseraBin, args...)
	waitReady(t, d.endpoint(), 30*time.Second, d.p)
}

// waitOutput waits until the process's log contains want.
func (p *proc) waitOutput(want string, within time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			p.t.Fatal(err)
		}
		if strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: output %q does not contain %q after %v", p.name, b, want, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runCtl runs etcdctl against endpoint with stdin, returning stdout, stderr
// and the exit code.
func runCtl(t testing.TB, endpoint, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, etcdctlBin, append([]string{"--endpoints=" + endpoint, "--dial-timeout=5s", "--command-timeout=10s"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("etcdctl %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}
