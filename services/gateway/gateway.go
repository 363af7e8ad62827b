// Package gateway runs the stateless gateway: etcd's v3 gRPC API and its
// REST/JSON gateway at /v3/* on the same client port, routed to the shards.
package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/soheilhy/cmux"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tessera-kv/tessera/pkg/auth"
	"github.com/tessera-kv/tessera/pkg/limits"
	"github.com/tessera-kv/tessera/pkg/rpcconn"
	"github.com/tessera-kv/tessera/pkg/telemetry"
	"github.com/tessera-kv/tessera/pkg/wirecodec"
	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/proto/metapb"
	"github.com/tessera-kv/tessera/services/gateway/internal/authgate"
	"github.com/tessera-kv/tessera/services/gateway/internal/etcdapi"
	"github.com/tessera-kv/tessera/services/gateway/internal/fanout"
	"github.com/tessera-kv/tessera/services/gateway/internal/members"
	"github.com/tessera-kv/tessera/services/gateway/internal/reqcheck"
	"github.com/tessera-kv/tessera/services/gateway/internal/router"
)

// Config configures a gateway.
type Config struct {
	// ListenClientURLs are etcd-style URLs (http://host:port) to serve on.
	ListenClientURLs []string
	// AdvertiseClientURLs are what MemberList tells clients (etcd's flag of
	// the same name); behind a Kubernetes Service, the Service's URL. The
	// served URLs if empty.
	AdvertiseClientURLs []string
	// Replicas are internal API addresses of replicas to learn the shard map from.
	Replicas []string
	// Local are replicas in this process, by internal API address (tessera
	// dev): unary calls to them skip the network.
	Local map[string]*rpcconn.Local
	// Watchers are API addresses of watcher processes serving etcd's Watch.
	Watchers []string
	// ClusterName seeds the cluster ID reported in headers.
	ClusterName string
	// Name seeds this gateway's member ID.
	Name string
	// Limits bound client requests; the zero value means DefaultLimits().
	Limits Limits
	// Peer is the transport to replicas and watchers (zero: plaintext TCP).
	Peer rpcconn.Peer
	// TLS serves the https:// client URLs (pkg/tlsconf.ServerConfig: the
	// certificate, and with client-cert-auth the CA clients must chain to).
	TLS *tls.Config
	// HTTPAddress serves /livez, /readyz and /metrics in plaintext besides
	// the client port (empty: only there), for probes that present no
	// client certificate.
	HTTPAddress string
	// Auth configures etcd's auth (tokens, password hashing).
	Auth AuthConfig
	// Logger is the component logger; nil means slog.Default().
	Logger *slog.Logger
}

// AuthConfig is etcd's auth flags.
type AuthConfig struct {
	// Token is --auth-token: "simple" (the default) or
	// "jwt,pub-key=...,priv-key=...,sign-method=...[,ttl=...]".
	Token string
	// TokenTTL is --auth-token-ttl, the life of a simple token (0: 300 s).
	TokenTTL time.Duration
	// BcryptCost is --bcrypt-cost (0: bcrypt's default, 10, as etcd).
	BcryptCost int
}

