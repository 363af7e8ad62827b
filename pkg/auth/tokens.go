package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Tokens issue and verify the tokens etcd's Authenticate returns.
type Tokens interface {
	// Issue returns a token for a user whose password was just checked.
	Issue(v *View, user string, now time.Time) (string, error)
	// Verify returns who a token names, or ErrGRPCInvalidAuthToken.
	Verify(v *View, token string, now time.Time) (Identity, error)
}

// DefaultTokenTTL is etcd's --auth-token-ttl default.
const DefaultTokenTTL = 300 * time.Second

// ParseTokens reads etcd's --auth-token flag: "simple", or
// "jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG[,ttl=DURATION]" (a
// gateway with only the public key verifies tokens but cannot issue them).
// ttl is --auth-token-ttl, the life of a simple token.
func ParseTokens(flag string, ttl time.Duration) (Tokens, error) {
	kind, rest, _ := strings.Cut(flag, ",")
	switch kind {
	case "simple", "":
		if rest != "" {
			return nil, fmt.Errorf("auth: --auth-token=simple takes no options")
		}
		if ttl <= 0 {
			ttl = DefaultTokenTTL
		}
		return simpleTokens{ttl: ttl}, nil
	case "jwt":
		return parseJWT(rest)
	}
	return nil, fmt.Errorf("auth: unknown token type %q (simple or jwt)", kind)
}

// simpleTokens are random-looking strings, as etcd's simple tokens, but
// verifiable on any gateway without shared memory: each carries its user
// and expiry, sealed by an HMAC under the store's token key and the user's
// password hash, so a new password, a deleted user or a re-enabled store
// ends every token issued before. Expiry counts from issue; clients
// re-authenticate on "invalid auth token", as clientv3 does.
type simpleTokens struct{ ttl time.Duration }

func (s simpleTokens) Issue(v *View, user string, now time.Time) (string, error) {
	u := v.st.Users[user]
	if u == nil || len(v.st.TokenKey) == 0 {
		return "", rpctypes.ErrGRPCAuthNotEnabled
	}
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", err
	}
	body := base64.RawURLEncoding.EncodeToString([]byte(user)) + "." +
		strconv.FormatInt(now.Add(s.ttl).Unix(), 36) + "." + base64.RawURLEncoding.EncodeToString(nonce[:])
	return body + "." + base64.RawURLEncoding.EncodeToString(seal(v.st.TokenKey, u.PasswordHash, body)), nil
}

