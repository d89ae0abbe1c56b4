package httpapi_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/pkg/testenv"

	"voipbin/bin-api-manager/internal/httpapi"
)

func deadRedis(t *testing.T) *redis.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, DialerRetries: 1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRateLimits(t *testing.T) {
	t.Run("per IP", func(t *testing.T) {
		h := newHarness(t, options{ipLimit: httpapi.RateLimit{Rate: 1, Burst: 5}})
		var limited int
		for i := range 12 {
			resp, b := h.do("GET", "/ping", "", nil)
			if resp.StatusCode == 429 {
				limited++
				e := decodeError(t, b)
				secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
				if e.Reason != "RATE_LIMIT_EXCEEDED" || e.Status != "RESOURCE_EXHAUSTED" || err != nil || secs < 1 || secs > 2 {
					t.Fatalf("429 %s with Retry-After %q", b, resp.Header.Get("Retry-After"))
				}
			} else if resp.StatusCode != 200 {
				t.Fatalf("request %d: %d", i, resp.StatusCode)
			}
		}
		// newHarness's login took one token of the burst.
		if limited < 6 || limited > 8 {
			t.Fatalf("%d of 12 requests limited with burst 5, want about 7", limited)
		}
		if got := h.metric(t, "api_rate_limited_total", "ip"); got != float64(limited) {
			t.Fatalf("api_rate_limited_total{scope=ip} = %v, want %d", got, limited)
		}
	})
	t.Run("per customer", func(t *testing.T) {
		h := newHarness(t, options{customerLimit: httpapi.RateLimit{Rate: 1, Burst: 3}})
		a := h.newCustomer("alpha")
		b := h.newCustomer("bravo")
		codes := map[int]int{}
		for range 6 {
			resp, _ := h.do("GET", "/v1.0/calls", a.token, nil)
			codes[resp.StatusCode]++
		}
		if codes[200] != 3 || codes[429] != 3 {
			t.Fatalf("alpha's codes %v, want 3 × 200 and 3 × 429", codes)
		}
		h.must(200, "GET", "/v1.0/calls", b.token, nil) // bravo has its own budget
	})
}

// TestRedisDownLimitsInProcess: with Redis down the limits are not lifted (they used to be: the
// limiter failed open) but counted in process, requests are not slowed by waiting for Redis, and
// an Idempotency-Key, which cannot be honoured, is refused.
func TestRedisDownLimitsInProcess(t *testing.T) {
	dead := deadRedis(t)
	h := newHarness(t, options{ipLimit: httpapi.RateLimit{Rate: 1000, Burst: 1000},
		customerLimit: httpapi.RateLimit{Rate: 1, Burst: 2}, limiterRedis: dead, idemRedis: dead})
	c := h.newCustomer("acme")
	h.limiterCalls.Store(0)
	start := time.Now()
	h.must(200, "GET", "/v1.0/calls", c.token, nil)
	h.must(200, "GET", "/v1.0/calls", c.token, nil)
	resp, b := h.do("GET", "/v1.0/calls", c.token, nil)
	if e := decodeError(t, b); resp.StatusCode != 429 || e.Reason != "RATE_LIMIT_EXCEEDED" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third request of a burst of 2 with Redis down: %d %s (Retry-After %q), want 429", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	// After a failure the shared limiter is left alone for a second instead of slowing every request.
	if calls, most := h.limiterCalls.Load(), 2*(1+int64(time.Since(start)/time.Second)); calls > most {
		t.Errorf("the limiter was asked %d times in %s with Redis known to be down, want at most %d", calls, time.Since(start), most)
	}
	if got := h.metric(t, "api_rate_limiter_errors_total", "ip"); got < 3 {
		t.Fatalf("limiter errors counted %v, want at least 3", got)
	}
	if got := h.metric(t, "api_rate_limiter_errors_total", "customer"); got < 3 {
		t.Fatalf("customer limiter errors counted %v, want at least 3", got)
	}
	// An Idempotency-Key cannot be honoured without Redis: refused, and nothing is placed.
	d := h.newCustomer("dyne")
	h.expectError(503, "SERVICE_UNAVAILABLE", "POST", "/v1.0/calls", d.token, callBody("+15557654321"), "Idempotency-Key", "k1")
	if n := h.calls.createCount(); n != 0 {
		t.Fatalf("%d calls placed without the idempotency store", n)
	}
	h.must(201, "POST", "/v1.0/calls", d.token, callBody("+15557654321"))
}