// Validate checks the config.
func (c *Config) Validate() error {
	if len(c.ListenClientURLs) == 0 {
		return errors.New("gateway: at least one listen client URL required")
	}
	if len(c.Replicas) == 0 {
		return errors.New("gateway: at least one replica address required")
	}
	if c.Auth.BcryptCost != 0 && (c.Auth.BcryptCost < bcrypt.MinCost || c.Auth.BcryptCost > bcrypt.MaxCost) {
		return fmt.Errorf("gateway: --bcrypt-cost %d: want %d to %d", c.Auth.BcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	}
	if c.Limits != (Limits{}) {
		if err := c.Limits.Validate(); err != nil {
			return err
		}
	}
	for _, u := range c.ListenClientURLs {
		p, err := url.Parse(u)
		if err != nil || p.Host == "" {
			return fmt.Errorf("gateway: bad client URL %q", u)
		}
		switch {
		case p.Scheme == "https" && c.TLS == nil:
			return fmt.Errorf("gateway: client URL %q needs a certificate (--cert-file, --key-file)", u)
		case p.Scheme != "http" && p.Scheme != "https":
			return fmt.Errorf("gateway: client URL %q: http or https only", u)
		}
	}
	return nil
}

// Gateway is a running gateway.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	router  *router.Router
	admin   *adminServer
	grpcSrv *grpc.Server
	https   []*http.Server
	muxes   []cmux.CMux
	addrs   []string
	schemes []string // per address: http or https
	loop    *bufconn.Listener
	gwConn  *grpc.ClientConn
	wConns  []*grpc.ClientConn
	kv      *etcdapi.KV
	gate    *authgate.Gate
	members *members.Registry
	// draining ends when Shutdown begins.
	draining     context.Context
	stopDraining context.CancelFunc

	metricsHandler http.Handler
	cancel         context.CancelFunc
}

