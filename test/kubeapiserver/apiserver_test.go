package kubeapiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

var tesseraBin, apiserverBin string

func TestMain(m *testing.M) { os.Exit(run(m)) }

// run builds tessera (from the workspace) and kube-apiserver (from this
// module's pinned k8s.io/kubernetes) once.
func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tessera-kube-apiserver-")
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
	tesseraBin, apiserverBin = filepath.Join(dir, "tessera"), filepath.Join(dir, "kube-apiserver")
	builds := []struct {
		dir, out, pkg, gowork string
	}{
		{root, tesseraBin, "./cmd/tessera", filepath.Join(root, "go.work")},
		{".", apiserverBin, "k8s.io/kubernetes/cmd/kube-apiserver", "off"},
	}
	for _, b := range builds {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Dir = b.dir
		cmd.Env = append(os.Environ(), "GOWORK="+b.gowork)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

var handedOut = map[string]bool{}

func freePort(t *testing.T) string {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut[addr] {
			handedOut[addr] = true
			return addr
		}
	}
}

// proc is a child process that stops with the test.
type proc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			out := p.log.Bytes()
			if len(out) > 32<<10 {
				out = out[len(out)-32<<10:]
			}
			t.Logf("---- %s log (tail) ----\n%s", name, out)
		}
	})
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// apiserver is kube-apiserver on Tessera with a static admin token.
type apiserver struct {
	args []string
	url  string
	p    *proc
}

const adminToken = "tessera-test-admin-token"

