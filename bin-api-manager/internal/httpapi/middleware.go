package httpapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-api-manager/internal/httpauth"
	"voipbin/pkg/apierr"
	"voipbin/pkg/telemetry"
)

type metrics struct {
	loginThrottled *prometheus.CounterVec
	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	limited        *prometheus.CounterVec
	limiterErrors  *prometheus.CounterVec
	authFailures   *prometheus.CounterVec
	replays        prometheus.Counter
	panics         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		loginThrottled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_login_throttled_total",
			Help: "Logins refused with 429 for too many failed logins, by scope (address, account)."}, []string{"scope"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_http_requests_total",
			Help: "HTTP requests by method, route pattern and status code."}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "api_http_request_seconds",
			Help:    "HTTP request latency by route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"method", "route"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_rate_limited_total",
			Help: "Requests refused with 429, by limit scope (ip, customer)."}, []string{"scope"}),
		limiterErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_rate_limiter_errors_total",
			Help: "Requests limited in process because the shared limiter (Redis) failed or was left alone after failing, by scope (ip, customer, login)."}, []string{"scope"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "api_auth_failures_total",
			Help: "Requests refused by authentication, by reason."}, []string{"reason"}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{Name: "api_idempotent_replays_total",
			Help: "Answers replayed for a repeated Idempotency-Key."}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "api_http_panics_total",
			Help: "Handler panics recovered into a 500."}),
	}
	if reg != nil {
		reg.MustRegister(m.loginThrottled, m.requests, m.latency, m.limited, m.limiterErrors, m.authFailures, m.replays, m.panics)
	}
	return m
}

// requestID takes a valid X-Request-Id or makes one, and puts it in the ctx (so logs and RPC
// headers carry it) and on the response.
func (a *api) requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !telemetry.ValidRequestID(id) {
			id = telemetry.NewRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(telemetry.WithRequestID(r.Context(), id)))
	})
}

// reqInfo is filled in by inner middleware for the access log, which runs outside them.
type reqInfo struct {
	customerID string
	userID     string
}

type reqInfoKey struct{}

// statusWriter records the status and size of a response. It keeps Flush and Hijack working
// (the WebSocket endpoint hijacks) and unwraps for http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot hijack")
	}
	w.status = http.StatusSwitchingProtocols
	return h.Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// accessLog writes one JSON line per request and feeds the request metrics.
func (a *api) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		info := &reqInfo{}
		sw := &statusWriter{ResponseWriter: w}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, info))
		defer func() {
			// After the recoverer has answered a panic; a panic it re-raised (ErrAbortHandler)
			// still gets its line.
			route := chi.RouteContext(r.Context()).RoutePattern()
			if route == "" {
				route = "unmatched"
			}
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			took := time.Since(start)
			code := strconv.Itoa(sw.status)
			a.m.requests.WithLabelValues(r.Method, route, code).Inc()
			a.m.latency.WithLabelValues(r.Method, route).Observe(took.Seconds())
			ctx := r.Context()
			if info.customerID != "" {
				ctx = telemetry.WithCustomerID(ctx, info.customerID)
			}
			attrs := []any{"method", r.Method, "route", route, "path", r.URL.Path, "status", sw.status,
				"duration_ms", math.Round(took.Seconds()*1e6) / 1e3, "bytes", sw.bytes, "remote_ip", clientIP(r)}
			if info.userID != "" {
				attrs = append(attrs, "user_id", info.userID)
			}
			a.log.InfoContext(ctx, "http request", attrs...)
		}()
		next.ServeHTTP(sw, r)
	})
}

// recoverer turns a panic into a 500 envelope and a log line with the stack.
func (a *api) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
				panic(p)
			}
			a.m.panics.Inc()
			a.log.ErrorContext(r.Context(), "handler panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if sw, ok := w.(*statusWriter); ok && sw.status != 0 {
				return // the response has begun; nothing sane can be added
			}
			a.fail(w, r, apierr.New(apierr.Internal, apierr.ReasonInternal, "internal error"))
		}()
		next.ServeHTTP(w, r)
	})
}

