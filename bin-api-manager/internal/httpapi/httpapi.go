// Package httpapi is the public REST surface of voipbin (DESIGN §5): the chi router, its
// middleware (request id, access log, panic recovery, CORS, rate limits, authentication, body
// limit), one type per REST resource with its Routes, the error envelope every failure is written
// in, and the OpenAPI document of it all. Calls, billing and webhooks are forwarded to their
// managers through the typed clients of pkg/callapi, pkg/billingapi and pkg/webhookapi; identity
// is served by internal/identity.
package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-api-manager/internal/cache"
	"voipbin/bin-api-manager/internal/httpauth"
	"voipbin/bin-api-manager/internal/ratelimit"
	"voipbin/pkg/callapi"
)

// MaxBodyBytes is the largest request body accepted (413 beyond).
const MaxBodyBytes = 1 << 20

// RateLimit is a GCRA limit: Rate requests per second with bursts of Burst; Rate 0 disables it.
type RateLimit struct {
	Rate  int
	Burst int
}

// Limiter takes one request from a key's budget (cache.Limiter implements it).
type Limiter interface {
	Allow(ctx context.Context, key string, rate, burst int) (allowed bool, retryAfter time.Duration, err error)
}

// IdempotencyStore keeps the answers of requests with an Idempotency-Key (cache.Idempotency
// implements it).
type IdempotencyStore interface {
	Begin(ctx context.Context, key, hash string, lease time.Duration) (cache.Record, *cache.Claim, error)
	Finish(ctx context.Context, c *cache.Claim, r cache.Record) (cache.Record, error)
	Release(ctx context.Context, c *cache.Claim) error
	Yield(ctx context.Context, c *cache.Claim) error
}

// IdentityService is what the router needs of identity.Service.
type IdentityService interface {
	sessionService
	customerService
	accessKeyService
	userService
}

// Deps are everything the router needs; main builds them.
type Deps struct {
	Log        *slog.Logger
	Registerer prometheus.Registerer

	Identity IdentityService
	Auth     *httpauth.Authenticator
	Calls    CallManager
	Billing  BillingManager
	Webhooks WebhookManager

	Limiter           Limiter
	RateLimitIP       RateLimit
	RateLimitCustomer RateLimit
	Idempotency       IdempotencyStore
	// LoginFailures counts failed logins (Redis); nil counts them in process only.
	LoginFailures FailureCounter
	LoginThrottle LoginThrottle
	// CallCreateTimeout is how long POST /v1.0/calls waits for the call manager; it must exceed
	// the call manager's whole budget (config checks it against callapi.CreateTimeout). 0 means
	// callapi.CreateTimeout + 1 s.
	CallCreateTimeout time.Duration

	// CORSOrigins are the browser origins allowed to call the API ("*": any, without cookies).
	CORSOrigins []string
	// SecureCookie marks the token cookie Secure (set when serving TLS).
	SecureCookie bool
	// CookieLifetime is the token cookie's Max-Age (the JWT lifetime).
	CookieLifetime time.Duration
	// WS, when set, serves GET /v1.0/ws. It authenticates by itself (httpauth.Authenticator),
	// since browsers cannot set headers on a WebSocket handshake.
	WS http.Handler
	// SIPDestinations checks the literal address of a sip destination (the rtc manager checks
	// again, after resolving names, at dial time); nil refuses the default-refused ranges.
	SIPDestinations AddressChecker
}

// AddressChecker is the address policy of sip destinations (netpolicy.Policy).
type AddressChecker interface {
	Check(ip netip.Addr) error
}

// api holds what the middleware and resources share.
type api struct {
	log *slog.Logger
	m   *metrics
	// local limits requests in process while the shared limiter (Redis) cannot answer.
	local *ratelimit.Local
}

// New builds the router of the public API.
func New(d Deps) http.Handler {
	a := &api{log: d.Log, m: newMetrics(d.Registerer)}
	if d.CallCreateTimeout <= 0 {
		d.CallCreateTimeout = callapi.CreateTimeout + time.Second
	}
	r := chi.NewRouter()
	r.Use(a.requestID, a.accessLog, a.recoverer, cors(d.CORSOrigins))
	a.local = ratelimit.NewLocal()
	r.NotFound(a.routeNotFound)
	r.MethodNotAllowed(a.methodNotAllowed(r))

	ipLimit := a.rateLimit("ip", d.Limiter, d.RateLimitIP, func(r *http.Request) string { return "ip:" + clientIP(r) })
	customerLimit := a.rateLimit("customer", d.Limiter, d.RateLimitCustomer, func(r *http.Request) string {
		id, _ := httpauth.FromContext(r.Context())
		if id.CustomerID != "" {
			return "customer:" + id.CustomerID
		}
		return "user:" + id.UserID
	})

	r.Group(func(r chi.Router) {
		r.Use(ipLimit)
		r.Get("/ping", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"message": "pong"})
		})
		r.Get("/v1.0/openapi.yaml", serveOpenAPI)
		if d.WS != nil {
			r.Get("/v1.0/ws", d.WS.ServeHTTP)
		}
		r.With(limitBody).Mount("/auth", (&sessions{api: a, svc: d.Identity, secure: d.SecureCookie,
			throttle: newLoginThrottle(a, d.LoginFailures, d.LoginThrottle),
			lifetime: d.CookieLifetime}).Routes())

		r.Group(func(r chi.Router) {
			r.Use(a.authenticate(d.Auth), customerLimit, limitBody)
			r.Mount("/v1.0/customers", (&customers{api: a, svc: d.Identity}).Routes())
			r.Get("/v1.0/customer", (&customers{api: a, svc: d.Identity}).own)
			r.Mount("/v1.0/accesskeys", (&accessKeys{api: a, svc: d.Identity}).Routes())
			r.Mount("/v1.0/users", (&users{api: a, svc: d.Identity}).Routes())
			r.Mount("/v1.0/calls", (&calls{api: a, mgr: d.Calls, idem: d.Idempotency, timeout: d.CallCreateTimeout,
				sipPolicy: sipPolicy(d.SIPDestinations)}).Routes())
			b := &billing{api: a, mgr: d.Billing}
			r.Mount("/v1.0/billing_accounts", b.AccountRoutes())
			r.Mount("/v1.0/billings", b.BillingRoutes())
			r.Mount("/v1.0/webhooks", (&webhooks{api: a, mgr: d.Webhooks, customers: d.Identity}).Routes())
		})
	})
	return r
}
