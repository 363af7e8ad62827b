package auth

import (
	"encoding/base64"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"

	"github.com/tessera-kv/tessera/pkg/keyspan"
	"github.com/tessera-kv/tessera/proto/metapb"
)

// Identity is who makes a request: a user name, from a token or a client
// certificate, and for a JWT the auth revision it was issued at (0: none,
// the token is checked against the current store).
type Identity struct {
	User     string
	Revision uint64
}

// View answers permission questions about one auth store revision. It is
// immutable and safe for concurrent use; build one per revision.
type View struct {
	st    *metapb.AuthState
	users map[string]*grants
}

// grants are a user's permissions, merged over its roles.
type grants struct {
	root        bool
	read, write *keyspan.Set
}

// NewView indexes st, which the caller must not change afterwards.
func NewView(st *metapb.AuthState) *View {
	if st == nil {
		st = &metapb.AuthState{}
	}
	v := &View{st: st, users: make(map[string]*grants, len(st.Users))}
	for name, u := range st.Users {
		g := &grants{}
		var read, write []keyspan.Span
		for _, r := range u.Roles {
			if r == RootRole {
				g.root = true
			}
			role := st.Roles[r]
			if role == nil {
				continue
			}
			for _, p := range role.Permissions {
				s := keyspan.FromRequest(p.Key, p.RangeEnd)
				switch authpb.Permission_Type(p.Type) {
				case authpb.READ:
					read = append(read, s)
				case authpb.WRITE:
					write = append(write, s)
				case authpb.READWRITE:
					read, write = append(read, s), append(write, s)
				}
			}
		}
		g.read, g.write = keyspan.NewSet(read...), keyspan.NewSet(write...)
		v.users[name] = g
	}
	return v
}

// Enabled reports whether auth is on.
func (v *View) Enabled() bool { return v.st.Enabled }

// MaxStaleness bounds how long a gateway may check requests against a copy
// of the auth store after it asked for it, and so how long every change to
// the store waits before it returns. The same on every gateway.
const MaxStaleness = time.Second

// Generation counts the store's changes (GetAuthState's known_generation).
func (v *View) Generation() uint64 { return v.st.Generation }

// Revision is the store's auth revision.
func (v *View) Revision() uint64 { return v.st.Revision }

// State is the store the view was built from (read-only).
func (v *View) State() *metapb.AuthState { return v.st }

// who checks what every permission check starts with, as etcd does: no
// user, a token from an older store, an unknown user.
func (v *View) who(id Identity) (*grants, error) {
	if id.User == "" {
		return nil, rpctypes.ErrGRPCUserEmpty
	}
	if id.Revision != 0 && id.Revision < v.st.Revision {
		return nil, rpctypes.ErrGRPCAuthOldRevision
	}
	g := v.users[id.User]
	if g == nil {
		return nil, rpctypes.ErrGRPCPermissionDenied
	}
	return g, nil
}

// Check allows a read or a write of every key of s (typ is authpb.READ or
// authpb.WRITE). With auth off everything is allowed.
func (v *View) Check(id Identity, typ authpb.Permission_Type, s keyspan.Span) error {
	if !v.st.Enabled {
		return nil
	}
	g, err := v.who(id)
	if err != nil {
		return err
	}
	if g.root {
		return nil
	}
	set := g.read
	if typ == authpb.WRITE {
		set = g.write
	}
	if !set.Covers(s) {
		return rpctypes.ErrGRPCPermissionDenied
	}
	return nil
}

// CheckAdmin allows what only the root role may do: auth and membership
// changes, compaction, maintenance.
func (v *View) CheckAdmin(id Identity) error {
	if !v.st.Enabled {
		return nil
	}
	// etcd's admin check: no auth revision check, and an unknown user is
	// "not found" rather than "denied".
	if id.User == "" {
		return rpctypes.ErrGRPCUserEmpty
	}
	g := v.users[id.User]
	if g == nil {
		return rpctypes.ErrGRPCUserNotFound
	}
	if !g.root {
		return rpctypes.ErrGRPCPermissionDenied
	}
	return nil
}

// IsAdmin reports whether CheckAdmin allows id.
func (v *View) IsAdmin(id Identity) bool { return v.CheckAdmin(id) == nil }

// HasRole reports whether the user has the role (etcd lets a user read
// its own roles without being root).
func (v *View) HasRole(user, role string) bool {
	u := v.st.Users[user]
	return u != nil && slices.Contains(u.Roles, role)
}

// CheckAuthenticated allows any request that names a user (etcd's
// requireAuthInfo: Status, alarm list, member list).
func (v *View) CheckAuthenticated(id Identity) error {
	if v.st.Enabled && id.User == "" {
		return rpctypes.ErrGRPCUserEmpty
	}
	return nil
}

// CheckPassword verifies a user's password against its bcrypt hash
// (etcd's Authenticate). A user without a password cannot log in with one.
func (v *View) CheckPassword(name, password string) error {
	if !v.st.Enabled {
		return rpctypes.ErrGRPCAuthNotEnabled
	}
	u := v.st.Users[name]
	if u == nil || u.NoPassword || u.PasswordHash == "" {
		return rpctypes.ErrGRPCAuthFailed
	}
	hash, err := base64.StdEncoding.DecodeString(u.PasswordHash)
	if err != nil || bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil {
		return rpctypes.ErrGRPCAuthFailed
	}
	return nil
}
