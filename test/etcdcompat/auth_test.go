package etcdcompat

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"

	"github.com/tessera-kv/tessera/test/testcluster"
)

// session is one store under test with clients for each user.
type session struct {
	t         *testing.T
	endpoints []string
	anon      *clientv3.Client
	users     map[string]*clientv3.Client
	leases    map[string]clientv3.LeaseID
}

// as is a client that authenticates as user:password (made on first use,
// so after auth is enabled); a refused login is the answer "login: ...".
func (s *session) as(user, password string) (*clientv3.Client, string) {
	k := user + ":" + password
	if c, ok := s.users[k]; ok {
		return c, ""
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: s.endpoints, DialTimeout: 5 * time.Second, Username: user, Password: password, Logger: zap.NewNop()})
	if err != nil {
		return nil, "login: " + errText(err)
	}
	s.t.Cleanup(func() { c.Close() })
	s.users[k] = c
	return c, ""
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + rpctypes.ErrorDesc(err)
}

// The script's users.
const (
	root  = "root:rootpw"
	alice = "alice:alicepw" // reads /app/
	bob   = "bob:bobpw"     // writes /app/w/ (and reads it), writes /solo
)

type authStep struct {
	name string
	as   string // "": no credentials
	do   func(ctx context.Context, c *clientv3.Client, s *session) string
}

func kvs(r *clientv3.GetResponse, err error) string {
	if err != nil {
		return errText(err)
	}
	var b strings.Builder
	for _, kv := range r.Kvs {
		fmt.Fprintf(&b, "%s=%s ", kv.Key, kv.Value)
	}
	return "ok " + b.String()
}

func errOf[T any](_ T, err error) string { return errText(err) }

