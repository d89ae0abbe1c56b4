package httpapi_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"voipbin/bin-api-manager/internal/cache"
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
	"voipbin/pkg/migrate"
	"voipbin/pkg/netpolicy"
	"voipbin/pkg/rpc"
	"voipbin/pkg/telemetry"
	"voipbin/pkg/testenv"
	"voipbin/pkg/webhookapi"
)

// jwtSecret is the harness's JWT key (kid "k1"), so tests can forge tokens with it.
var jwtSecret = []byte("test-jwt-secret-of-at-least-32-bytes!!")

const (
	rootUser     = "root"
	rootPassword = "root-password"
)

type options struct {
	ipLimit       httpapi.RateLimit
	customerLimit httpapi.RateLimit
	limiterRedis  *redis.Client // nil: the test Redis
	idemRedis     *redis.Client // nil: the test Redis
	cors          []string
	// callQueue, when set, is where call requests go instead of the stand-in (e.g. a queue
	// nobody consumes).
	callQueue string
	// createTimeout is the wait for the call manager's answer to a create (default 2 s with the
	// stand-in, which answers at once; the production default with real managers).
	createTimeout time.Duration
	// bench: no response validation, and info-level logs to nowhere (as in production, minus I/O).
	bench bool
	// rabbitURL, when set, is the broker (a test vhost) instead of the test broker's default.
	rabbitURL string
	// realManagers sends requests to the contract queues themselves, where the test runs real
	// managers (in a vhost of its own), and starts no stand-ins.
	realManagers bool
	// bcryptCost is the password hashing cost (0: the minimum, for speed).
	bcryptCost int
	hashLimit  identity.HashLimit
	// loginThrottle limits failed logins (zero: no limits); loginRedis counts them (nil: the test Redis).
	loginThrottle httpapi.LoginThrottle
	loginRedis    *redis.Client
	// ws serves the real WebSocket endpoint (internal/ws) instead of a stub, wired as main does.
	ws bool
	// share makes a second api-manager instance: its own router, identity service, cache and
	// WebSocket endpoint over the database and Redis keys of share.
	share *harness
	// sipAllowed is RTC_SIP_ALLOWED_NETWORKS.
	sipAllowed []netip.Prefix
}

// harness is the real router over real MariaDB, Redis and RabbitMQ, with the managers stood in
// by rpc.Servers on queues of their own. Every response it receives is checked against the
// OpenAPI document.
type harness struct {
	t       testing.TB
	url     string
	client  *http.Client
	db      *sql.DB
	rdb     *redis.Client
	prefix  string
	svc     *identity.Service
	reg     *prometheus.Registry
	logs    *syncBuffer
	calls   *fakeCalls
	billing *fakeBilling
	hooks   *fakeWebhooks
	root    string // the superadmin's token
	// principals is the authentication cache; events the WebSocket endpoint (with options.ws).
	principals *cache.Principals
	events     *ws.Handler
	// limiterCalls counts the requests that reached the rate limiter.
	limiterCalls atomic.Int64
}

// countingLimiter counts calls of the limiter it wraps.
type countingLimiter struct {
	next  httpapi.Limiter
	calls *atomic.Int64
}

func (c countingLimiter) Allow(ctx context.Context, key string, rate, burst int) (bool, time.Duration, error) {
	c.calls.Add(1)
	return c.next.Allow(ctx, key, rate, burst)
}

// renamed sends each contract queue to the harness's own queue, so tests never meet the real
// managers or each other.
type renamed struct {
	next   rpc.Caller
	queues map[string]string
}

func (r renamed) Call(ctx context.Context, queue string, req rpc.Request) (*rpc.Response, error) {
	if q, ok := r.queues[queue]; ok {
		queue = q
	}
	return r.next.Call(ctx, queue, req)
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if testing.Verbose() {
		_, _ = os.Stderr.Write(p)
	}
	return b.buf.Write(p)
}

