package ws

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-api-manager/internal/cache"
	"voipbin/pkg/testenv"
)

// TestConnectionLimits: past the per-customer or per-address cap an upgrade is refused with 429,
// the error envelope and Retry-After; a connection that ends gives its slot back.
func TestConnectionLimits(t *testing.T) {
	s := newStack(t, Options{MaxConnectionsPerCustomer: 2, MaxConnectionsPerIP: 3})
	a, b := uuid.NewString(), uuid.NewString()
	refused := func(token, from, wantScope string) {
		t.Helper()
		d := *websocket.DefaultDialer
		d.NetDialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ws, resp, err := d.DialContext(ctx, s.url+"?token="+token, nil)
		if err == nil {
			_ = ws.Close()
			t.Fatalf("connection %s from %s accepted, want refused (%s limit)", token, from, wantScope)
		}
		if resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != connRetryAfter {
			t.Fatalf("refusal: %v %+v", err, resp)
		}
		body, _ := io.ReadAll(resp.Body)
		var env struct {
			Error struct {
				Status    string `json:"status"`
				Reason    string `json:"reason"`
				RequestID string `json:"request_id"`
			} `json:"error"`
		}
		if err := json.Unmarshal(body, &env); err != nil || env.Error.Status != "RESOURCE_EXHAUSTED" ||
			env.Error.Reason != ReasonConnectionLimit || env.Error.RequestID == "" {
			t.Fatalf("refusal body %s", body)
		}
	}
	dialFrom := func(token, from string) *client {
		t.Helper()
		d := *websocket.DefaultDialer
		d.NetDialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}).DialContext
		ws, _, err := d.Dial(s.url+"?token="+token, nil)
		if err != nil {
			t.Fatalf("dial %s from %s: %v", token, from, err)
		}
		return newClient(t, ws)
	}

	a1 := dialFrom("cust:"+a, "127.0.0.1")
	dialFrom("cust:"+a, "127.0.0.1")
	refused("cust:"+a, "127.0.0.2", "customer") // a's third, whatever the address
	dialFrom("cust:"+b, "127.0.0.1")
	refused("cust:"+b, "127.0.0.1", "ip") // the address's fourth
	refused("admin", "127.0.0.1", "ip")   // a superadmin is limited per address
	dialFrom("cust:"+b, "127.0.0.2")      // another address has its own count
	dialFrom("admin", "127.0.0.2")        // and a superadmin no customer count
	if got := s.metric(t, "ws_connections_refused_total", "scope", "customer"); got != 1 {
		t.Errorf("refused for the customer limit: %v, want 1", got)
	}
	if got := s.metric(t, "ws_connections_refused_total", "scope", "ip"); got != 2 {
		t.Errorf("refused for the address limit: %v, want 2", got)
	}

	// A connection that ends frees its slots (customer and address).
	_ = a1.ws.Close()
	eventually(t, "a's slot to be given back", func() bool {
		ws, _, err := websocket.DefaultDialer.Dial(s.url+"?token=cust:"+a, nil)
		if err != nil {
			return false
		}
		newClient(t, ws)
		return true
	})
}

// TestConnectionLimitsAcrossInstances: with leases in Redis two instances share the caps; with
// Redis down an instance caps its own connections instead of lifting the caps.
func TestConnectionLimitsAcrossInstances(t *testing.T) {
	rdb := testenv.Redis(t)
	prefix := testenv.Name("wslease") + ":"
	t.Cleanup(func() {
		keys, _ := rdb.Keys(context.Background(), prefix+"*").Result()
		if len(keys) > 0 {
			rdb.Del(context.Background(), keys...)
		}
	})
	leases := cache.NewLeases(rdb, prefix, 3*time.Second)
	opts := Options{MaxConnectionsPerCustomer: 2, MaxConnectionsPerIP: 100}
	shared := func(h *Handler) { h.limits.leases = leases }
	a := newStackOn(t, testenv.Rabbit(t), opts, shared)
	b := newStackOn(t, testenv.Rabbit(t), opts, shared)
	cust := uuid.NewString()
	a.dial(t, "cust:"+cust)
	b.dial(t, "cust:"+cust)
	for name, s := range map[string]*stack{"a": a, "b": b} {
		ws, resp, err := s.tryDial("cust:"+cust, nil)
		if err == nil {
			_ = ws.Close()
			t.Fatalf("instance %s accepted the customer's third connection (cap 2 across instances)", name)
		}
		if resp == nil || resp.StatusCode != 429 {
			t.Fatalf("instance %s: %v %+v, want 429", name, err, resp)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	dead := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	t.Cleanup(func() { _ = dead.Close() })
	c := newStackOn(t, testenv.Rabbit(t), opts, func(h *Handler) { h.limits.leases = cache.NewLeases(dead, prefix, time.Second) })
	other := uuid.NewString()
	c.dial(t, "cust:"+other)
	c.dial(t, "cust:"+other)
	if ws, resp, err := c.tryDial("cust:"+other, nil); err == nil || resp == nil || resp.StatusCode != 429 {
		if ws != nil {
			_ = ws.Close()
		}
		t.Fatalf("with Redis down the third connection was not refused: %v", err)
	}
	if got := c.metric(t, "ws_connection_lease_errors_total"); got < 2 {
		t.Fatalf("ws_connection_lease_errors_total = %v, want the failures counted", got)
	}
}
