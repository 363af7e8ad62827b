// Package etcdcompat compares Tessera's answers with a real etcd's: the same
// requests go to an embedded etcd (go.etcd.io/etcd/server/v3/embed) and to a
// Tessera cluster, and every response is compared.
package etcdcompat

import (
	"errors"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// startEtcd runs a one-member etcd on loopback for the test.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cu, _ := url.Parse("http://" + testcluster.FreePort(t))
	pu, _ := url.Parse("http://" + testcluster.FreePort(t))
	cfg := embed.NewConfig()
	cfg.Name = "compat"
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.LogLevel = "error"
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	zc.DisableStacktrace = true
	lg, err := zc.Build()
	if err != nil {
		t.Fatal(err)
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zc.Level.SetLevel(zap.FatalLevel) // etcd reports its own listeners closing
		e.Close()
	})
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatal(err)
	case <-time.After(60 * time.Second):
		t.Fatal(errors.New("etcd took too long to start"))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cu.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
