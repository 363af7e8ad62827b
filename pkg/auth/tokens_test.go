package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"

	"github.com/tessera-kv/tessera/proto/metapb"
)

func storeWith(t *testing.T, users ...string) *metapb.AuthState {
	t.Helper()
	st := &metapb.AuthState{Enabled: true, Revision: 3, TokenKey: []byte("0123456789abcdef0123456789abcdef"), Users: map[string]*metapb.AuthUser{}}
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		st.Users[u] = &metapb.AuthUser{Name: u, PasswordHash: base64.StdEncoding.EncodeToString(h)}
	}
	return st
}

func TestSimpleTokens(t *testing.T) {
	tokens, err := ParseTokens("simple", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	st := storeWith(t, "alice", "bob")
	v := NewView(st)
	now := time.Unix(1_000_000, 0)
	tok, err := tokens.Issue(v, "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := tokens.Verify(v, tok, now.Add(59*time.Second)); err != nil || id.User != "alice" {
		t.Fatalf("fresh token: %v %v", id, err)
	}
	invalid := func(what string, v *View, tok string, at time.Time) {
		t.Helper()
		if _, err := tokens.Verify(v, tok, at); err != rpctypes.ErrGRPCInvalidAuthToken {
			t.Errorf("%s: %v, want invalid auth token", what, err)
		}
	}
	invalid("expired", v, tok, now.Add(time.Minute))
	parts := strings.Split(tok, ".")
	parts[0] = base64.RawURLEncoding.EncodeToString([]byte("bob")) // claim to be bob
	invalid("renamed", v, strings.Join(parts, "."), now)
	invalid("garbage", v, "not-a-token", now)
	// A new password, a deleted user and a new key (auth re-enabled) each
	// end the token.
	st2 := storeWith(t, "alice", "bob")
	st2.TokenKey = st.TokenKey
	invalid("password changed", NewView(st2), tok, now)
	delete(st2.Users, "alice")
	invalid("user deleted", NewView(st2), tok, now)
	st3 := storeWith(t, "alice")
	st3.Users = st.Users
	st3.TokenKey = []byte("another key, another enable.....")
	invalid("re-enabled", NewView(st3), tok, now)
}

func TestJWTTokens(t *testing.T) {
	dir := t.TempDir()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privDER, _ := x509.MarshalECPrivateKey(k)
	pubDER, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	priv, pub := filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: privDER}), 0o600)
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600)

	signer, err := ParseTokens("jwt,priv-key="+priv+",pub-key="+pub+",sign-method=ES256,ttl=1m", 0)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := ParseTokens("jwt,pub-key="+pub+",sign-method=ES256", 0)
	if err != nil {
		t.Fatal(err)
	}
	st := storeWith(t, "alice")
	v := NewView(st)
	now := time.Now()
	tok, err := signer.Issue(v, "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	id, err := verifier.Verify(v, tok, now)
	if err != nil || id.User != "alice" || id.Revision != 3 {
		t.Fatalf("verify-only gateway: %+v %v", id, err)
	}
	if _, err := verifier.Issue(v, "alice", now); err == nil {
		t.Error("a verify-only gateway issued a token")
	}
	if _, err := signer.Verify(v, tok, now.Add(2*time.Minute)); err != rpctypes.ErrGRPCInvalidAuthToken {
		t.Errorf("expired JWT: %v", err)
	}
	// A later change to the store makes the token old, as in etcd.
	st.Revision = 4
	if err := NewView(st).Check(id, 0, spanOf("k")); err != rpctypes.ErrGRPCAuthOldRevision {
		t.Errorf("JWT after an auth change: %v, want old revision", err)
	}
	for _, bad := range []string{"jwt", "jwt,sign-method=ES256", "jwt,pub-key=" + pub + ",sign-method=none", "jwt,sign-method=ES256,bogus=1", "magic"} {
		if _, err := ParseTokens(bad, 0); err == nil {
			t.Errorf("--auth-token=%s accepted", bad)
		}
	}
}

// Every key family etcd supports signs and verifies.
func TestJWTKeyFamilies(t *testing.T) {
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	rpriv := write("rsa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk))
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	eder, _ := x509.MarshalPKCS8PrivateKey(ek)
	epriv := write("ed.key", "PRIVATE KEY", eder)
	secret := filepath.Join(dir, "hmac")
	os.WriteFile(secret, []byte("a shared secret of some length"), 0o600)
	st := storeWith(t, "alice")
	v := NewView(st)
	for _, flag := range []string{
		"jwt,priv-key=" + rpriv + ",sign-method=RS256",
		"jwt,priv-key=" + rpriv + ",sign-method=PS384",
		"jwt,priv-key=" + epriv + ",sign-method=EdDSA",
		"jwt,priv-key=" + secret + ",sign-method=HS256",
	} {
		tokens, err := ParseTokens(flag, 0)
		if err != nil {
			t.Fatalf("%s: %v", flag, err)
		}
		tok, err := tokens.Issue(v, "alice", time.Now())
		if err != nil {
			t.Fatalf("%s: issue: %v", flag, err)
		}
		if id, err := tokens.Verify(v, tok, time.Now()); err != nil || id.User != "alice" {
			t.Errorf("%s: verify: %+v %v", flag, id, err)
		}
	}
}