// Start serves the client API.
func Start(cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits()
	}
	lim := cfg.Limits
	apiLimits := reqcheck.Limits{MaxTxnOps: lim.MaxTxnOps, MaxKeyBytes: lim.MaxKeyBytes}
	hdr := etcdapi.Header{ClusterID: idOf(cfg.ClusterName), MemberID: idOf(cfg.ClusterName + "/" + cfg.Name)}
	g := &Gateway{cfg: cfg, log: cfg.Logger, router: router.New(cfg.Replicas, cfg.Peer, cfg.Logger)}
	for addr, l := range cfg.Local {
		g.router.UseLocal(addr, l)
	}
	g.draining, g.stopDraining = context.WithCancel(context.Background())
	// etcd accepts a little more than MaxRequestBytes on the wire so that
	// the too-large error, not a transport error, answers moderate excess.
	// The codec lets watch responses from the watcher tier pass through
	// in wire form; every other message is ordinary protobuf.
	// The process's meter provider first, so instruments bind to it.
	metricsHandler, err := telemetry.Handler()
	if err != nil {
		return nil, err
	}
	g.metricsHandler = metricsHandler
	metrics, err := newRequestMetrics()
	if err != nil {
		return nil, err
	}
	tokens, err := auth.ParseTokens(cfg.Auth.Token, cfg.Auth.TokenTTL)
	if err != nil {
		return nil, err
	}
	g.gate = authgate.New(g.fetchAuthState, tokens, cfg.Logger)
	g.grpcSrv = grpc.NewServer(append(telemetry.ServerTracing(), rpcconn.StreamWorkers(), grpc.Creds(tlsInfo{}), grpc.MaxRecvMsgSize(lim.MaxRequestBytes+limits.GRPCOverheadBytes), grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(lim.MaxConcurrentStreams),
		// etcd's keepalive rules, so clients that ping every 30 s (as
		// kube-apiserver does) are never told too_many_pings. Unlike etcd,
		// pings on a connection with no stream are allowed too.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: lim.KeepAliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: orInfinity(lim.KeepAliveInterval), Timeout: lim.KeepAliveTimeout}),
		grpc.ForceServerCodecV2(wirecodec.New()),
		grpc.ChainUnaryInterceptor(metrics.unary, lim.checkSize, g.gate.Unary), grpc.ChainStreamInterceptor(metrics.stream, g.drainStreams, g.gate.Stream))...)
	leases := etcdapi.NewLease(g.router, hdr)
	g.gate.SetLeaseKeys(leases)
	cost := cfg.Auth.BcryptCost
	if cost == 0 {
		cost = bcrypt.DefaultCost
	}
	pb.RegisterAuthServer(g.grpcSrv, etcdapi.NewAuth(g.router, g.gate, cost, hdr))
	g.kv = etcdapi.NewKV(g.router, leases, apiLimits, hdr)
	pb.RegisterKVServer(g.grpcSrv, g.kv)
	pb.RegisterLeaseServer(g.grpcSrv, leases)
	g.members = members.New(metaMembers{g.router}, hdr.MemberID, cfg.Name, nil, cfg.Logger)
	pb.RegisterMaintenanceServer(g.grpcSrv, etcdapi.NewMaintenance(g.router, g.members, hdr))
	pb.RegisterClusterServer(g.grpcSrv, etcdapi.NewCluster(hdr, g.members))
	g.admin = &adminServer{fan: fanout.New(g.router), router: g.router}
	adminpb.RegisterAdminServer(g.grpcSrv, g.admin)
	for _, a := range cfg.Watchers {
		// Round robin over every address a name resolves to: one DNS name
		// of a headless Service spreads streams over all its watchers.
		c, err := cfg.Peer.Dial(a, grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("gateway: watcher %s: %w", a, err)
		}
		g.wConns = append(g.wConns, c)
	}
	pb.RegisterWatchServer(g.grpcSrv, etcdapi.NewWatch(etcdapi.NewWatchers(g.wConns), g.router, g.gate, hdr))

	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go g.gate.Run(ctx)
	for _, u := range cfg.ListenClientURLs {
		p, _ := url.Parse(u)
		l, err := net.Listen("tcp", p.Host)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("gateway: listen %s: %w", p.Host, err)
		}
		g.addrs, g.schemes = append(g.addrs, l.Addr().String()), append(g.schemes, p.Scheme)
		if p.Scheme == "https" {
			// TLS first, then gRPC and REST told apart on the plaintext.
			l = tls.NewListener(l, cfg.TLS)
		}
		m := cmux.New(l)
		grpcL := m.MatchWithWriters(cmux.HTTP2MatchHeaderFieldSendSettings("content-type", "application/grpc"))
		httpL := m.Match(cmux.Any())
		g.muxes = append(g.muxes, m)
		go g.grpcSrv.Serve(grpcL)
		hs := &http.Server{ReadHeaderTimeout: 10 * time.Second, ReadTimeout: httpReadTimeout,
			WriteTimeout: httpWriteTimeout, IdleTimeout: httpIdleTimeout}
		g.https = append(g.https, hs)
		go hs.Serve(httpL)
	}
	advertise := cfg.AdvertiseClientURLs
	if len(advertise) == 0 {
		advertise = g.ClientURLs()
	}
	g.members.SetClientURLs(advertise)
	go g.members.Run(ctx)
	handler, err := g.httpHandler(ctx)
	if err != nil {
		g.Close()
		return nil, err
	}
	for _, hs := range g.https {
		hs.Handler = handler
	}
	if cfg.HTTPAddress != "" {
		if err := g.serveProbes(); err != nil {
			g.Close()
			return nil, err
		}
	}
	// Connections are accepted only now that every service is complete.
	for _, m := range g.muxes {
		go func() {
			if err := m.Serve(); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "use of closed network connection") {
				g.log.Error("client listener stopped", "err", err)
			}
		}()
	}
	g.log.Info("gateway serving", "client-urls", g.ClientURLs())
	return g, nil
}

