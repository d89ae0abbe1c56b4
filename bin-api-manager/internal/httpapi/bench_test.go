package httpapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-api-manager/internal/httpapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
)

// BenchmarkGetCall measures the gateway's overhead on GET /v1.0/calls/{id}: the same call read
// straight through the RPC client (rpc-direct), and through the whole gateway — request id,
// access log, both rate limits in Redis, authentication (JWT, or access key through the Redis
// cache), UUID check, the RPC, ETag and the JSON answer — against a stub call manager on
// RabbitMQ that answers a fixed call. The overhead is the difference of the two. p50 and p99
// are reported per sub-benchmark; the parallel ones report throughput.
//
//	go test ./internal/httpapi -run '^$' -bench GetCall -benchtime 2000x -count 6
func BenchmarkGetCall(b *testing.B) {
	conn := testenv.Rabbit(b)
	queue := testenv.Name("stub_call")
	now := time.Now().UTC()
	call := callapi.Call{ID: uuid.NewString(), Source: callapi.Address{Type: "tel", Target: "+15551230000"},
		Destination: callapi.Address{Type: "tel", Target: "+15557654321"}, Status: callapi.StatusProgressing,
		Direction: callapi.DirectionOutgoing, TMCreate: now, TMUpdate: now}
	var body []byte
	var bodyOnce sync.Once
	startServer(b, conn, queue, map[string]rpc.HandlerFunc{
		callapi.RouteGet: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			bodyOnce.Do(func() { call.CustomerID = r.Query().Get("customer_id"); body, _ = json.Marshal(call) })
			return &rpc.Response{StatusCode: 200, Body: body}, nil
		},
	})
	unlimited := httpapi.RateLimit{Rate: 1_000_000, Burst: 1_000_000} // limits checked in Redis, never refusing
	h := newHarness(b, options{bench: true, callQueue: queue, ipLimit: unlimited, customerLimit: unlimited})
	c := h.newCustomer("bench")
	key := decodeJSON[map[string]any](b, h.must(201, "POST", "/v1.0/accesskeys", c.token, map[string]any{"name": "bench", "expire": 3600}))["token"].(string)

	rpcClient := rpc.NewClient(conn, testenv.Logger(b), rpc.ClientOptions{})
	b.Cleanup(rpcClient.Close)
	// The same gateway without rate limits, to show what the two Redis round trips of the
	// limiters cost.
	free := newHarness(b, options{bench: true, callQueue: queue})
	fc := free.newCustomer("bench")

	direct := callapi.NewClient(renamed{next: rpcClient, queues: map[string]string{callapi.Queue: queue}})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var getFrom func(b *testing.B, base, token string)
	get := func(b *testing.B, token string) { getFrom(b, h.url, token) }
	getFrom = func(b *testing.B, base, token string) {
		req, _ := http.NewRequest("GET", base+"/v1.0/calls/"+call.ID, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	unlimitedGet := func(b *testing.B) { getFrom(b, free.url, fc.token) }
	viaRPC := func(b *testing.B) {
		if _, err := direct.Get(context.Background(), c.id, call.ID); err != nil {
			b.Fatal(err)
		}
	}
	get(b, c.token) // warm: connections, the key cache
	get(b, key)
	viaRPC(b)
	unlimitedGet(b)

	sequential := func(name string, op func(*testing.B)) {
		b.Run(name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				op(b)
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
	parallel := func(name string, op func(*testing.B)) {
		b.Run(name, func(b *testing.B) {
			b.SetParallelism(16) // 32 callers on 2 cores
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					op(b)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
	sequential("rpc-direct", viaRPC)
	sequential("gateway-jwt", func(b *testing.B) { get(b, c.token) })
	sequential("gateway-accesskey", func(b *testing.B) { get(b, key) })
	sequential("gateway-jwt-nolimits", unlimitedGet)
	parallel("rpc-direct-parallel32", viaRPC)
	parallel("gateway-jwt-parallel32", func(b *testing.B) { get(b, c.token) })
	parallel("gateway-jwt-nolimits-parallel32", unlimitedGet)
}
