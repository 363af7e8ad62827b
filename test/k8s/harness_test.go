package k8s

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"
	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	"k8s.io/utils/clock"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

const storedPrefix = "test!" // what the test transformer prepends to stored values

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

// tesseraBin is the tessera binary built from the workspace for this run.
var tesseraBin string

// run builds tessera from the workspace once; every test then starts its
// own "tessera dev", as Kubernetes' tests start a fresh etcd per test.
func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tessera-k8s-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tesseraBin = filepath.Join(dir, "tessera")
	build := exec.Command("go", "build", "-o", tesseraBin, "./cmd/tessera")
	build.Dir = root
	build.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build tessera: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// startTessera runs "tessera dev" on loopback ports in a temp dir until the
// test ends, and returns its client URL.
func startTessera(t *testing.T) string {
	t.Helper()
	ports := make([]string, 4)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	ep := "http://" + ports[0]
	var logBuf bytes.Buffer
	cmd := exec.Command(tesseraBin, "dev", "--data-dir", filepath.Join(t.TempDir(), "data"), "--listen-client-urls", ep,
		"--raft-address", ports[1], "--api-address", ports[2], "--watcher-address", ports[3],
		// The storage tests wait for progress notifications (Kubernetes'
		// etcd test server uses the same period).
		"--watch-progress-notify-interval", "1s",
		// make test-sharded runs the suite again on a store cut into
		// shards inside the keys the tests use.
		"--initial-split-keys", os.Getenv("TESSERA_SPLIT_KEYS"))
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("---- tessera dev log ----\n%s", logBuf.String())
		}
	})
	if err := waitReady(ep); err != nil {
		t.Fatalf("tessera dev not ready: %v", err)
	}
	return ep
}

var handedOut = map[string]bool{} // ports returned by freePort; tests run one at a time

// freePort returns a loopback port free just now that it never returned
// before (a closed listener's port may be offered again at once).
func freePort() (string, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut[addr] {
			handedOut[addr] = true
			return addr, nil
		}
	}
}

func waitReady(ep string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Get(ctx, "ready-probe")
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newClient returns a client whose KV and Kubernetes interfaces record
// calls, as Kubernetes' own etcd test server does.
func newClient(t testing.TB, endpoint string) *kubernetes.Client {
	t.Helper()
	client, err := kubernetes.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	rec := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, rec)
	client.Kubernetes = rec
	return client
}

// store is an etcd3 store from k8s.io/apiserver on a client of a fresh
// Tessera, built as Kubernetes' etcd3 tests build it.
type store struct {
	storage.Interface
	codec       runtime.Codec
	transformer *swappable
	client      *kubernetes.Client
}

func newStore(t *testing.T) (context.Context, *store) {
	t.Helper()
	client := newClient(t, startTessera(t))
	codec := apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)
	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	tr := &swappable{t: storagetesting.NewPrefixTransformer([]byte(storedPrefix), false)}
	leases := etcd3.NewDefaultLeaseManagerConfig()
	leases.ReuseDurationSeconds = 1 // as Kubernetes' tests: waits stay under the test timeout
	s, err := etcd3.New(client, compactor, codec, func() runtime.Object { return &example.Pod{} },
		func() runtime.Object { return &example.PodList{} }, "", "/pods/", schema.GroupResource{Resource: "pods"},
		tr, leases, etcd3.NewDefaultDecoder(codec, versioner), versioner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return context.Background(), &store{Interface: s, codec: codec, transformer: tr, client: client}
}

// UpdatePrefixTransformer implements storagetesting.InterfaceWithPrefixTransformer.
func (s *store) UpdatePrefixTransformer(modifier storagetesting.PrefixTransformerModifier) func() {
	orig := s.transformer.get().(*storagetesting.PrefixTransformer)
	cp := *orig
	s.transformer.set(modifier(&cp))
	return func() { s.transformer.set(orig) }
}

// swappable is a value.Transformer whose implementation a test can swap.
type swappable struct {
	mu sync.RWMutex
	t  value.Transformer
}

func (s *swappable) get() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.t
}

func (s *swappable) set(t value.Transformer) {
	s.mu.Lock()
	s.t = t
	s.mu.Unlock()
}

func (s *swappable) TransformFromStorage(ctx context.Context, data []byte, dc value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dc)
}

func (s *swappable) TransformToStorage(ctx context.Context, data []byte, dc value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dc)
}

// checkStorageInvariants is Kubernetes' check of what a create or update
// stored: a decodable object without resource version or self link.
func (s *store) checkStorageInvariants() storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		resp, err := s.client.KV.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if len(resp.Kvs) == 0 {
			t.Fatalf("expected a value at %s", key)
		}
		obj, err := runtime.Decode(s.codec, resp.Kvs[0].Value[len(storedPrefix):])
		if err != nil {
			t.Fatalf("decode %s: %v", key, err)
		}
		if p := obj.(*example.Pod); p.ResourceVersion != "" || p.SelfLink != "" {
			t.Errorf("stored object has resource version %q, self link %q", p.ResourceVersion, p.SelfLink)
		}
	}
}

// compaction compacts Tessera as kube-apiserver does (the compact_rev_key
// transaction, then Compact).
func (s *store) compaction() storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		// Start from compact_rev_key's current version: a test may compact
		// more than once.
		var cur int64
		if resp, err := s.client.KV.Get(ctx, "compact_rev_key"); err == nil && len(resp.Kvs) == 1 {
			cur = resp.Kvs[0].Version
		}
		_, _, compacted, err := etcd3.Compact(ctx, s.client.Client, cur, int64(rv))
		if err == nil && compacted != int64(rv) {
			err = fmt.Errorf("compacted at %d, not %d", compacted, rv)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// increaseRV writes an unrelated key and returns its revision.
func (s *store) increaseRV() storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) int64 {
		resp, err := s.client.KV.Put(ctx, "increaseRV", "ok")
		if err != nil {
			t.Fatalf("put increaseRV: %v", err)
		}
		return resp.Header.Revision
	}
}