// httpHandler serves etcd's REST gateway at /v3/ (through a gRPC
// connection to this gateway's own server, as etcd does, so streams work)
// and health endpoints. The connection is in memory: it needs no port, and
// so opens none that would skip the client port's TLS.
func (g *Gateway) httpHandler(ctx context.Context) (http.Handler, error) {
	g.loop = bufconn.Listen(1 << 20)
	go g.grpcSrv.Serve(g.loop)
	conn, err := grpc.NewClient("passthrough:///tessera-gateway-loopback", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return g.loop.DialContext(ctx) }),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1)))
	if err != nil {
		return nil, err
	}
	g.gwConn = conn
	gwmux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{
		Marshaler: &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		},
	}))
	for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		gw.RegisterKVHandler, gw.RegisterMaintenanceHandler, gw.RegisterWatchHandler, gw.RegisterLeaseHandler, gw.RegisterClusterHandler,
		gw.RegisterAuthHandler,
	} {
		if err := reg(ctx, gwmux, conn); err != nil {
			return nil, err
		}
	}
	// Tessera's own admin API (the shard map) is proxied to the replicas.
	// With TLS on the client port the internal addresses stay internal:
	// clients learn shards and store IDs, not where stores listen.
	var adminOpts []runtime.ServeMuxOption
	if g.cfg.TLS != nil {
		adminOpts = append(adminOpts, runtime.WithForwardResponseOption(func(_ context.Context, _ http.ResponseWriter, m proto.Message) error {
			if r, ok := m.(*metapb.GetShardMapResponse); ok {
				for _, st := range r.GetShardMap().GetStores() {
					st.ApiAddress, st.RaftAddress = "", ""
				}
			}
			return nil
		}))
	}
	admin := runtime.NewServeMux(adminOpts...)
	if err := metapb.RegisterMetaHandlerClient(ctx, admin, metapb.NewMetaClient(g.router.AnyReplica())); err != nil {
		return nil, err
	}
	if err := adminpb.RegisterAdminHandlerServer(ctx, admin, g.admin); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v3/", restLimits(gwmux, g.cfg.Limits.MaxRequestBytes+limits.GRPCOverheadBytes))
	mux.Handle("/tessera/", g.adminOnly(admin))
	mux.HandleFunc("/health", g.health)
	g.probes(mux)
	return mux, nil
}

