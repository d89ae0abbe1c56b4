package rpcclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"voipbin/bin-api-manager/internal/rpcclient"
	"voipbin/pkg/apierr"
	"voipbin/pkg/rpc"
	"voipbin/pkg/telemetry"
)

type callerFunc func(ctx context.Context, queue string, req rpc.Request) (*rpc.Response, error)

func (f callerFunc) Call(ctx context.Context, queue string, req rpc.Request) (*rpc.Response, error) {
	return f(ctx, queue, req)
}

func TestLogsBothEndsWithTheRequestID(t *testing.T) {
	var buf bytes.Buffer
	log := telemetry.NewLogger(&buf, "test", slog.LevelDebug)
	reg := prometheus.NewRegistry()
	timeout := apierr.New(apierr.Unavailable, apierr.ReasonRequestTimeout, "late")
	c := rpcclient.New(callerFunc(func(_ context.Context, q string, req rpc.Request) (*rpc.Response, error) {
		if req.Method == "DELETE" {
			return nil, timeout
		}
		return &rpc.Response{StatusCode: 201}, nil
	}), log, reg)

	ctx := telemetry.WithCallID(telemetry.WithRequestID(context.Background(), "req-1"), "call-9")
	if _, err := c.Call(ctx, "q", rpc.Request{Method: "POST", Route: "/v1/calls"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Call(ctx, "q", rpc.Request{Method: "DELETE", Route: "/v1/calls/x"}); err != timeout {
		t.Fatalf("err = %v, want the wrapped caller's", err)
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, m)
	}
	want := []struct{ msg, level string }{{"rpc request sent", "INFO"}, {"rpc reply", "INFO"}, {"rpc request sent", "INFO"}, {"rpc reply", "WARN"}}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d: %s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		l := lines[i]
		if l["msg"] != w.msg || l["level"] != w.level || l["request_id"] != "req-1" || l["call_id"] != "call-9" {
			t.Errorf("line %d = %v, want %s at %s with the ids", i, l, w.msg, w.level)
		}
	}
	if lines[3]["reason"] != apierr.ReasonRequestTimeout || lines[3]["status_code"] != 503.0 {
		t.Errorf("failure line = %v", lines[3])
	}
	if n := testutil.CollectAndCount(reg, "api_rpc_client_seconds"); n != 2 {
		t.Errorf("histogram series = %d, want 2 (201 and 503)", n)
	}
}

func TestUnknownRouteIsNotAPublic404(t *testing.T) {
	c := rpcclient.New(callerFunc(func(context.Context, string, rpc.Request) (*rpc.Response, error) {
		e := apierr.New(apierr.NotFound, apierr.ReasonRouteNotFound, "no route GET /v1/new")
		return &rpc.Response{StatusCode: 404, Error: e}, e
	}), telemetry.NewLogger(&bytes.Buffer{}, "test", slog.LevelDebug), nil)
	_, err := c.Call(context.Background(), "q", rpc.Request{Method: "GET", Route: "/v1/new"})
	if e, ok := apierr.As(err); !ok || e.Status != apierr.Internal || e.Reason != apierr.ReasonInternal {
		t.Fatalf("err = %v, want INTERNAL", err)
	}
}
