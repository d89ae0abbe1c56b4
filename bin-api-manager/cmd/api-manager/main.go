// Command api-manager is the public REST and WebSocket door of voipbin.
//
//	api-manager          serve until SIGINT/SIGTERM
//	api-manager migrate  apply the database migrations and exit
package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-api-manager/internal/cache"
	"voipbin/bin-api-manager/internal/config"
	"voipbin/bin-api-manager/internal/httpapi"
	"voipbin/bin-api-manager/internal/httpauth"
	"voipbin/bin-api-manager/internal/identity"
	"voipbin/bin-api-manager/internal/mysql"
	"voipbin/bin-api-manager/internal/rpcclient"
	"voipbin/bin-api-manager/internal/ws"
	"voipbin/bin-api-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
	"voipbin/pkg/lifecycle"
	"voipbin/pkg/migrate"
	"voipbin/pkg/netpolicy"
	"voipbin/pkg/rpc"
	"voipbin/pkg/sqldb"
	"voipbin/pkg/telemetry"
	"voipbin/pkg/webhookapi"
)

const service = "api-manager"

// main runs the service; `<binary> vars` prints the variables its config reads (deploy/check).
func main() { lifecycle.Main(service, config.Vars, run) }

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(stderr, service, telemetry.ParseLevel(cfg.LogLevel))

	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	db, err := migrate.Open(startCtx, cfg.DatabaseDSN, migrations.FS, "customer", log)
	if err != nil {
		return err
	}
	defer db.Close()
	if len(args) > 0 && args[0] == "migrate" {
		return nil
	}

	var tlsCert tls.Certificate
	if cfg.TLS() {
		if tlsCert, err = tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			return fmt.Errorf("TLS_CERT_FILE/TLS_KEY_FILE: %w", err)
		}
	}

	conn, err := amqp.Dial(startCtx, cfg.RabbitMQAddress, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.Declare(startCtx, func(ch *amqp.Channel) error { return event.DeclareExchange(ch, event.ExchangeCustomer) }); err != nil {
		return fmt.Errorf("declare %s: %w", event.ExchangeCustomer, err)
	}
	// Redis is a cache: short timeouts and few dial retries, so that when it is down the rate
	// limiter fails open quickly and access keys are looked up in MySQL.
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddress, DialTimeout: time.Second, ReadTimeout: 500 * time.Millisecond,
		WriteTimeout: 500 * time.Millisecond, DialerRetries: 1, DialerRetryTimeout: 50 * time.Millisecond, MaxRetries: 1,
		ContextTimeoutEnabled: true})
	defer rdb.Close()

	reg := telemetry.NewRegistry()
	relay := event.NewRelay(db, conn, mysql.OutboxTable, log, event.RelayOptions{Registerer: reg})

	rpcClient := rpc.NewClient(conn, log, rpc.ClientOptions{})
	defer rpcClient.Close()
	caller := rpcclient.New(rpcClient, log, reg)

	// The authentication cache: what every request checks (keys, users) in memory and Redis, and
	// the channel on which revocations reach every instance.
	principals := cache.NewPrincipals(rdb, cache.PrincipalOptions{Prefix: "api:auth:", Channel: "api:auth:revoked",
		TTL: cfg.AuthCacheTTL, Log: log, Registerer: reg})
	ids, err := newIdentity(cfg, db, principals, relay.Kick)
	if err != nil {
		return err
	}
	created, err := ids.Bootstrap(startCtx, cfg.AdminUsername, cfg.AdminPassword)
	if err != nil {
		return fmt.Errorf("superadmin bootstrap: %w", err)
	}
	if created {
		log.Info("superadmin created", "username", cfg.AdminUsername)
	}

	authenticator := httpauth.New(ids)
	events := ws.NewHandler(ws.Deps{Conn: conn, Log: log, Registerer: reg,
		Auth:   ws.AuthFunc(func(r *http.Request) (ws.Identity, error) { return wsIdentity(ids, authenticator, r) }),
		Leases: cache.NewLeases(rdb, "api:wsconn:", 30*time.Second),
		Options: ws.Options{RevalidateInterval: cfg.WSCredentialCheckInterval,
			MaxConnectionsPerCustomer: cfg.WS.PerCustomer, MaxConnectionsPerIP: cfg.WS.PerIP}})
	// A revocation announced by any instance re-checks this instance's sockets at once.
	principals.OnRevoke(events.Revalidate)
	admin := telemetry.NewAdmin(cfg.AdminAddress, reg, map[string]telemetry.Check{
		"mysql":     sqldb.Check(db),
		"rabbitmq":  conn.Check,
		"redis":     func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		"websocket": events.Check,
	})

	handler := httpapi.New(httpapi.Deps{
		Log: log, Registerer: reg,
		Identity: ids, Auth: authenticator,
		Calls: callapi.NewClient(caller), Billing: billingapi.NewClient(caller), Webhooks: webhookapi.NewClient(caller),
		Limiter:     cache.NewLimiter(rdb, "api:ratelimit:"),
		RateLimitIP: httpapi.RateLimit(cfg.RateLimitIP), RateLimitCustomer: httpapi.RateLimit(cfg.RateLimitCustomer),
		Idempotency: cache.NewIdempotency(rdb, "api:idempotency:", 24*time.Hour), CallCreateTimeout: cfg.CallCreateTimeout,
		LoginFailures: cache.NewFailures(rdb, "api:loginfail:"),
		LoginThrottle: httpapi.LoginThrottle(cfg.LoginThrottle),
		CORSOrigins:   cfg.CORSOrigins, SecureCookie: cfg.TLS(), CookieLifetime: cfg.JWTLifetime,
		WS:              events,
		SIPDestinations: netpolicy.New(netpolicy.Options{Allowed: cfg.SIPAllowedNetworks}),
	})
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 120 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	ln, err := net.Listen("tcp", cfg.HTTPAddress)
	if err != nil {
		return fmt.Errorf("HTTP_ADDRESS: %w", err)
	}
	if cfg.TLS() {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{tlsCert}, MinVersion: tls.VersionTLS12})
	}

	// Work stops when ctx ends; the admin server outlives it so /readyz reports the drain.
	log.Info("http server listening", "address", ln.Addr().String(), "tls", cfg.TLS())
	return lifecycle.Run(ctx, log, lifecycle.Parts{
		Admin: admin,
		Work:  []lifecycle.Task{principals.Run, events.Run, serveHTTP(srv, ln)},
		// customer.created rows committed by requests finishing during the drain still leave.
		Trailing: []lifecycle.Task{relay.Run},
	})
}

