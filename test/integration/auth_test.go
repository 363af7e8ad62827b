package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/tessera-kv/tessera/services/gateway"
	"github.com/tessera-kv/tessera/test/testcluster"
)

// setupAuth creates root and alice (READ on /a/), writes /a/x, and
// enables auth.
func setupAuth(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx := ctxT(t)
	steps := []func() error{
		func() error { _, err := cli.Put(ctx, "/a/x", "1"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "reader", "/a/", clientv3.GetPrefixRangeEnd("/a/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "alice", "alicepw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "alice", "reader"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}
}

// A role revoked through one gateway is enforced by another gateway on the
// very next request: every change waits out the other gateways' copies.
func TestAuthChangeIsEnforcedByEveryGateway(t *testing.T) {
	c := testcluster.New(t, 1)
	other := c.StartGateway()
	setupAuth(t, c.Client(t))
	root := c.ClientAs(t, "root", "rootpw")
	alice := c.ClientAs(t, "alice", "alicepw", other...)
	for round := 0; round < 3; round++ {
		if _, err := alice.Get(ctxT(t), "/a/x"); err != nil {
			t.Fatalf("round %d: alice reads with the role: %v", round, err)
		}
		if _, err := root.UserRevokeRole(ctxT(t), "alice", "reader"); err != nil {
			t.Fatal(err)
		}
		if _, err := alice.Get(ctxT(t), "/a/x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Fatalf("round %d: alice's read on the other gateway right after the revoke: %v, want permission denied", round, err)
		}
		if _, err := root.UserGrantRole(ctxT(t), "alice", "reader"); err != nil {
			t.Fatal(err)
		}
	}
	// Disabling auth through one gateway opens the other at once too.
	if _, err := root.AuthDisable(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	anon, err := clientv3.New(clientv3.Config{Endpoints: other, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Put(ctxT(t), "/b", "1"); err != nil {
		t.Fatalf("anonymous put right after auth disable: %v", err)
	}
}

// rawKV is a KV client that sends the token it is given, and never
// re-authenticates on its own (as clientv3 would).
func rawKV(t *testing.T, c *testcluster.Cluster) (pb.KVClient, pb.AuthClient) {
	cli := c.Client(t)
	return pb.NewKVClient(cli.ActiveConnection()), pb.NewAuthClient(cli.ActiveConnection())
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, tok)
}

// A simple token ends after --auth-token-ttl.
func TestAuthTokenExpires(t *testing.T) {
	c := testcluster.New(t, 1, testcluster.Options{Auth: gateway.AuthConfig{TokenTTL: 2 * time.Second}})
	setupAuth(t, c.Client(t))
	kv, ac := rawKV(t, c)
	r, err := ac.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "alice", Password: "alicepw"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Range(withToken(ctxT(t), r.Token), &pb.RangeRequest{Key: []byte("/a/x")}); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	if _, err := kv.Range(withToken(ctxT(t), r.Token+"x"), &pb.RangeRequest{Key: []byte("/a/x")}); rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCInvalidAuthToken) {
		t.Fatalf("tampered token: %v", err)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := kv.Range(withToken(ctxT(t), r.Token), &pb.RangeRequest{Key: []byte("/a/x")}); rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCInvalidAuthToken) {
		t.Fatalf("expired token: %v, want invalid auth token", err)
	}
	// clientv3 gets a new token by itself.
	if _, err := c.ClientAs(t, "alice", "alicepw").Get(ctxT(t), "/a/x"); err != nil {
		t.Fatal(err)
	}
}

// JWTs as etcd's: any change to the auth store makes earlier tokens old,
// and a gateway with only the public key verifies tokens another issued.
func TestAuthJWT(t *testing.T) {
	dir := t.TempDir()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalECPrivateKey(k)
	pubDER, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	priv, pub := filepath.Join(dir, "jwt.key"), filepath.Join(dir, "jwt.pub")
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600)
	c := testcluster.New(t, 1, testcluster.Options{Auth: gateway.AuthConfig{Token: "jwt,priv-key=" + priv + ",sign-method=ES256,ttl=5m"}})
	setupAuth(t, c.Client(t))
	kv, ac := rawKV(t, c)
	r, err := ac.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "alice", Password: "alicepw"})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(r.Token, "."); n != 2 {
		t.Fatalf("token %q is not a JWT", r.Token)
	}
	if _, err := kv.Range(withToken(ctxT(t), r.Token), &pb.RangeRequest{Key: []byte("/a/x")}); err != nil {
		t.Fatalf("JWT: %v", err)
	}
	if _, err := c.ClientAs(t, "root", "rootpw").RoleAdd(ctxT(t), "another"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Range(withToken(ctxT(t), r.Token), &pb.RangeRequest{Key: []byte("/a/x")}); rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCAuthOldRevision) {
		t.Fatalf("JWT from before an auth change: %v, want old revision", err)
	}
	if _, err := c.ClientAs(t, "alice", "alicepw").Get(ctxT(t), "/a/x"); err != nil {
		t.Fatalf("clientv3 re-authenticates: %v", err)
	}
}

// REST clients pass the token in the Authorization header, as with etcd's
// gateway; Tessera's admin API is root's once auth is on.
func TestAuthREST(t *testing.T) {
	c := testcluster.New(t, 1)
	setupAuth(t, c.Client(t))
	base := c.Endpoints()[0]
	post := func(path, token, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		if body == "" {
			req.Method = http.MethodGet
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		out := map[string]any{}
		json.Unmarshal(b, &out)
		return resp.StatusCode, out
	}
	token := func(user, pw string) string {
		code, out := post("/v3/auth/authenticate", "", `{"name":"`+user+`","password":"`+pw+`"}`)
		tok, _ := out["token"].(string)
		if code != 200 || tok == "" {
			t.Fatalf("authenticate %s: %d %v", user, code, out)
		}
		return tok
	}
	alice, root := token("alice", "alicepw"), token("root", "rootpw")
	range64 := `{"key":"L2EveA=="}` // "/a/x"
	if code, out := post("/v3/kv/range", alice, range64); code != 200 || out["count"] != "1" {
		t.Errorf("alice's range: %d %v", code, out)
	}
	if code, out := post("/v3/kv/range", "", range64); code == 200 || !strings.Contains(out["message"].(string), "user name is empty") {
		t.Errorf("anonymous range: %d %v", code, out)
	}
	if code, out := post("/v3/kv/put", alice, `{"key":"L2EveA==","value":"Mg=="}`); code == 200 || !strings.Contains(out["message"].(string), "permission denied") {
		t.Errorf("alice's put: %d %v", code, out)
	}
	if code, out := post("/tessera/v1/shardmap", "", ""); code == 200 || !strings.Contains(out["message"].(string), "user name is empty") {
		t.Errorf("anonymous shard map: %d %v", code, out)
	}
	if code, out := post("/tessera/v1/shardmap", alice, ""); code == 200 || !strings.Contains(out["message"].(string), "permission denied") {
		t.Errorf("alice's shard map: %d %v", code, out)
	}
	if code, out := post("/tessera/v1/shardmap", root, ""); code != 200 || out["shardMap"] == nil {
		t.Errorf("root's shard map: %d %v", code, out)
	}
}
