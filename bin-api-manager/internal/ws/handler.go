// Package ws is api-manager's WebSocket endpoint, GET /v1.0/ws (DESIGN §7). It authenticates the
// upgrade with the REST API's credentials, takes subscribe/unsubscribe frames whose topics a
// customer may only aim at its own customer (a superadmin at any), and fans out the events of
// call.events and billing.events to the matching connections. The events come through one
// exclusive, server-named queue per instance, bound to customer_id.<id>.# only while a connection
// of this instance holds a topic of that customer (reference-counted). Every connection has a
// bounded send buffer and its own writer: a client that cannot keep up is disconnected with a
// reason and never delays the others.
package ws

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
	"voipbin/pkg/outage"
	"voipbin/pkg/telemetry"
)

// Identity is the authenticated caller of a WebSocket upgrade.
type Identity struct {
	// CustomerID is the caller's customer; empty for a superadmin.
	CustomerID string
	// Superadmin may subscribe to the topics of any customer.
	Superadmin bool
	// Expires, when set, is when the credential expires: the socket is closed then with
	// CloseCredentialsExpired.
	Expires time.Time
	// Check, when set, tells whether the credential still stands; it is called every
	// RevalidateInterval and on Handler.Revalidate. An UNAUTHENTICATED or PERMISSION_DENIED
	// answer closes the socket with CloseCredentialsRevoked; UNAVAILABLE or INTERNAL (the answer
	// is unknown) closes it with 1013 once no check succeeded for RevalidateGrace.
	Check func(ctx context.Context) error
}

// Authenticator authenticates the upgrade request with the REST API's credentials (Bearer
// header, ?token=, ?accesskey=, token cookie). Its failures should be *apierr.Error values
// (UNAUTHENTICATED/AUTHENTICATION_REQUIRED, UNAUTHENTICATED/INVALID_CREDENTIALS); they are
// answered with the platform's JSON error envelope before any upgrade.
type Authenticator interface {
	Authenticate(r *http.Request) (Identity, error)
}

// AuthFunc adapts a function to Authenticator.
type AuthFunc func(r *http.Request) (Identity, error)

// Authenticate calls f.
func (f AuthFunc) Authenticate(r *http.Request) (Identity, error) { return f(r) }

// Reasons of the HTTP refusals this package writes before an upgrade.
const (
	ReasonOriginNotAllowed  = "ORIGIN_NOT_ALLOWED"
	ReasonHandshakeInvalid  = "WEBSOCKET_HANDSHAKE_INVALID"
	ReasonEventStreamNotYet = "EVENT_STREAM_STARTING"
)

// ProbeExchange is the topic exchange on which each instance binds a key of its own, to learn by a
// mandatory publish when its event queue exists and is bound. Nothing else uses it.
const ProbeExchange = "api-manager.ws.probe"