func (s simpleTokens) Verify(v *View, token string, now time.Time) (Identity, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 4 || len(v.st.TokenKey) == 0 {
		return Identity{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	name, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return Identity{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	u := v.st.Users[string(name)]
	mac, err := base64.RawURLEncoding.DecodeString(parts[3])
	if u == nil || err != nil || !hmac.Equal(mac, seal(v.st.TokenKey, u.PasswordHash, strings.Join(parts[:3], "."))) {
		return Identity{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	exp, err := strconv.ParseInt(parts[1], 36, 64)
	if err != nil || now.Unix() >= exp {
		return Identity{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	return Identity{User: u.Name}, nil
}

func seal(key []byte, passwordHash, body string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(passwordHash))
	m.Write([]byte{0})
	m.Write([]byte(body))
	return m.Sum(nil)
}

// NewTokenKey is a fresh simple-token key, for AuthEnable.
func NewTokenKey() ([]byte, error) {
	k := make([]byte, 32)
	_, err := rand.Read(k)
	return k, err
}

// jwtTokens are etcd's JWT tokens: claims username, revision (the auth
// revision at issue: any later change to the store ends the token with
// "revision of auth store is old") and exp.
type jwtTokens struct {
	method     jwt.SigningMethod
	sign       any // nil: verify only
	verify     any
	ttl        time.Duration
	verifyOnly bool
}

func parseJWT(opts string) (Tokens, error) {
	t := &jwtTokens{ttl: 5 * time.Minute}
	var pubFile, privFile, method string
	for _, kv := range strings.Split(opts, ",") {
		if kv == "" {
			continue
		}
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("auth: --auth-token=jwt option %q: want key=value", kv)
		}
		switch k {
		case "pub-key":
			pubFile = val
		case "priv-key":
			privFile = val
		case "sign-method":
			method = val
		case "ttl":
			d, err := time.ParseDuration(val)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("auth: --auth-token=jwt ttl %q: want a positive duration", val)
			}
			t.ttl = d
		default:
			return nil, fmt.Errorf("auth: unknown --auth-token=jwt option %q", k)
		}
	}
	t.method = jwt.GetSigningMethod(method)
	if t.method == nil || method == "none" {
		return nil, fmt.Errorf("auth: --auth-token=jwt needs a sign-method (RS256, PS256, ES256, EdDSA, HS256, ...); got %q", method)
	}
	read := func(f string) ([]byte, error) {
		if f == "" {
			return nil, nil
		}
		return os.ReadFile(f)
	}
	pub, err := read(pubFile)
	if err != nil {
		return nil, fmt.Errorf("auth: jwt pub-key: %w", err)
	}
	priv, err := read(privFile)
	if err != nil {
		return nil, fmt.Errorf("auth: jwt priv-key: %w", err)
	}
	switch t.method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(priv) == 0 {
			return nil, errors.New("auth: jwt HMAC signing needs priv-key (the shared secret)")
		}
		t.sign, t.verify = priv, priv
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
		err = t.keys(pub, priv, anyKey(jwt.ParseRSAPublicKeyFromPEM), signer(jwt.ParseRSAPrivateKeyFromPEM))
	case *jwt.SigningMethodECDSA:
		err = t.keys(pub, priv, anyKey(jwt.ParseECPublicKeyFromPEM), signer(jwt.ParseECPrivateKeyFromPEM))
	case *jwt.SigningMethodEd25519:
		err = t.keys(pub, priv, anyKey(jwt.ParseEdPublicKeyFromPEM), func(b []byte) (crypto.Signer, error) {
			k, err := jwt.ParseEdPrivateKeyFromPEM(b)
			if err != nil {
				return nil, err
			}
			return k.(ed25519.PrivateKey), nil
		})
	default:
		err = fmt.Errorf("unsupported sign-method %s", method)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: --auth-token=jwt: %w", err)
	}
	return t, nil
}

// keys loads a key pair; a public key alone makes a verify-only provider.
func (t *jwtTokens) keys(pub, priv []byte, parsePub func([]byte) (any, error), parsePriv func([]byte) (crypto.Signer, error)) error {
	if len(priv) > 0 {
		k, err := parsePriv(priv)
		if err != nil {
			return fmt.Errorf("priv-key: %w", err)
		}
		t.sign, t.verify = k, k.Public()
	}
	if len(pub) > 0 {
		v, err := parsePub(pub)
		if err != nil {
			return fmt.Errorf("pub-key: %w", err)
		}
		t.verify = v
	}
	if t.verify == nil {
		return errors.New("needs pub-key or priv-key")
	}
	t.verifyOnly = t.sign == nil
	return nil
}

func anyKey[K any](parse func([]byte) (K, error)) func([]byte) (any, error) {
	return func(b []byte) (any, error) { return parse(b) }
}

func signer[K crypto.Signer](parse func([]byte) (K, error)) func([]byte) (crypto.Signer, error) {
	return func(b []byte) (crypto.Signer, error) { return parse(b) }
}

func (t *jwtTokens) Issue(v *View, user string, now time.Time) (string, error) {
	if t.verifyOnly {
		return "", errors.New("auth: this gateway has only the JWT public key and cannot issue tokens")
	}
	return jwt.NewWithClaims(t.method, jwt.MapClaims{
		"username": user, "revision": v.st.Revision, "exp": now.Add(t.ttl).Unix(),
	}).SignedString(t.sign)
}

func (t *jwtTokens) Verify(v *View, token string, now time.Time) (Identity, error) {
	parsed, err := jwt.Parse(token, func(*jwt.Token) (any, error) { return t.verify, nil },
		jwt.WithValidMethods([]string{t.method.Alg()}), jwt.WithExpirationRequired(), jwt.WithTimeFunc(func() time.Time { return now }))
	if err != nil || !parsed.Valid {
		return Identity{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	claims, _ := parsed.Claims.(jwt.MapClaims)
	user, ok1 := claims["username"].(string)
	rev, ok2 := claims["revision"].(float64)
	if !ok1 || !ok2 || user == "" {
		return Identity{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	return Identity{User: user, Revision: max(uint64(rev), 1)}, nil
}