// lines are the JSON log lines written so far.
func (b *syncBuffer) lines() []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(b.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func startServer(t testing.TB, conn *amqp.Conn, queue string, routes map[string]rpc.HandlerFunc) {
	t.Helper()
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	srv := rpc.NewServer(conn, queue, testenv.Logger(t), rpc.ServerOptions{Workers: 16})
	for p, h := range routes {
		srv.Handle(p, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitConsumer(t, conn, queue)
}

// waitConsumer waits until queue has a consumer.
func waitConsumer(t testing.TB, conn *amqp.Conn, queue string) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "a consumer on "+queue, func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
}

// wsStub stands in for the WebSocket endpoint; ?panic=1 makes it panic, to prove the recoverer.
var wsStub = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("panic") == "1" {
		panic("ws stub: boom")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_, _ = w.Write([]byte(`{"error":{"status":"INVALID_ARGUMENT","reason":"WEBSOCKET_UPGRADE_REQUIRED","message":"stub","request_id":"x","details":[]}}`))
})

func newHarness(t testing.TB, o options) *harness {
	t.Helper()
	ctx := context.Background()
	var db *sql.DB
	var rdb *redis.Client
	var prefix string
	if o.share != nil {
		db, rdb, prefix = o.share.db, o.share.rdb, o.share.prefix
	} else {
		db = testenv.MySQL(t)
		if _, err := migrate.Up(ctx, db, migrations.FS, "customer", testenv.Logger(t)); err != nil {
			t.Fatal(err)
		}
		rdb = testenv.Redis(t)
		prefix = testenv.Name("api") + ":"
		t.Cleanup(func() {
			keys, _ := rdb.Keys(context.Background(), prefix+"*").Result()
			if len(keys) > 0 {
				rdb.Del(context.Background(), keys...)
			}
		})
	}
	conn := testenv.Rabbit(t)
	if o.rabbitURL != "" {
		conn = testenv.DialRabbit(t, o.rabbitURL)
	}
	logs := &syncBuffer{}
	log := telemetry.NewLogger(logs, "api-manager", slog.LevelDebug)
	if o.bench {
		log = telemetry.NewLogger(io.Discard, "api-manager", slog.LevelInfo)
	}
	reg := prometheus.NewRegistry()

	if o.createTimeout == 0 {
		o.createTimeout = 2 * time.Second
		if o.realManagers {
			o.createTimeout = callapi.CreateTimeout + time.Second
		}
	}
	h := &harness{t: t, db: db, rdb: rdb, prefix: prefix, reg: reg, logs: logs,
		calls: &fakeCalls{}, billing: newFakeBilling(), hooks: newFakeWebhooks()}
	callQ, billQ, hookQ := callapi.Queue, billingapi.Queue, webhookapi.Queue
	if !o.realManagers {
		callQ, billQ, hookQ = testenv.Name("call"), testenv.Name("billing"), testenv.Name("webhook")
		startServer(t, conn, callQ, h.calls.routes())
		startServer(t, conn, billQ, h.billing.routes())
		startServer(t, conn, hookQ, h.hooks.routes())
	}
	if o.callQueue != "" {
		callQ = o.callQueue
	}
	client := rpc.NewClient(conn, log, rpc.ClientOptions{})
	t.Cleanup(client.Close)
	caller := renamed{next: rpcclient.New(client, log, reg),
		queues: map[string]string{callapi.Queue: callQ, billingapi.Queue: billQ, webhookapi.Queue: hookQ}}

	cost := bcrypt.MinCost
	if o.bcryptCost != 0 {
		cost = o.bcryptCost
	}
	pw, err := identity.NewPasswords(cost, o.hashLimit)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.NewTokens([]identity.Key{{ID: "k1", Secret: jwtSecret}}, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	store := mysql.NewStore(db, nil)
	h.principals = cache.NewPrincipals(rdb, cache.PrincipalOptions{Prefix: prefix + "auth:", Channel: prefix + "auth:revoked",
		TTL: 5 * time.Second, Log: log, Registerer: reg})
	runUntilCleanup(t, h.principals.Run)
	testenv.Eventually(t, 10*time.Second, "the revocation channel subscribed", h.principals.Live)
	h.svc = identity.NewService(identity.Deps{Users: store, Customers: store, Keys: store,
		Cache: h.principals.Keys(), UserCache: h.principals.Users(), Tokens: tokens, Passwords: pw})
	if _, err := h.svc.Bootstrap(ctx, rootUser, rootPassword); err != nil {
		t.Fatal(err)
	}
	limiterRedis, idemRedis := rdb, rdb
	if o.limiterRedis != nil {
		limiterRedis = o.limiterRedis
	}
	if o.idemRedis != nil {
		idemRedis = o.idemRedis
	}
	loginRedis := rdb
	if o.loginRedis != nil {
		loginRedis = o.loginRedis
	}
	handler := httpapi.New(httpapi.Deps{
		Log: log, Registerer: reg, Identity: h.svc, Auth: httpauth.New(h.svc),
		Calls: callapi.NewClient(caller), Billing: billingapi.NewClient(caller), Webhooks: webhookapi.NewClient(caller),
		Limiter: countingLimiter{next: cache.NewLimiter(limiterRedis, prefix+"rl:"), calls: &h.limiterCalls}, RateLimitIP: o.ipLimit, RateLimitCustomer: o.customerLimit,
		Idempotency: cache.NewIdempotency(idemRedis, prefix+"idem:", 24*time.Hour), CallCreateTimeout: o.createTimeout,
		LoginFailures: cache.NewFailures(loginRedis, prefix+"lf:"), LoginThrottle: o.loginThrottle,
		CORSOrigins: o.cors, CookieLifetime: time.Hour, WS: h.wsHandler(o, conn, log, reg),
		SIPDestinations: netpolicy.New(netpolicy.Options{Allowed: o.sipAllowed}),
	})
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	h.url = srv.URL
	h.client = srv.Client()
	if !o.bench {
		h.client = &http.Client{Transport: newValidator(t, srv.Client().Transport)}
	}

	resp, body := h.do("POST", "/auth/login", "", map[string]string{"username": rootUser, "password": rootPassword})
	if resp.StatusCode != 200 {
		t.Fatalf("root login: %d %s", resp.StatusCode, body)
	}
	h.root = decodeJSON[map[string]any](t, body)["token"].(string)
	return h
}

// runUntilCleanup runs f in a goroutine until the test ends.
func runUntilCleanup(t testing.TB, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// wsHandler is the WebSocket endpoint: a stub, or (options.ws) the real one wired as main wires
// it, with the credential's expiry and Identity.Check, re-checked at once on every revocation.
func (h *harness) wsHandler(o options, conn *amqp.Conn, log *slog.Logger, reg prometheus.Registerer) http.Handler {
	if !o.ws {
		return wsStub
	}
	authn := httpauth.New(h.svc)
	h.events = ws.NewHandler(ws.Deps{Conn: conn, Log: log, Registerer: reg,
		Auth: ws.AuthFunc(func(r *http.Request) (ws.Identity, error) {
			id, err := authn.Authenticate(r)
			if err != nil {
				return ws.Identity{}, err
			}
			if !id.CanRead() {
				return ws.Identity{}, identity.ErrPermissionDenied
			}
			return ws.Identity{CustomerID: id.CustomerID, Superadmin: id.Superadmin(), Expires: id.Expires,
				Check: func(ctx context.Context) error { return h.svc.Check(ctx, id) }}, nil
		})})
	h.principals.OnRevoke(h.events.Revalidate)
	runUntilCleanup(h.t, h.events.Run)
	testenv.Eventually(h.t, 30*time.Second, "the WebSocket event stream ready", func() bool {
		return h.events.Check(context.Background()) == nil
	})
	return h.events
}

// do sends a request. body may be nil, a string (sent as is) or anything JSON-encodable;
// headers are name, value pairs.
func (h *harness) do(method, path, token string, body any, headers ...string) (*http.Response, []byte) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, h.url+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp, b
}

// must sends a request and fails the test unless the status is want; it returns the body.
func (h *harness) must(want int, method, path, token string, body any, headers ...string) []byte {
	h.t.Helper()
	resp, b := h.do(method, path, token, body, headers...)
	if resp.StatusCode != want {
		h.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	return b
}

type customer struct {
	id       string
	username string
	token    string // the customer admin's JWT
}

// newCustomer creates a customer through the API, logs its admin in and opens its billing account.
func (h *harness) newCustomer(name string) customer {
	h.t.Helper()
	username := strings.ToLower(strings.ReplaceAll(testenv.Name(name), "_", "-"))
	b := h.must(201, "POST", "/v1.0/customers", h.root, map[string]string{"name": name, "username": username, "password": "password-123"})
	created := decodeJSON[struct {
		Customer struct {
			ID string `json:"id"`
		} `json:"customer"`
	}](h.t, b)
	login := h.must(200, "POST", "/auth/login", "", map[string]string{"username": username, "password": "password-123"})
	h.billing.open(created.Customer.ID)
	return customer{id: created.Customer.ID, username: username, token: decodeJSON[map[string]any](h.t, login)["token"].(string)}
}

func decodeJSON[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, b, err)
	}
	return v
}

type apiError struct {
	Status    string           `json:"status"`
	Reason    string           `json:"reason"`
	Message   string           `json:"message"`
	RequestID string           `json:"request_id"`
	Details   []map[string]any `json:"details"`
}

func decodeError(t testing.TB, b []byte) apiError {
	t.Helper()
	return decodeJSON[struct {
		Error apiError `json:"error"`
	}](t, b).Error
}

// expectError sends a request and checks the status and the envelope's reason.
func (h *harness) expectError(wantStatus int, wantReason, method, path, token string, body any, headers ...string) apiError {
	h.t.Helper()
	resp, b := h.do(method, path, token, body, headers...)
	if resp.StatusCode != wantStatus {
		h.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, wantStatus, b)
	}
	e := decodeError(h.t, b)
	if e.Reason != wantReason {
		h.t.Fatalf("%s %s: reason %s, want %s: %s", method, path, e.Reason, wantReason, b)
	}
	if e.RequestID == "" || e.RequestID != resp.Header.Get("X-Request-Id") {
		h.t.Fatalf("%s %s: request_id %q, header %q", method, path, e.RequestID, resp.Header.Get("X-Request-Id"))
	}
	return e
}