// Options tune the endpoint; zero values take the defaults of DESIGN §7.
type Options struct {
	PingInterval  time.Duration // default 10 s
	ReadTimeout   time.Duration // no frame or pong for this long ends the connection; default 60 s
	WriteTimeout  time.Duration // one frame's write deadline; default 10 s
	SendBuffer    int           // frames waiting per connection before it counts as slow; default 256
	MaxTopics     int           // topics per connection (and per frame); default 100
	MaxFrameBytes int64         // largest client frame; default 64 KiB
	BindTimeout   time.Duration // broker round trip of a (un)binding; default 10 s
	// RevalidateInterval is how often every socket's credential is checked again (Identity.Check)
	// besides the checks Handler.Revalidate asks for; default 2 s.
	RevalidateInterval time.Duration
	// RevalidateGrace is how long a socket stays open while its credential cannot be checked;
	// default 10 s.
	RevalidateGrace time.Duration
	// SocketWriteBuffer, when > 0, sets the kernel send buffer (SO_SNDBUF) of each plain-TCP
	// connection, bounding what a stalled client can hold in the kernel besides SendBuffer.
	SocketWriteBuffer int
	// MaxConnectionsPerCustomer and MaxConnectionsPerIP cap the connections open on this
	// instance per customer and per client address (0: no cap); over a cap the upgrade is refused
	// with 429 WEBSOCKET_CONNECTION_LIMIT and Retry-After.
	MaxConnectionsPerCustomer int
	MaxConnectionsPerIP       int
	// Exchanges consumed; default call.events and billing.events.
	Exchanges []string
	// CheckOrigin overrides the default origin policy: no Origin header, the same host, or an
	// explicit credential (not the cookie, which a browser adds to cross-site requests too).
	CheckOrigin func(r *http.Request) bool
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.PingInterval, 10*time.Second)
	def(&o.ReadTimeout, 60*time.Second)
	def(&o.WriteTimeout, 10*time.Second)
	def(&o.BindTimeout, 10*time.Second)
	def(&o.RevalidateInterval, 2*time.Second)
	def(&o.RevalidateGrace, 10*time.Second)
	if o.SendBuffer <= 0 {
		o.SendBuffer = 256
	}
	if o.MaxTopics <= 0 {
		o.MaxTopics = 100
	}
	if o.MaxFrameBytes <= 0 {
		o.MaxFrameBytes = 64 << 10
	}
	if len(o.Exchanges) == 0 {
		o.Exchanges = []string{event.ExchangeCall, event.ExchangeBilling}
	}
	return o
}

// Deps are what main hands the endpoint.
type Deps struct {
	Conn       *amqp.Conn
	Log        *slog.Logger
	Registerer prometheus.Registerer
	Auth       Authenticator
	Options    Options
	// Leases, when set, count connections across every instance for the connection caps (Redis);
	// without it each instance caps its own.
	Leases ConnLeases
}

// Handler serves GET /v1.0/ws; Run consumes the events it fans out.
type Handler struct {
	opts     Options
	log      *slog.Logger
	auth     Authenticator
	conn     *amqp.Conn
	metrics  *metrics
	hub      *hub
	bindings *bindings
	limits   *connLimits
	sub      *event.Subscriber
	upgrader websocket.Upgrader
	probeKey string

	ready      atomic.Bool   // the event queue exists and is bound
	revalidate chan struct{} // Revalidate's requests (capacity 1)

	mu      sync.Mutex
	stopped bool
	conns   map[*conn]struct{}
	wg      sync.WaitGroup // connections being served
}

// NewHandler builds the endpoint. Nothing runs until Run.
func NewHandler(d Deps) *Handler {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{opts: d.Options.withDefaults(), log: log, auth: d.Auth, conn: d.Conn,
		metrics: newMetrics(d.Registerer), hub: newHub(), conns: map[*conn]struct{}{},
		probeKey: "api-manager.ws.probe." + telemetry.NewRequestID(), revalidate: make(chan struct{}, 1)}
	h.limits = newConnLimits(h.opts.MaxConnectionsPerCustomer, h.opts.MaxConnectionsPerIP, d.Leases, log,
		h.metrics.leaseErrors.Inc)
	// The probe binding lets Run learn, by a mandatory publish, that the queue exists and is bound.
	// It lives on an exchange of its own: other services bind "#" on call.events, so a probe there
	// would be routed before this queue exists.
	// The queue is exclusive to this instance: when the broker connection is lost, so is the
	// queue and what it held; the subscriber makes a new one, and OnResume tells the clients.
	h.sub = event.NewSubscriber(d.Conn, log, event.SubscriberOptions{Queue: "", Registerer: d.Registerer,
		Bindings: []event.Binding{{Exchange: ProbeExchange, Key: h.probeKey}}, OnResume: h.streamResumed}, h.handleEvent)
	h.bindings = newBindings(h.sub, h.opts.Exchanges, func(delta int) { h.metrics.bindings.Add(float64(delta)) })
	h.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		WriteBufferPool:  &sync.Pool{},                             // idle connections hold no write buffer
		CheckOrigin:      func(*http.Request) bool { return true }, // checked before, with a JSON answer
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			code := ReasonHandshakeInvalid
			if status == http.StatusMethodNotAllowed {
				code = apierr.ReasonMethodNotAllowed
			}
			writeError(w, r, apierr.New(apierr.StatusFromHTTP(status), code, reason.Error()))
		},
	}
	return h
}