func newAPIServer(t *testing.T, etcd string, etcdTLS ...string) *apiserver {
	t.Helper()
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	files := map[string][]byte{
		"sa.key":     keyPEM,
		"sa.pub":     pubPEM,
		"tokens.csv": []byte(adminToken + ",admin,admin,system:masters\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	addr := freePort(t)
	_, port, _ := net.SplitHostPort(addr)
	a := &apiserver{url: "https://" + addr, args: []string{
		"--etcd-servers=" + etcd,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + port,
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=AlwaysAllow",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		// A configuration value only: nothing is sent to this range.
		"--service-cluster-ip-range=10.96.0.0/24",
		"--event-ttl=5s",
		// kube-apiserver compacts Tessera itself (a compact_rev_key CAS, then
		// Compact) every 5 s, at the revision it saw one period before.
		"--etcd-compaction-interval=5s",
		"--enable-priority-and-fairness=false",
		// The endpoints reconciler refuses a loopback advertise address;
		// the tests only ever reach this server on loopback.
		"--endpoint-reconciler-type=none",
	}}
	a.args = append(a.args, etcdTLS...)
	a.start(t)
	return a
}

func (a *apiserver) start(t *testing.T) {
	t.Helper()
	a.p = start(t, "kube-apiserver", apiserverBin, a.args...)
	cs := a.client(t)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err == nil && string(body) == "ok" {
			return
		}
		select {
		case <-a.p.done:
			t.Fatalf("kube-apiserver exited: %v", a.p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready: %v %s", err, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// config is a client configuration of the server as its admin.
func (a *apiserver) config() *rest.Config {
	return &rest.Config{Host: a.url, BearerToken: adminToken,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 500, Burst: 1000, Timeout: 30 * time.Second}
}

func (a *apiserver) client(t *testing.T) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(a.config())
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestKubeAPIServer runs a real kube-apiserver on "tessera dev" and drives
// it through its REST API with client-go: namespaces, paginated lists,
// update conflicts, watches from a resourceVersion, events that expire by
// TTL (leases), compaction then 410 Gone, and a restart with data intact.
// kube-apiserver reaches Tessera over mutual TLS (tessera dev --tls, with
// the client certificate it made), as it reaches etcd in production, with
// etcd's auth on: the certificate's common name (root) is its user.
func TestKubeAPIServer(t *testing.T) {
	dataDir := t.TempDir()
	client, raft, api, watcher := freePort(t), freePort(t), freePort(t), freePort(t)
	start(t, "tessera", tesseraBin, "dev", "--tls", "--data-dir", dataDir, "--listen-client-urls", "http://"+client,
		"--raft-address", raft, "--api-address", api, "--watcher-address", watcher,
		// make test-sharded runs it again on the Kubernetes pre-split.
		"--initial-split-keys", os.Getenv("TESSERA_SPLIT_KEYS"))
	certs := filepath.Join(dataDir, "certs")
	waitForFile(t, filepath.Join(certs, "client.key"))
	enableAuth(t, "https://"+client, certs)
	a := newAPIServer(t, "https://"+client, "--etcd-cafile="+filepath.Join(certs, "ca.crt"),
		"--etcd-certfile="+filepath.Join(certs, "client.crt"), "--etcd-keyfile="+filepath.Join(certs, "client.key"))
	cs := a.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ns := "tessera-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}

	const n = 250
	for i := 0; i < n; i++ {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%03d", i)}, Data: map[string]string{"i": fmt.Sprint(i)}}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create configmap %d: %v", i, err)
		}
	}

	t.Run("paginated list", func(t *testing.T) {
		seen, pages, cont := 0, 0, ""
		var rv string
		for {
			l, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{Limit: 100, Continue: cont})
			if err != nil {
				t.Fatalf("list page %d: %v", pages, err)
			}
			if rv == "" {
				rv = l.ResourceVersion
			} else if l.ResourceVersion != rv {
				t.Fatalf("page %d at resourceVersion %s, first page at %s", pages, l.ResourceVersion, rv)
			}
			seen += len(l.Items)
			pages++
			if cont = l.Continue; cont == "" {
				break
			}
		}
		if seen < n || pages < 3 {
			t.Fatalf("%d configmaps in %d pages", seen, pages)
		}
	})

	t.Run("update conflict", func(t *testing.T) {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm-000", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stale := cm.DeepCopy()
		cm.Data["v"] = "1"
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		stale.Data["v"] = "2"
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			t.Fatalf("update with a stale resourceVersion: %v, want 409 Conflict", err)
		}
	})

	t.Run("watch from a resourceVersion", func(t *testing.T) {
		l, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "watched"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: l.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ev := <-w.ResultChan():
				if cm, ok := ev.Object.(*corev1.ConfigMap); ok && ev.Type == watch.Added && cm.Name == "watched" {
					return
				}
			case <-timeout:
				t.Fatal("no ADDED event for a configmap created after the watch's resourceVersion")
			}
		}
	})

	t.Run("events expire by TTL", func(t *testing.T) {
		ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "ttl-event"}, InvolvedObject: corev1.ObjectReference{Kind: "ConfigMap", Namespace: ns, Name: "cm-001"},
			Reason: "Test", Message: "expires by lease", Type: corev1.EventTypeNormal}
		if _, err := cs.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			_, err := cs.CoreV1().Events(ns).Get(ctx, "ttl-event", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("event with a 5s TTL still there after 60s (%v)", err)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("compaction then 410 Gone", func(t *testing.T) {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm-002", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		old := cm.ResourceVersion
		cm.Data["v"] = "after"
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The watch cache serves exact lists from its snapshots until it
		// learns of the compaction (it polls every 15 s).
		deadline := time.Now().Add(90 * time.Second)
		for {
			_, err = cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{ResourceVersion: old, ResourceVersionMatch: metav1.ResourceVersionMatchExact, Limit: 10})
			if apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("list at resourceVersion %s after compactions: %v, want 410 Gone", old, err)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("restart keeps data", func(t *testing.T) {
		a.p.stop()
		a.start(t)
		cs := a.client(t)
		l, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) < n {
			t.Fatalf("%d configmaps after the restart, want at least %d", len(l.Items), n)
		}
	})
}

// waitForFile waits until path exists (a process writes it at start).
// enableAuth turns etcd's auth on, with root (the dev client
// certificate's common name) as the only user, over mutual TLS.
func enableAuth(t *testing.T, endpoint, certs string) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(certs, "client.crt"), filepath.Join(certs, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second,
		TLS: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	password := make([]byte, 16)
	rand.Read(password)
	if _, err := cli.UserAdd(ctx, "root", fmt.Sprintf("%x", password)); err != nil {
		t.Fatalf("user add root: %v", err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatalf("grant root: %v", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatalf("auth enable: %v", err)
	}
	if _, err := cli.Put(ctx, "/tessera-test/auth", "on"); err != nil {
		t.Fatalf("put as the certificate's user with auth on: %v", err)
	}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not written within 30 s", path)
		}
	}
}
