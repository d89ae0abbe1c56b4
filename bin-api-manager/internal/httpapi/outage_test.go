package httpapi_test

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strconv"
	"testing"

	"github.com/go-sql-driver/mysql"

	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
)

// TestDependencyDownIs503: a manager whose database is down (its handler returns the driver's
// error, which the RPC edge classifies), and a manager nobody serves, both answer the public 503
// SERVICE_UNAVAILABLE with Retry-After, never 500, so clients that retry only 503 retry.
func TestDependencyDownIs503(t *testing.T) {
	down := testenv.Name("call-db-down")
	startServer(t, testenv.Rabbit(t), down, map[string]rpc.HandlerFunc{
		callapi.RouteList: func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			return nil, fmt.Errorf("list calls: %w", driver.ErrBadConn)
		},
		callapi.RouteGet: func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			return nil, fmt.Errorf("get call: %w", &mysql.MySQLError{Number: 1040, Message: "Too many connections"})
		},
	})
	cases := []struct {
		name, queue, path string
	}{
		{"database connection lost", down, "/v1.0/calls"},
		{"database too many connections", down, "/v1.0/calls/" + "7b0c1a52-3d0e-4f7e-9d55-0a1b2c3d4e5f"},
		{"no manager consumes the queue", testenv.Name("nobody"), "/v1.0/calls"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, options{callQueue: tc.queue})
			resp, body := h.do("GET", tc.path, h.root, nil)
			if resp.StatusCode != 503 {
				t.Fatalf("GET %s: %d %s, want 503", tc.path, resp.StatusCode, body)
			}
			e := decodeError(t, body)
			if e.Status != "UNAVAILABLE" || e.Reason != "SERVICE_UNAVAILABLE" {
				t.Errorf("error %s/%s, want UNAVAILABLE/SERVICE_UNAVAILABLE: %s", e.Status, e.Reason, body)
			}
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Errorf("Retry-After %q, want a positive number of seconds", resp.Header.Get("Retry-After"))
			}
		})
	}
}