// Run consumes the event queue until ctx ends, then closes every connection with 1001 and waits
// for them to finish.
func (h *Handler) Run(ctx context.Context) error {
	probeCtx, stopProbe := context.WithCancel(ctx)
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		h.probe(probeCtx)
	}()
	revalidated := make(chan struct{})
	go func() {
		defer close(revalidated)
		h.revalidateLoop(probeCtx)
	}()
	err := h.sub.Run(ctx)
	stopProbe()
	<-probed
	<-revalidated
	h.shutdown()
	if err != nil {
		return fmt.Errorf("websocket event consumer: %w", err)
	}
	return nil
}

// probe publishes a mandatory message to the probe key until the broker routes it: from then on
// the queue exists and bindings made by subscriptions take effect at once. Before the subscriber's
// setup the exchange may not exist (the publish fails) or the key is unbound (unroutable).
func (h *Handler) probe(ctx context.Context) {
	for {
		ev, _ := event.New("api-manager.ws.probe", "", "", "", 0, nil)
		body, _ := json.Marshal(ev)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.conn.Publish(pctx, ProbeExchange, h.probeKey, amqp.Publishing{ContentType: "application/json",
			MessageId: ev.EventID, Body: body}, amqp.PublishOptions{Mandatory: true})
		cancel()
		if err == nil {
			h.ready.Store(true)
			h.log.InfoContext(ctx, "websocket event stream ready", "exchanges", h.opts.Exchanges)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Check reports whether the endpoint can serve subscriptions, for /readyz.
func (h *Handler) Check(ctx context.Context) error {
	if !h.ready.Load() {
		return errors.New("websocket event queue not consuming yet")
	}
	return h.conn.Check(ctx)
}

func (h *Handler) shutdown() {
	h.mu.Lock()
	h.stopped = true
	conns := make([]*conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()
	h.bindings.detach() // the queue went with the consumer: nothing left to unbind
	for _, c := range conns {
		c.closeWith(websocket.CloseGoingAway, closeText(ReasonShuttingDown, "server shutting down"), causeShutdown)
	}
	h.wg.Wait()
}

// handleEvent fans one event out. It never fails: the queue is this instance's alone and has no
// dead-letter queue, and a connection that cannot take the event is disconnected and counted.
func (h *Handler) handleEvent(_ context.Context, ev event.Event) error {
	if ev.CustomerID == "" { // readiness probes
		return nil
	}
	h.metrics.received.Inc()
	frame, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event envelope: %w", err)
	}
	h.hub.dispatch(ev, frame)
	return nil
}

func (h *Handler) acquire(ctx context.Context, scope string) error {
	bctx, cancel := context.WithTimeout(ctx, h.opts.BindTimeout)
	defer cancel()
	return h.bindings.acquire(bctx, scope)
}

func (h *Handler) release(ctx context.Context, scope string) {
	bctx, cancel := context.WithTimeout(ctx, h.opts.BindTimeout)
	defer cancel()
	if err := h.bindings.release(bctx, scope); err != nil {
		h.log.WarnContext(ctx, "websocket unbind failed; the binding stays until the next reconnection", "scope", scope, "error", err)
	}
}

// ServeHTTP authenticates and upgrades the request, then serves the connection until it ends.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ident, err := h.auth.Authenticate(r)
	if err != nil {
		e := apierr.From(outage.Classify(err)) // a credential store that is down is 503, not 500
		if e.Status == apierr.Internal || e.Status == apierr.Unavailable {
			h.log.ErrorContext(r.Context(), "websocket authentication failed", "error", err)
		}
		writeError(w, r, e)
		return
	}
	ctx := telemetry.WithCustomerID(context.WithoutCancel(r.Context()), ident.CustomerID)
	if !h.originAllowed(r) {
		writeError(w, r, apierr.New(apierr.PermissionDenied, ReasonOriginNotAllowed,
			"cross-origin WebSocket with the token cookie is not allowed; pass the token explicitly"))
		return
	}
	if !h.ready.Load() {
		writeError(w, r, apierr.New(apierr.Unavailable, ReasonEventStreamNotYet, "the event stream is starting; try again"))
		return
	}
	release, scope, err := h.limits.take(ctx, ident, remoteIP(r))
	if err != nil {
		h.metrics.refused.WithLabelValues(scope).Inc()
		w.Header().Set("Retry-After", connRetryAfter)
		writeError(w, r, apierr.From(err))
		return
	}
	defer release()
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		writeError(w, r, apierr.New(apierr.Unavailable, ReasonServiceUnavailable, "the server is shutting down"))
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()

	wsc, err := h.upgrader.Upgrade(hijackable(w), r, nil)
	if err != nil {
		return // the upgrader answered with the error envelope
	}
	if n := h.opts.SocketWriteBuffer; n > 0 {
		if tc, ok := wsc.NetConn().(*net.TCPConn); ok {
			_ = tc.SetWriteBuffer(n)
		}
	}
	c := newConn(ctx, h, wsc, ident)
	h.mu.Lock()
	h.conns[c] = struct{}{}
	stopped := h.stopped
	h.mu.Unlock()
	if stopped {
		c.closeWith(websocket.CloseGoingAway, closeText(ReasonShuttingDown, "server shutting down"), causeShutdown)
	}
	h.metrics.connections.Inc()
	h.log.InfoContext(ctx, "websocket connected", "superadmin", ident.Superadmin, "remote", r.RemoteAddr)
	c.serve()
	h.metrics.connections.Dec()
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// originAllowed guards against cross-site WebSocket hijacking: a browser sends cookies with a
// cross-site upgrade, so a cross-origin request is accepted only with an explicit credential (an
// Authorization header, ?token= or ?accesskey=), which a cross-site page cannot know and which the
// gateway's authenticator prefers to the cookie (httpauth.Credential).
func (h *Handler) originAllowed(r *http.Request) bool {
	if h.opts.CheckOrigin != nil {
		return h.opts.CheckOrigin(r)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	q := r.URL.Query()
	return r.Header.Get("Authorization") != "" || q.Get("token") != "" || q.Get("accesskey") != ""
}

// hijackable lets the upgrade through middleware whose ResponseWriter wraps the server's without
// implementing http.Hijacker itself (but exposing Unwrap, as http.ResponseController expects).
func hijackable(w http.ResponseWriter) http.ResponseWriter {
	if _, ok := w.(http.Hijacker); ok {
		return w
	}
	return hijacker{w}
}

type hijacker struct{ http.ResponseWriter }

func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(h.ResponseWriter).Hijack()
}

func (h hijacker) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// errorBody is the "error" object of the public error envelope (DESIGN §5).
type errorBody struct {
	Status    apierr.Status   `json:"status"`
	Reason    string          `json:"reason"`
	Message   string          `json:"message"`
	RequestID string          `json:"request_id,omitempty"`
	Details   []apierr.Detail `json:"details,omitempty"`
}

func writeError(w http.ResponseWriter, r *http.Request, e *apierr.Error) {
	rid := telemetry.RequestID(r.Context())
	hdr := w.Header()
	if rid != "" && hdr.Get("X-Request-Id") == "" {
		hdr.Set("X-Request-Id", rid)
	}
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	if e.Status == apierr.Unavailable {
		hdr.Set("Retry-After", "1")
	}
	w.WriteHeader(e.HTTPStatus())
	_ = json.NewEncoder(w).Encode(struct {
		Error errorBody `json:"error"`
	}{errorBody{Status: e.Status, Reason: e.Reason, Message: e.Message, RequestID: rid, Details: e.Details}})
}