// cors answers preflights and marks responses for the allowed origins. With "*" any origin may
// call, but without credentials (the token cookie is then not sent cross-site).
func cors(origins []string) func(http.Handler) http.Handler {
	allowAll := slices.Contains(origins, "*")
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			origin := r.Header.Get("Origin")
			if origin == "" {
				next.ServeHTTP(w, r)
				return
			}
			h := w.Header()
			h.Add("Vary", "Origin")
			if !allowAll && !slices.Contains(origins, origin) {
				next.ServeHTTP(w, r)
				return
			}
			h.Set("Access-Control-Allow-Origin", origin)
			if !allowAll {
				h.Set("Access-Control-Allow-Credentials", "true")
			}
			h.Set("Access-Control-Expose-Headers", "X-Request-Id, ETag, Retry-After, Idempotent-Replayed")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
				h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, X-Request-Id, If-None-Match")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// clientIP is the peer's address. Forwarded headers are not trusted: put the gateway behind a
// proxy that terminates connections per client, or limit at the proxy.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limiterTimeout bounds a limiter call, so a hung Redis slows a request by at most this much.
const limiterTimeout = 250 * time.Millisecond

// limiterBackoff is how long the shared limiter is left alone after it failed: requests are then
// limited in process without waiting for a Redis that is known to be down.
const limiterBackoff = time.Second

// rateLimit refuses requests over limit with 429 RATE_LIMIT_EXCEEDED and Retry-After. When the
// shared limiter (Redis) fails or is slower than limiterTimeout, the request is limited by the
// in-process limiter instead (the same limit, counted per instance), the failure is counted, and
// the shared limiter is skipped for limiterBackoff: Redis being down or slow must neither lift the
// limits nor slow callers down.
func (a *api) rateLimit(scope string, l Limiter, limit RateLimit, key func(*http.Request) string) func(http.Handler) http.Handler {
	var lastWarn, downUntil atomic.Int64
	return func(next http.Handler) http.Handler {
		if l == nil || limit.Rate <= 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			now := time.Now()
			k := key(r)
			var allowed bool
			var retry time.Duration
			if now.UnixNano() < downUntil.Load() {
				a.m.limiterErrors.WithLabelValues(scope).Inc()
				allowed, retry = a.local.Allow(scope+":"+k, limit.Rate, limit.Burst)
			} else {
				ctx, cancel := context.WithTimeout(r.Context(), limiterTimeout)
				var err error
				allowed, retry, err = l.Allow(ctx, k, limit.Rate, limit.Burst)
				cancel()
				if err != nil {
					a.m.limiterErrors.WithLabelValues(scope).Inc()
					downUntil.Store(time.Now().Add(limiterBackoff).UnixNano())
					// One warning per 10 s is enough to tell an operator; the counter has the rest.
					if now.Unix()-lastWarn.Load() >= 10 {
						lastWarn.Store(now.Unix())
						a.log.WarnContext(r.Context(), "rate limiter unavailable, limiting in process", "scope", scope, "error", err)
					}
					allowed, retry = a.local.Allow(scope+":"+k, limit.Rate, limit.Burst)
				}
			}
			if !allowed {
				a.m.limited.WithLabelValues(scope).Inc()
				secs := max(1, int(math.Ceil(retry.Seconds())))
				w.Header().Set("Retry-After", strconv.Itoa(secs))
				a.fail(w, r, apierr.Newf(apierr.ResourceExhausted, ReasonRateLimitExceeded,
					"too many requests (%s limit); retry after %d s", scope, secs))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// authenticate requires a valid credential and puts the caller's identity in the ctx.
func (a *api) authenticate(auth *httpauth.Authenticator) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, err := auth.Authenticate(r)
			if err != nil {
				if e, ok := apierr.As(err); ok {
					a.m.authFailures.WithLabelValues(e.Reason).Inc()
				}
				a.fail(w, r, err)
				return
			}
			ctx := httpauth.WithIdentity(r.Context(), id)
			if id.CustomerID != "" {
				ctx = telemetry.WithCustomerID(ctx, id.CustomerID)
			}
			if info, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
				info.customerID, info.userID = id.CustomerID, id.UserID
			}
			a.log.DebugContext(ctx, "authenticated", "user_id", id.UserID, "method", id.Method, "permission", uint32(id.Permission))
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// limitBody caps request bodies at MaxBodyBytes; a larger declared body is refused at once.
func limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > MaxBodyBytes {
			writeError(w, r, errBodyTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

func (a *api) routeNotFound(w http.ResponseWriter, r *http.Request) {
	a.fail(w, r, apierr.Newf(apierr.NotFound, apierr.ReasonRouteNotFound, "no route %s %s", r.Method, r.URL.Path))
}

// methodNotAllowed answers 405 with an Allow header listing the methods the path has. The
// table of routes is read on first use, once every route is registered.
func (a *api) methodNotAllowed(routes chi.Routes) http.HandlerFunc {
	type route struct {
		method   string
		segments []string
	}
	var once sync.Once
	var table []route
	split := func(p string) []string { return strings.Split(strings.Trim(p, "/"), "/") }
	return func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() {
			_ = chi.Walk(routes, func(method, pattern string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
				table = append(table, route{method: method, segments: split(pattern)})
				return nil
			})
		})
		path := split(r.URL.Path)
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			for _, rt := range table {
				if rt.method == m && segmentsMatch(rt.segments, path) {
					allowed = append(allowed, m)
					break
				}
			}
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		a.fail(w, r, apierr.Newf(apierr.MethodNotAllowed, apierr.ReasonMethodNotAllowed,
			"method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
	}
}

// segmentsMatch matches path segments against a chi pattern's ("{id}" matches any one segment).
func segmentsMatch(pattern, path []string) bool {
	if len(pattern) != len(path) {
		return false
	}
	for i, p := range pattern {
		if !strings.HasPrefix(p, "{") && p != path[i] {
			return false
		}
	}
	return true
}