// serveHTTP serves until ctx ends, then stops taking requests and lets those in flight finish.
func serveHTTP(srv *http.Server, ln net.Listener) lifecycle.Task {
	return func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return fmt.Errorf("http server: %w", err)
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("http server shutdown: %w", err)
		}
		return nil
	}
}

// wsIdentity authenticates a WebSocket upgrade like any request, and hands the socket its
// credential's expiry and a check of its current state, so the socket lives no longer than the
// credential.
func wsIdentity(ids *identity.Service, auth *httpauth.Authenticator, r *http.Request) (ws.Identity, error) {
	id, err := auth.Authenticate(r)
	if err != nil {
		return ws.Identity{}, err
	}
	if !id.CanRead() {
		return ws.Identity{}, identity.ErrPermissionDenied
	}
	return ws.Identity{CustomerID: id.CustomerID, Superadmin: id.Superadmin(), Expires: id.Expires,
		Check: func(ctx context.Context) error { return ids.Check(ctx, id) }}, nil
}

// newIdentity wires the identity service to MySQL and the authentication cache.
func newIdentity(cfg config.Config, db *sql.DB, principals *cache.Principals, committed func()) (*identity.Service, error) {
	keys := make([]identity.Key, len(cfg.JWTKeys))
	for i, k := range cfg.JWTKeys {
		keys[i] = identity.Key{ID: k.ID, Secret: k.Secret}
	}
	tokens, err := identity.NewTokens(keys, cfg.JWTLifetime, nil)
	if err != nil {
		return nil, err
	}
	passwords, err := identity.NewPasswords(cfg.BcryptCost, identity.HashLimit{Concurrency: cfg.PasswordHashConcurrency})
	if err != nil {
		return nil, err
	}
	store := mysql.NewStore(db, committed)
	return identity.NewService(identity.Deps{Users: store, Customers: store, Keys: store,
		Cache: principals.Keys(), UserCache: principals.Users(), Tokens: tokens, Passwords: passwords}), nil
}