// TestAuthMatchesEtcd runs one script of auth calls, and of KV, watch,
// lease and maintenance calls made as users with different permissions,
// against etcd and Tessera, and compares every answer.
func TestAuthMatchesEtcd(t *testing.T) {
	c := testcluster.New(t, 1)
	etcd := startEtcd(t)
	steps := []authStep{
		{"enable without a root user", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AuthEnable(ctx)) }},
		{"add root", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserAdd(ctx, "root", "rootpw"))
		}},
		{"enable without the root role", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AuthEnable(ctx)) }},
		{"add root again", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserAdd(ctx, "root", "x"))
		}},
		{"add a user without a name", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserAdd(ctx, "", "x"))
		}},
		{"add a role without a name", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.RoleAdd(ctx, "")) }},
		{"add reader", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleAdd(ctx, "reader"))
		}},
		{"add reader again", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleAdd(ctx, "reader"))
		}},
		{"grant reader /app/", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGrantPermission(ctx, "reader", "/app/", clientv3.GetPrefixRangeEnd("/app/"), clientv3.PermissionType(clientv3.PermRead)))
		}},
		{"grant a permission without a key", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGrantPermission(ctx, "reader", "", "", clientv3.PermissionType(clientv3.PermRead)))
		}},
		{"grant a backwards range", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGrantPermission(ctx, "reader", "b", "a", clientv3.PermissionType(clientv3.PermRead)))
		}},
		{"grant to an unknown role", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGrantPermission(ctx, "nosuch", "a", "", clientv3.PermissionType(clientv3.PermRead)))
		}},
		{"add writer", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleAdd(ctx, "writer"))
		}},
		{"grant writer /app/w/", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGrantPermission(ctx, "writer", "/app/w/", clientv3.GetPrefixRangeEnd("/app/w/"), clientv3.PermissionType(clientv3.PermReadWrite)))
		}},
		{"grant writer /solo (write only)", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGrantPermission(ctx, "writer", "/solo", "", clientv3.PermissionType(clientv3.PermWrite)))
		}},
		{"regrant /solo as read-write, then back", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			_, err := c.RoleGrantPermission(ctx, "writer", "/solo", "", clientv3.PermissionType(clientv3.PermReadWrite))
			if err == nil {
				_, err = c.RoleGrantPermission(ctx, "writer", "/solo", "", clientv3.PermissionType(clientv3.PermWrite))
			}
			return errText(err)
		}},
		{"add alice", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserAdd(ctx, "alice", "alicepw"))
		}},
		{"add bob", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserAdd(ctx, "bob", "bobpw"))
		}},
		{"grant alice reader", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserGrantRole(ctx, "alice", "reader"))
		}},
		{"grant alice reader again", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserGrantRole(ctx, "alice", "reader"))
		}},
		{"grant an unknown role", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserGrantRole(ctx, "alice", "nosuch"))
		}},
		{"grant to an unknown user", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserGrantRole(ctx, "carol", "reader"))
		}},
		{"grant bob writer", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserGrantRole(ctx, "bob", "writer"))
		}},
		{"revoke a role alice lacks", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserRevokeRole(ctx, "alice", "writer"))
		}},
		{"revoke a permission reader lacks", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleRevokePermission(ctx, "reader", "/nope", ""))
		}},
		{"grant root the root role", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserGrantRole(ctx, "root", "root"))
		}},
		{"user get alice", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.UserGet(ctx, "alice")
			if err != nil {
				return errText(err)
			}
			return fmt.Sprint("ok ", r.Roles)
		}},
		{"user list", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.UserList(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprint("ok ", r.Users)
		}},
		{"role list", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.RoleList(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprint("ok ", r.Roles)
		}},
		{"role get writer", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.RoleGet(ctx, "writer")
			if err != nil {
				return errText(err)
			}
			var b strings.Builder
			for _, p := range r.Perm {
				fmt.Fprintf(&b, "%s[%q,%q) ", p.PermType, p.Key, p.RangeEnd)
			}
			return "ok " + b.String()
		}},
		{"role get unknown", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGet(ctx, "nosuch"))
		}},
		{"status before enable", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.AuthStatus(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok enabled=%v revision=%d", r.Enabled, r.AuthRevision)
		}},
		{"put before enable", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			for _, kv := range [][2]string{{"/app/x", "1"}, {"/app/w/y", "2"}, {"/solo", "3"}, {"/other", "4"}} {
				if _, err := c.Put(ctx, kv[0], kv[1]); err != nil {
					return errText(err)
				}
			}
			return "ok"
		}},
		{"enable", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AuthEnable(ctx)) }},
		{"status after enable", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.AuthStatus(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok enabled=%v revision=%d", r.Enabled, r.AuthRevision)
		}},
		{"anonymous get", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/app/x")) }},
		{"anonymous put", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Put(ctx, "/app/x", "v"))
		}},
		{"anonymous compact", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.Compact(ctx, 1)) }},
		{"anonymous member list", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.MemberList(ctx)) }},
		{"anonymous alarm list", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AlarmList(ctx)) }},
		{"anonymous user add", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserAdd(ctx, "eve", "x"))
		}},
		{"anonymous lease grant", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.Grant(ctx, 60)) }},
		{"wrong password", "", func(ctx context.Context, _ *clientv3.Client, s *session) string {
			_, res := s.as("alice", "wrong")
			return res
		}},
		{"unknown user", "", func(ctx context.Context, _ *clientv3.Client, s *session) string {
			_, res := s.as("carol", "x")
			return res
		}},
		{"alice reads a key", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/app/x")) }},
		{"alice reads her prefix", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return kvs(c.Get(ctx, "/app/", clientv3.WithPrefix()))
		}},
		{"alice reads past her prefix", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return kvs(c.Get(ctx, "/app/", clientv3.WithRange("/b")))
		}},
		{"alice reads everything", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return kvs(c.Get(ctx, "", clientv3.WithFromKey()))
		}},
		{"alice reads another key", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/other")) }},
		{"alice writes", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Put(ctx, "/app/x", "v"))
		}},
		{"alice deletes", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Delete(ctx, "/app/x"))
		}},
		{"alice compacts", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.Compact(ctx, 1)) }},
		{"alice txn: reads only", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Txn(ctx).If(clientv3.Compare(clientv3.Value("/app/x"), "=", "1")).Then(clientv3.OpGet("/app/x")).Else(clientv3.OpGet("/app/w/y")).Commit())
		}},
		{"alice txn: a write in the branch not taken", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Txn(ctx).If(clientv3.Compare(clientv3.Value("/app/x"), "=", "1")).Then(clientv3.OpGet("/app/x")).Else(clientv3.OpPut("/app/x", "2")).Commit())
		}},
		{"alice txn: compare outside her range", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Txn(ctx).If(clientv3.Compare(clientv3.Version("/other"), ">", 0)).Commit())
		}},
		{"alice watches her prefix", alice, watchStep("/app/", clientv3.WithPrefix())},
		{"alice watches another key", alice, watchStep("/other")},
		{"alice status", alice, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.Status(ctx, s.endpoints[0]))
		}},
		{"alice alarm list", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AlarmList(ctx)) }},
		{"alice member list", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.MemberList(ctx)) }},
		{"alice defragments", alice, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.Defragment(ctx, s.endpoints[0]))
		}},
		{"alice hashes", alice, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.HashKV(ctx, s.endpoints[0], 0))
		}},
		{"alice snapshots", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			rc, err := c.Snapshot(ctx)
			if err != nil {
				return errText(err)
			}
			defer rc.Close()
			buf := make([]byte, 1)
			_, err = rc.Read(buf)
			return errText(err)
		}},
		{"alice raises an alarm", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.AlarmDisarm(ctx, &clientv3.AlarmMember{Alarm: 1}))
		}},
		{"alice gets herself", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.UserGet(ctx, "alice")
			if err != nil {
				return errText(err)
			}
			return fmt.Sprint("ok ", r.Roles)
		}},
		{"alice gets bob", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.UserGet(ctx, "bob")) }},
		{"alice gets her role", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGet(ctx, "reader"))
		}},
		{"alice gets another role", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleGet(ctx, "writer"))
		}},
		{"alice lists users", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.UserList(ctx)) }},
		{"alice auth status", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.AuthStatus(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok enabled=%v", r.Enabled)
		}},
		{"auth status with a bad token", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(pb.NewAuthClient(c.ActiveConnection()).AuthStatus(metadata.AppendToOutgoingContext(ctx, "token", "not-a-token"), &pb.AuthStatusRequest{}))
		}},
		{"alice changes her own password", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserChangePassword(ctx, "alice", "x"))
		}},
		{"alice disables auth", alice, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AuthDisable(ctx)) }},
		{"bob writes his prefix with prev kv", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.Put(ctx, "/app/w/y", "5", clientv3.WithPrevKV())
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok prev=%s", r.PrevKv.Value)
		}},
		{"bob writes /solo", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Put(ctx, "/solo", "6"))
		}},
		{"bob reads /solo", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/solo")) }},
		{"bob writes /solo with prev kv", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Put(ctx, "/solo", "7", clientv3.WithPrevKV()))
		}},
		{"bob deletes his prefix with prev kv", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.Delete(ctx, "/app/w/", clientv3.WithPrefix(), clientv3.WithPrevKV())
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok deleted=%d", r.Deleted)
		}},
		{"bob deletes /solo with prev kv", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Delete(ctx, "/solo", clientv3.WithPrevKV()))
		}},
		{"bob nested txn", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Txn(ctx).Then(clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpPut("/app/w/n", "1")}, []clientv3.Op{clientv3.OpGet("/app/x")})).Commit())
		}},
		{"root grants a lease on /other", root, func(ctx context.Context, c *clientv3.Client, s *session) string {
			l, err := c.Grant(ctx, 600)
			if err == nil {
				s.leases["root"] = l.ID
				_, err = c.Put(ctx, "/other", "leased", clientv3.WithLease(l.ID))
			}
			return errText(err)
		}},
		{"bob attaches /solo to root's lease", bob, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.Put(ctx, "/solo", "8", clientv3.WithLease(s.leases["root"])))
		}},
		{"bob revokes root's lease", bob, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.Revoke(ctx, s.leases["root"]))
		}},
		{"bob asks about root's lease", bob, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.TimeToLive(ctx, s.leases["root"], clientv3.WithAttachedKeys()))
		}},
		{"bob asks about root's lease without its keys", bob, func(ctx context.Context, c *clientv3.Client, s *session) string {
			r, err := c.TimeToLive(ctx, s.leases["root"])
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok granted=%d", r.GrantedTTL)
		}},
		{"bob keeps root's lease alive", bob, func(ctx context.Context, c *clientv3.Client, s *session) string {
			return errOf(c.KeepAliveOnce(ctx, s.leases["root"]))
		}},
		{"bob lists leases", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.Leases(ctx)) }},
		{"bob's own lease", bob, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			l, err := c.Grant(ctx, 600)
			if err == nil {
				_, err = c.Put(ctx, "/app/w/l", "1", clientv3.WithLease(l.ID))
			}
			if err == nil {
				_, err = c.KeepAliveOnce(ctx, l.ID)
			}
			if err == nil {
				_, err = c.TimeToLive(ctx, l.ID, clientv3.WithAttachedKeys())
			}
			if err == nil {
				_, err = c.Revoke(ctx, l.ID)
			}
			return errText(err)
		}},
		{"root deletes root", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserDelete(ctx, "root"))
		}},
		{"root revokes root's root role", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserRevokeRole(ctx, "root", "root"))
		}},
		{"root deletes the root role", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleDelete(ctx, "root"))
		}},
		{"root reads all", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return kvs(c.Get(ctx, "/", clientv3.WithPrefix()))
		}},
		{"root changes alice's password", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserChangePassword(ctx, "alice", "newpw"))
		}},
		{"alice with the new password", "alice:newpw", func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/app/x")) }},
		{"root deletes reader", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.RoleDelete(ctx, "reader"))
		}},
		{"alice after her role is gone", "alice:newpw", func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/app/x")) }},
		{"alice's roles", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.UserGet(ctx, "alice")
			if err != nil {
				return errText(err)
			}
			return fmt.Sprint("ok ", r.Roles)
		}},
		{"root deletes bob", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserDelete(ctx, "bob"))
		}},
		{"root deletes bob again", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.UserDelete(ctx, "bob"))
		}},
		{"status before disable", root, func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.AuthStatus(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok enabled=%v revision=%d", r.Enabled, r.AuthRevision)
		}},
		{"root disables auth", root, func(ctx context.Context, c *clientv3.Client, _ *session) string { return errOf(c.AuthDisable(ctx)) }},
		{"anonymous get after disable", "", func(ctx context.Context, c *clientv3.Client, _ *session) string { return kvs(c.Get(ctx, "/app/x")) }},
		{"status after disable", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			r, err := c.AuthStatus(ctx)
			if err != nil {
				return errText(err)
			}
			return fmt.Sprintf("ok enabled=%v revision=%d", r.Enabled, r.AuthRevision)
		}},
		{"authenticate with auth off", "", func(ctx context.Context, c *clientv3.Client, _ *session) string {
			return errOf(c.Authenticate(ctx, "root", "rootpw"))
		}},
	}
	sessions := []*session{
		{t: t, endpoints: etcd.Endpoints(), anon: etcd, users: map[string]*clientv3.Client{}, leases: map[string]clientv3.LeaseID{}},
		{t: t, endpoints: c.Endpoints(), anon: c.Client(t), users: map[string]*clientv3.Client{}, leases: map[string]clientv3.LeaseID{}},
	}
	for _, st := range steps {
		var got [2]string
		for i, s := range sessions {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			cli := s.anon
			if st.as != "" {
				user, pw, _ := strings.Cut(st.as, ":")
				var res string
				if cli, res = s.as(user, pw); cli == nil {
					got[i] = res
					cancel()
					continue
				}
			}
			got[i] = st.do(ctx, cli, s)
			cancel()
		}
		if got[0] != got[1] {
			t.Errorf("%s: etcd %q, Tessera %q", st.name, got[0], got[1])
		} else {
			t.Logf("%s: %s", st.name, got[0])
		}
	}
}

// watchStep creates a watch and reports whether it was created or
// refused (and why).
func watchStep(key string, opts ...clientv3.OpOption) func(ctx context.Context, c *clientv3.Client, _ *session) string {
	return func(ctx context.Context, c *clientv3.Client, _ *session) string {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for resp := range c.Watch(wctx, key, append(opts, clientv3.WithCreatedNotify())...) {
			if resp.Canceled {
				return "canceled: " + rpctypes.ErrorDesc(resp.Err())
			}
			if resp.Created {
				return "created"
			}
		}
		return "closed"
	}
}
