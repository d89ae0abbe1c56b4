package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestLoggerCarriesContextIDs(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "call-manager", slog.LevelInfo)
	ctx := WithCallID(WithCustomerID(WithRequestID(context.Background(), "req-1"), "cus-1"), "call-1")
	log.InfoContext(ctx, "call created")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("not JSON: %q", buf.String())
	}
	for k, want := range map[string]string{"service": "call-manager", "request_id": "req-1", "customer_id": "cus-1", "call_id": "call-1", "msg": "call created"} {
		if got := line[k]; got != want {
			t.Errorf("%s = %v, want %s", k, got, want)
		}
	}
}

func TestValidRequestID(t *testing.T) {
	tests := map[string]bool{"abc-DEF_123": true, "": false, "has space": false, "a/b": false,
		string(bytes.Repeat([]byte("a"), 64)): true, string(bytes.Repeat([]byte("a"), 65)): false}
	for id, want := range tests {
		if got := ValidRequestID(id); got != want {
			t.Errorf("ValidRequestID(%q) = %v, want %v", id, got, want)
		}
	}
	if !ValidRequestID(NewRequestID()) {
		t.Fatal("generated id is not valid")
	}
}

func TestAdminReadyz(t *testing.T) {
	healthy := true
	a := NewAdmin("127.0.0.1:0", NewRegistry(), map[string]Check{
		"mysql": func(context.Context) error {
			if !healthy {
				return errors.New("down")
			}
			return nil
		},
	})
	get := func(path string) int {
		rec := httptest.NewRecorder()
		a.srv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if got := get("/readyz"); got != 200 {
		t.Fatalf("ready = %d, want 200", got)
	}
	healthy = false
	if got := get("/readyz"); got != 503 {
		t.Fatalf("ready with failed check = %d, want 503", got)
	}
	healthy = true
	a.Drain()
	if got := get("/readyz"); got != 503 {
		t.Fatalf("ready while draining = %d, want 503", got)
	}
	if got := get("/healthz"); got != 200 {
		t.Fatalf("healthz = %d, want 200", got)
	}
	if got := get("/metrics"); got != 200 {
		t.Fatalf("metrics = %d, want 200", got)
	}
}

// A connection that was opened but never sent a request (a probe that gave up, a client's spare
// connection) must not hold the stop back: net/http counts it as idle only after 5 s.
func TestAdminStopsPromptlyWithASilentConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	a := NewAdmin(addr, NewRegistry(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	var c net.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin server never listened: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer c.Close()
	// The connection is accepted once the server answers a request on another one.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil on a clean stop", err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("stop took %s with a silent connection open, want about 1 s", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its ctx ending")
	}
}