// probes serves /livez, /readyz (the gateway reaches the shard map) and
// /metrics.
func (g *Gateway) probes(mux *http.ServeMux) {
	mux.Handle("/metrics", g.metricsHandler)
	telemetry.Profiles(mux)
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if _, err := g.router.All(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// serveProbes serves the probes on a plaintext port of their own
// (Config.HTTPAddress): kubelet's probes present no client certificate, so
// with --client-cert-auth they cannot use the client port.
func (g *Gateway) serveProbes() error {
	l, err := net.Listen("tcp", g.cfg.HTTPAddress)
	if err != nil {
		return fmt.Errorf("gateway: listen %s: %w", g.cfg.HTTPAddress, err)
	}
	mux := http.NewServeMux()
	g.probes(mux)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	g.https = append(g.https, hs)
	go hs.Serve(l)
	return nil
}

// authFetchTimeout bounds one replica's answer to GetAuthState: a replica
// cut off from the meta shard (its ReadIndex hangs) costs this long before
// the next one is asked, not the whole request's deadline.
const authFetchTimeout = time.Second

// fetchAuthState reads the auth store from the meta shard's replicas, the
// leader first.
func (g *Gateway) fetchAuthState(ctx context.Context, known uint64) (*metapb.GetAuthStateResponse, error) {
	meta := g.router.MetaShard()
	if meta == nil {
		return nil, rpctypes.ErrGRPCNoLeader
	}
	err := error(rpctypes.ErrGRPCNoLeader)
	for _, addr := range slices.Backward(g.router.Replicas(meta.Id)) {
		var resp *metapb.GetAuthStateResponse
		rctx, cancel := context.WithTimeout(ctx, authFetchTimeout)
		err = g.router.CallStore(rctx, addr, func(ctx context.Context, c grpc.ClientConnInterface) (err error) {
			resp, err = metapb.NewMetaClient(c).GetAuthState(ctx, &metapb.GetAuthStateRequest{KnownGeneration: known})
			return err
		})
		cancel()
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// adminOnly lets only root reach Tessera's admin API once auth is on (a
// token in the Authorization header, as etcd's REST gateway takes it).
func (g *Gateway) adminOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := metadata.NewIncomingContext(r.Context(), metadata.Pairs(rpctypes.TokenFieldNameSwagger, r.Header.Get("Authorization")))
		if r.Header.Get("Authorization") == "" {
			ctx = r.Context()
		}
		v, id, err := g.gate.Who(ctx)
		if err == nil {
			err = v.CheckAdmin(id)
		}
		if err != nil {
			st := status.Convert(err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(runtime.HTTPStatusFromCode(st.Code()))
			json.NewEncoder(w).Encode(map[string]any{"code": st.Code(), "message": st.Message(), "error": st.Message()})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// health answers etcd's /health: healthy when a linearizable read goes
// through (etcd's check: a quorum read of the key "health").
func (g *Gateway) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	_, err := g.kv.Range(ctx, &pb.RangeRequest{Key: []byte("health")})
	w.Header().Set("Content-Type", "application/json")
	body := map[string]string{"health": "true", "reason": ""}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		body = map[string]string{"health": "false", "reason": "RANGE ERROR:" + err.Error()}
	}
	json.NewEncoder(w).Encode(body)
}

// ClientURLs are the URLs actually served (ports resolved).
func (g *Gateway) ClientURLs() []string {
	out := make([]string, len(g.addrs))
	for i, a := range g.addrs {
		out[i] = g.schemes[i] + "://" + a
	}
	return out
}

// Close stops serving.
func (g *Gateway) Close() {
	g.stopDraining()
	if g.cancel != nil {
		g.cancel()
	}
	for _, hs := range g.https {
		hs.Close()
	}
	if g.grpcSrv != nil {
		g.grpcSrv.Stop()
	}
	for _, m := range g.muxes {
		m.Close()
	}
	if g.gwConn != nil {
		g.gwConn.Close()
	}
	if g.loop != nil {
		g.loop.Close()
	}
	for _, c := range g.wConns {
		c.Close()
	}
	g.router.Close()
}

// The REST server's timeouts: a slow or stalled client cannot hold a
// connection forever. Streams (/v3/watch, /v3/lease/keepalive,
// /v3/maintenance/snapshot) lift the deadlines for themselves.
const (
	httpReadTimeout  = time.Minute
	httpWriteTimeout = 5 * time.Minute
	httpIdleTimeout  = 5 * time.Minute
)

// restLimits bounds REST request bodies as gRPC bounds messages, and lets
// streaming calls run past the server's write timeout.
func restLimits(next http.Handler, maxBody int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, int64(maxBody))
		switch r.URL.Path {
		case "/v3/watch", "/v3/lease/keepalive", "/v3/maintenance/snapshot":
			rc := http.NewResponseController(w)
			rc.SetReadDeadline(time.Time{}) // else the server cancels the stream when it passes
			rc.SetWriteDeadline(time.Time{})
		}
		next.ServeHTTP(w, r)
	})
}

// orInfinity turns 0 (disabled) into gRPC's "never".
func orInfinity(d time.Duration) time.Duration {
	if d == 0 {
		return time.Duration(math.MaxInt64)
	}
	return d
}

func idOf(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// metaMembers is the meta shard's side of gateway registration.
type metaMembers struct{ r *router.Router }

func (m metaMembers) Register(ctx context.Context, g *metapb.Gateway) error {
	return m.r.CallMeta(ctx, true, func(ctx context.Context, c metapb.MetaClient) error {
		_, err := c.RegisterGateway(ctx, &metapb.RegisterGatewayRequest{Gateway: g})
		return err
	})
}

func (m metaMembers) List(ctx context.Context) (out []*metapb.Gateway, err error) {
	err = m.r.CallMeta(ctx, false, func(ctx context.Context, c metapb.MetaClient) error {
		resp, err := c.ListGateways(ctx, &metapb.ListGatewaysRequest{})
		out = resp.GetGateways()
		return err
	})
	return out, err
}
