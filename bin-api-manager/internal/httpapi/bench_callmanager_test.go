package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-api-manager/internal/httpapi"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

// BenchmarkGetCallThroughCallManager is BenchmarkGetCall with the real call manager behind the
// gateway: the bin-call-manager binary is built from this workspace and run against a fresh
// database and a RabbitMQ vhost of its own (so no other test's call manager competes for its
// queue); billing and rtc are stubs that let the call be placed. The call is created through the
// gateway, then read: rpc-direct straight through the RPC client, gateway-jwt through the whole
// gateway. It is skipped if the call manager cannot be built.
//
//	go test ./internal/httpapi -run '^$' -bench ThroughCallManager -benchtime 2000x -count 6
func BenchmarkGetCallThroughCallManager(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "call-manager")
	if out, err := exec.Command("go", "build", "-o", bin, "voipbin/bin-call-manager/cmd/call-manager").CombinedOutput(); err != nil {
		b.Skipf("cannot build the call manager: %v\n%s", err, out)
	}
	url, _ := testenv.RabbitVhost(b)
	conn := testenv.DialRabbit(b, url)
	const node = "bench-node"
	startServer(b, conn, billingapi.Queue, map[string]rpc.HandlerFunc{
		billingapi.RouteGate: func(context.Context, *rpc.Request) (*rpc.Response, error) {
			return rpc.JSON(200, billingapi.GateResponse{Allowed: true})
		},
		billingapi.RouteRelease: func(context.Context, *rpc.Request) (*rpc.Response, error) { return nil, nil },
	})
	startServer(b, conn, rtcapi.Queue, map[string]rpc.HandlerFunc{
		rtcapi.RouteDial: func(context.Context, *rpc.Request) (*rpc.Response, error) {
			return rpc.JSON(200, rtcapi.DialResponse{NodeID: node, SIPCallID: uuid.NewString()})
		},
	})
	startServer(b, conn, rtcapi.NodeQueue(node), map[string]rpc.HandlerFunc{
		rtcapi.RouteGetDialog: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return rpc.JSON(200, rtcapi.Dialog{CallID: r.Param("call_id"), NodeID: node, State: "calling"})
		},
		rtcapi.RouteHangup: func(context.Context, *rpc.Request) (*rpc.Response, error) { return nil, nil },
	})

	var logs bytes.Buffer
	var logsMu sync.Mutex
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "DATABASE_DSN="+testenv.MySQLDSN(b), "RABBITMQ_ADDRESS="+url,
		"REDIS_ADDRESS="+testenv.RedisAddress(), "ADMIN_ADDRESS=127.0.0.1:0", "LOG_LEVEL=warn")
	cmd.Stdout, cmd.Stderr = lockedWriter{&logs, &logsMu}, lockedWriter{&logs, &logsMu}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	waitConsumer(b, conn, callapi.Queue)

	unlimited := httpapi.RateLimit{Rate: 1_000_000, Burst: 1_000_000}
	h := newHarness(b, options{bench: true, rabbitURL: url, realManagers: true, ipLimit: unlimited, customerLimit: unlimited})
	c := h.newCustomer("bench")
	resp, body := h.do("POST", "/v1.0/calls", c.token, callBody("+15557654321"))
	if resp.StatusCode != 201 {
		logsMu.Lock()
		defer logsMu.Unlock()
		b.Fatalf("create through the call manager: %d %s\n%s", resp.StatusCode, body, logs.String())
	}
	id := decodeJSON[createdCalls](b, body).Calls[0].ID

	rpcClient := rpc.NewClient(conn, testenv.Logger(b), rpc.ClientOptions{})
	b.Cleanup(rpcClient.Close)
	direct := callapi.NewClient(rpcClient)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	viaGateway := func(b *testing.B) {
		req, _ := http.NewRequest("GET", h.url+"/v1.0/calls/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+c.token)
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
	viaRPC := func(b *testing.B) {
		if _, err := direct.Get(context.Background(), c.id, id); err != nil {
			b.Fatal(err)
		}
	}
	viaGateway(b)
	viaRPC(b)
	for _, s := range []struct {
		name string
		op   func(*testing.B)
	}{{"rpc-direct", viaRPC}, {"gateway-jwt", viaGateway}} {
		b.Run(s.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				s.op(b)
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
		b.Run(s.name+"-parallel32", func(b *testing.B) {
			b.SetParallelism(16)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					s.op(b)
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