// metric is the value of the counter or gauge name with the label scope (or any labels if "").
func (h *harness) metric(t *testing.T, name, scope string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := scope == ""
			for _, l := range m.GetLabel() {
				if l.GetValue() == scope { // the scope label, or any other (reason, …)
					match = true
				}
			}
			if match {
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return total
}

func TestRoutingErrorsAndPanics(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	h.expectError(404, "ROUTE_NOT_FOUND", "GET", "/v1.0/nothing", c.token, nil)
	h.expectError(404, "ROUTE_NOT_FOUND", "GET", "/v2/calls", "", nil)
	resp, b := h.do("PUT", "/v1.0/calls", c.token, nil)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, POST" || decodeError(t, b).Reason != "METHOD_NOT_ALLOWED" {
		t.Fatalf("PUT /v1.0/calls: %d Allow %q %s", resp.StatusCode, resp.Header.Get("Allow"), b)
	}
	resp, _ = h.do("POST", "/v1.0/calls/"+testenv.Name("x"), c.token, nil)
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, PATCH, DELETE" {
		t.Fatalf("POST /v1.0/calls/{id}: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	// A panic in a handler (here the WebSocket seam's) is a 500 envelope, and the server lives on.
	e := h.expectError(500, "INTERNAL_ERROR", "GET", "/v1.0/ws?panic=1", "", nil)
	if e.Status != "INTERNAL" || strings.Contains(e.Message, "boom") {
		t.Fatalf("panic answer = %+v", e)
	}
	if h.metric(t, "api_http_panics_total", "") != 1 {
		t.Fatal("the panic was not counted")
	}
	h.must(200, "GET", "/ping", "", nil)
	if resp, b := h.do("GET", "/v1.0/ws", "", nil); resp.StatusCode != 400 || decodeError(t, b).Reason != "WEBSOCKET_UPGRADE_REQUIRED" {
		t.Fatalf("GET /v1.0/ws did not reach the WebSocket handler: %d", resp.StatusCode)
	}
}

func TestManagerUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("nobody serves the queue", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, options{callQueue: testenv.Name("nobody")})
		c := h.newCustomer("acme")
		for range 7 { // unroutable at first, then the breaker opens: both 503 SERVICE_UNAVAILABLE
			h.expectError(503, "SERVICE_UNAVAILABLE", "GET", "/v1.0/calls", c.token, nil)
		}
		e := h.expectError(503, "SERVICE_UNAVAILABLE", "POST", "/v1.0/calls", c.token, callBody("+15557654321"))
		if !strings.Contains(e.Message, "circuit open") {
			t.Fatalf("after repeated failures: %q, want the breaker open", e.Message)
		}
		h.must(200, "GET", "/v1.0/billing_accounts", c.token, nil) // other managers are unaffected
	})
	t.Run("the manager does not answer in time", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, options{})
		c := h.newCustomer("acme")
		start := time.Now()
		h.expectError(503, "REQUEST_TIMEOUT", "POST", "/v1.0/calls", c.token, callBody(targetSilent))
		if took := time.Since(start); took < 2*time.Second {
			t.Fatalf("timed out after %s, want the 3 s RPC deadline", took)
		}
	})
}

func TestCORS(t *testing.T) {
	h := newHarness(t, options{cors: []string{"https://app.example.com"}})
	resp, _ := h.do("OPTIONS", "/v1.0/calls", "", nil, "Origin", "https://app.example.com", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "Authorization, Idempotency-Key")
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		resp.Header.Get("Access-Control-Allow-Credentials") != "true" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Idempotency-Key") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = h.do("GET", "/ping", "", nil, "Origin", "https://app.example.com")
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" || !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "X-Request-Id") {
		t.Fatalf("simple request: %v", resp.Header)
	}
	resp, _ = h.do("GET", "/ping", "", nil, "Origin", "https://evil.example.com")
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("another origin allowed: %v", resp.Header)
	}
	if resp, _ := h.do("OPTIONS", "/v1.0/calls", "", nil, "Origin", "https://evil.example.com", "Access-Control-Request-Method", "POST"); resp.StatusCode == 204 {
		t.Fatal("a preflight of another origin succeeded")
	}
}