// ---- OpenAPI validation of every response ------------------------------------------------------

var (
	docOnce   sync.Once
	doc       *openapi3.T
	docRouter routers.Router
	docErr    error
)

func loadDoc() (*openapi3.T, routers.Router, error) {
	docOnce.Do(func() {
		loader := openapi3.NewLoader()
		doc, docErr = loader.LoadFromData(httpapi.OpenAPI)
		if docErr != nil {
			return
		}
		if docErr = doc.Validate(context.Background()); docErr != nil {
			return
		}
		docRouter, docErr = legacy.NewRouter(doc)
	})
	return doc, docRouter, docErr
}

// validator is a RoundTripper that checks every response against the OpenAPI document: the
// operation's declared response (status, headers, body schema), or the Error schema for paths
// the document does not have. Every response must carry X-Request-Id.
type validator struct {
	t    testing.TB
	next http.RoundTripper
}

func newValidator(t testing.TB, next http.RoundTripper) *validator {
	if _, _, err := loadDoc(); err != nil {
		t.Fatalf("OpenAPI document: %v", err)
	}
	return &validator{t: t, next: next}
}

func (v *validator) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err := validateResponse(req, resp, body); err != nil {
		v.t.Errorf("%s %s → %d does not match the OpenAPI document: %v\nbody: %s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
	return resp, nil
}

func validateResponse(req *http.Request, resp *http.Response, body []byte) error {
	d, router, _ := loadDoc()
	if resp.Header.Get("X-Request-Id") == "" {
		return errString("no X-Request-Id")
	}
	if req.Method == http.MethodOptions && req.Header.Get("Access-Control-Request-Method") != "" {
		return nil // a CORS preflight: protocol, not API
	}
	// Match on the path alone: the document's server is "/".
	u := *req.URL
	u.Scheme, u.Host = "", ""
	r := req.Clone(context.Background())
	r.URL = &u
	route, params, err := router.FindRoute(r)
	if err != nil {
		if resp.StatusCode < 400 {
			return errString("a success on a path the document does not have")
		}
		var decoded any
		if err := json.Unmarshal(body, &decoded); err != nil {
			return err
		}
		return d.Components.Schemas["Error"].Value.VisitJSON(decoded)
	}
	return openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	})
}

type errString string

func (e errString) Error() string { return string(e) }

func discardLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }
