package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/rpc"
	"voipbin/pkg/telemetry"
	"voipbin/pkg/testenv"
)

// TestMain doubles as a stand-alone RPC server process for the restart test.
func TestMain(m *testing.M) {
	if q := os.Getenv("RPC_TEST_SERVER_QUEUE"); q != "" {
		os.Exit(serveForever(q))
	}
	os.Exit(m.Run())
}

func serveForever(queue string) int {
	log := telemetry.NewLogger(os.Stderr, "rpc-test-server", nil)
	conn, err := amqp.Dial(context.Background(), testenv.RabbitURL(), log)
	if err != nil {
		return 1
	}
	srv := rpc.NewServer(conn, queue, log, rpc.ServerOptions{})
	srv.Handle("POST /v1/echo", echo)
	_ = srv.Run(context.Background())
	return 0
}

type echoBody struct {
	N       int    `json:"n"`
	Payload string `json:"payload,omitempty"`
}

type echoReply struct {
	N          int    `json:"n"`
	Payload    string `json:"payload,omitempty"`
	ID         string `json:"id,omitempty"`
	RequestID  string `json:"request_id,omitempty"`
	CustomerID string `json:"customer_id,omitempty"`
}

func echo(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var in echoBody
	if err := r.Decode(&in); err != nil {
		return nil, err
	}
	return rpc.JSON(200, echoReply{N: in.N, Payload: in.Payload, ID: r.Param("id"),
		RequestID: telemetry.RequestID(ctx), CustomerID: telemetry.CustomerID(ctx)})
}

// startServer runs a server on conn for queue until the test ends, and waits until it consumes.
func startServer(t testing.TB, conn *amqp.Conn, queue string, routes map[string]rpc.HandlerFunc) {
	t.Helper()
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	srv := rpc.NewServer(conn, queue, testenv.Logger(t), rpc.ServerOptions{Workers: 64})
	for p, h := range routes {
		srv.Handle(p, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitConsumer(t, conn, queue)
}

// waitConsumer waits until queue has a consumer (a passive declare reports it).
func waitConsumer(t testing.TB, conn *amqp.Conn, queue string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "a consumer on "+queue, func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
}

func newClient(t testing.TB, conn *amqp.Conn, opts rpc.ClientOptions) *rpc.Client {
	c := rpc.NewClient(conn, testenv.Logger(t), opts)
	t.Cleanup(c.Close)
	return c
}

func TestRoundTripCarriesBodyParamsAndHeaders(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	startServer(t, conn, queue, map[string]rpc.HandlerFunc{"POST /v1/echo/{id}": echo})
	client := newClient(t, conn, rpc.ClientOptions{})

	ctx := telemetry.WithCustomerID(telemetry.WithRequestID(context.Background(), "req-42"), "cus-7")
	var got echoReply
	if err := rpc.Do(ctx, client, queue, "POST", "/v1/echo/abc?x=1", echoBody{N: 5, Payload: "hi"}, &got); err != nil {
		t.Fatalf("Do: %v", err)
	}
	want := echoReply{N: 5, Payload: "hi", ID: "abc", RequestID: "req-42", CustomerID: "cus-7"}
	if got != want {
		t.Fatalf("reply = %+v, want %+v", got, want)
	}
}

func TestTypedErrorsCrossTheWireIntact(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	typed := apierr.New(apierr.PaymentRequired, "INSUFFICIENT_BALANCE", "balance too low").
		WithDetails(apierr.Detail{"balance": 12.0})
	startServer(t, conn, queue, map[string]rpc.HandlerFunc{
		"POST /v1/pay": func(context.Context, *rpc.Request) (*rpc.Response, error) { return nil, fmt.Errorf("gate: %w", typed) },
		"POST /v1/plain": func(context.Context, *rpc.Request) (*rpc.Response, error) {
			return nil, errors.New("db password=hunter2")
		},
		"POST /v1/panic": func(context.Context, *rpc.Request) (*rpc.Response, error) { panic("boom") },
		"POST /v1/echo":  echo,
		// A dependency that is down: a real Redis client's error against a closed port, and a
		// MySQL deadlock. The edge answers SERVICE_UNAVAILABLE (503), not INTERNAL.
		"GET /v1/redis-down": func(ctx context.Context, _ *rpc.Request) (*rpc.Response, error) {
			rdb := redis.NewClient(&redis.Options{Addr: closedPort(t), MaxRetries: -1, DialTimeout: time.Second})
			defer rdb.Close()
			return nil, fmt.Errorf("load dialog: %w", rdb.Get(ctx, "dialog:x").Err())
		},
		"POST /v1/deadlock": func(context.Context, *rpc.Request) (*rpc.Response, error) {
			return nil, fmt.Errorf("charge: %w", &mysql.MySQLError{Number: 1213, Message: "Deadlock found when trying to get lock"})
		},
	})
	client := newClient(t, conn, rpc.ClientOptions{})

	tests := []struct {
		name, method, route string
		body                any
		wantStatus          apierr.Status
		wantReason          string
	}{
		{"typed", "POST", "/v1/pay", nil, apierr.PaymentRequired, "INSUFFICIENT_BALANCE"},
		{"untyped is internal", "POST", "/v1/plain", nil, apierr.Internal, apierr.ReasonInternal},
		{"panic is internal", "POST", "/v1/panic", nil, apierr.Internal, apierr.ReasonInternal},
		{"redis down is unavailable", "GET", "/v1/redis-down", nil, apierr.Unavailable, apierr.ReasonServiceUnavailable},
		{"deadlock is unavailable", "POST", "/v1/deadlock", nil, apierr.Unavailable, apierr.ReasonServiceUnavailable},
		{"unknown route", "GET", "/v1/nothing", nil, apierr.NotFound, apierr.ReasonRouteNotFound},
		{"wrong method", "DELETE", "/v1/pay", nil, apierr.MethodNotAllowed, apierr.ReasonMethodNotAllowed},
		{"unknown field", "POST", "/v1/echo", map[string]any{"n": 1, "extra": true}, apierr.InvalidArgument, apierr.ReasonInvalidJSONBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rpc.Do(context.Background(), client, queue, tt.method, tt.route, tt.body, nil)
			got, ok := apierr.As(err)
			if !ok {
				t.Fatalf("err = %v, want *apierr.Error", err)
			}
			if got.Status != tt.wantStatus || got.Reason != tt.wantReason {
				t.Fatalf("got %s/%s, want %s/%s", got.Status, got.Reason, tt.wantStatus, tt.wantReason)
			}
		})
	}
	err := rpc.Do(context.Background(), client, queue, "POST", "/v1/pay", nil, nil)
	got, _ := apierr.As(err)
	if got.Message != "balance too low" || got.Details[0]["balance"] != 12.0 {
		t.Fatalf("typed error = %+v, want message and details intact", got)
	}
	err = rpc.Do(context.Background(), client, queue, "POST", "/v1/plain", nil, nil)
	if got, _ := apierr.As(err); got.Message != "internal error" {
		t.Fatalf("internal error message = %q, want the cause hidden", got.Message)
	}
}

func TestSlowHandlerTimesOutAtTheDeadline(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	handlerCtxDone := make(chan time.Time, 1)
	startServer(t, conn, queue, map[string]rpc.HandlerFunc{
		"POST /v1/slow": func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			select {
			case <-ctx.Done(): // the server's ctx carries the caller's deadline
				handlerCtxDone <- time.Now()
				return nil, ctx.Err()
			case <-time.After(5 * time.Second):
				return rpc.JSON(200, nil)
			}
		},
	})
	client := newClient(t, conn, rpc.ClientOptions{})

	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err := rpc.Do(ctx, client, queue, "POST", "/v1/slow", nil, nil)
	elapsed := time.Since(start)
	if !apierr.HasReason(err, apierr.ReasonRequestTimeout) {
		t.Fatalf("err = %v, want REQUEST_TIMEOUT", err)
	}
	if elapsed > deadline+50*time.Millisecond {
		t.Fatalf("caller waited %s, want at most deadline + 50 ms", elapsed)
	}
	select {
	case at := <-handlerCtxDone:
		if late := at.Sub(start.Add(deadline)); late > 20*time.Millisecond {
			t.Fatalf("handler ctx ended %s after the caller's deadline, want at it", late)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("handler ctx was never cancelled: the deadline did not travel")
	}
}

func TestRequestExpiredWhileQueuedIsNeverRun(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	if err := conn.Declare(context.Background(), func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	client := newClient(t, conn, rpc.ClientOptions{})

	// Nobody consumes yet: the request waits in the queue past its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	err := rpc.Do(ctx, client, queue, "POST", "/v1/echo", echoBody{N: -1}, nil)
	cancel()
	if !apierr.HasReason(err, apierr.ReasonRequestTimeout) {
		t.Fatalf("err = %v, want REQUEST_TIMEOUT", err)
	}
	// A second stale request only the envelope's deadline betrays: no AMQP expiration at all.
	stale, _ := json.Marshal(rpc.Request{MessageID: "stale", Method: "POST", Route: "/v1/echo",
		Deadline: time.Now().Add(-time.Second), Body: json.RawMessage(`{"n":-2}`)})
	if err := conn.Publish(context.Background(), "", queue, amqp.Publishing{Body: stale}, amqp.PublishOptions{}); err != nil {
		t.Fatal(err)
	}

	var ran sync.Map
	startServer(t, conn, queue, map[string]rpc.HandlerFunc{
		"POST /v1/echo": func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			var in echoBody
			_ = r.Decode(&in)
			ran.Store(in.N, true)
			return rpc.JSON(200, in)
		},
	})
	// A fresh request queued behind them is answered; by then both stale ones were consumed.
	if err := rpc.Do(context.Background(), client, queue, "POST", "/v1/echo", echoBody{N: 1}, nil); err != nil {
		t.Fatalf("fresh request: %v", err)
	}
	for _, n := range []int{-1, -2} {
		if _, ok := ran.Load(n); ok {
			t.Fatalf("request %d ran although its deadline had passed", n)
		}
	}
}

func TestThousandConcurrentCallsOverOneClient(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	startServer(t, conn, queue, map[string]rpc.HandlerFunc{"POST /v1/echo": echo})
	client := newClient(t, conn, rpc.ClientOptions{})

	const n = 1000
	var wg sync.WaitGroup
	var failed atomic.Int64
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var got echoReply
			if err := rpc.Do(ctx, client, queue, "POST", "/v1/echo", echoBody{N: i}, &got); err != nil {
				failed.Add(1)
				errs <- err
				return
			}
			if got.N != i {
				failed.Add(1)
				errs <- fmt.Errorf("call %d got the reply of %d", i, got.N)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d calls failed, first: %v", f, n, <-errs)
	}
}

func TestBreakerOpensAndClosesAgain(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	if err := conn.Declare(context.Background(), func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	const cooldown = 300 * time.Millisecond
	client := newClient(t, conn, rpc.ClientOptions{BreakerFailures: 3, BreakerCooldown: cooldown})
	call := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return rpc.Do(ctx, client, queue, "POST", "/v1/echo", echoBody{N: 1}, nil)
	}
	for i := range 3 { // nobody serves the queue: three timeouts
		if err := call(50 * time.Millisecond); !apierr.HasReason(err, apierr.ReasonRequestTimeout) {
			t.Fatalf("call %d: err = %v, want REQUEST_TIMEOUT", i, err)
		}
	}
	start := time.Now()
	err := call(time.Second)
	if !apierr.HasReason(err, apierr.ReasonServiceUnavailable) {
		t.Fatalf("with the breaker open: err = %v, want SERVICE_UNAVAILABLE", err)
	}
	if took := time.Since(start); took > 20*time.Millisecond {
		t.Fatalf("open breaker took %s to refuse, want fail-fast", took)
	}

	startServer(t, conn, queue, map[string]rpc.HandlerFunc{"POST /v1/echo": echo})
	testenv.Eventually(t, cooldown+3*time.Second, "the breaker to let a probe through and close", func() bool {
		return call(2*time.Second) == nil
	})
	for i := range 5 {
		if err := call(2 * time.Second); err != nil {
			t.Fatalf("call %d after the breaker closed: %v", i, err)
		}
	}
}

func TestServerProcessRestartedMidStream(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("rpc")
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "RPC_TEST_SERVER_QUEUE="+queue)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	srv := start()
	waitConsumer(t, conn, queue)
	client := newClient(t, conn, rpc.ClientOptions{BreakerFailures: 1000})
	call := func(n int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		var got echoReply
		if err := rpc.Do(ctx, client, queue, "POST", "/v1/echo", echoBody{N: n}, &got); err != nil {
			return err
		}
		if got.N != n {
			return fmt.Errorf("got reply %d for %d", got.N, n)
		}
		return nil
	}

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a steady stream of calls while the server dies and comes back
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := call(i); err != nil {
				failed.Add(1)
			} else {
				ok.Add(1)
			}
		}
	}()
	testenv.Eventually(t, 5*time.Second, "calls to succeed", func() bool { return ok.Load() > 20 })
	_ = srv.Process.Kill() // SIGKILL: no goodbye
	_ = srv.Wait()
	testenv.Eventually(t, 5*time.Second, "calls to fail", func() bool { return failed.Load() > 0 })
	before := ok.Load()
	start()
	testenv.Eventually(t, 20*time.Second, "calls to succeed again", func() bool { return ok.Load() > before+20 })
	close(stop)
	<-done
}

func TestForcedConnectionCloseReconnects(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	serverConn := testenv.DialRabbit(t, url)
	clientConn := testenv.DialRabbit(t, url)
	queue := testenv.Name("rpc")
	startServer(t, serverConn, queue, map[string]rpc.HandlerFunc{"POST /v1/echo": echo})
	client := newClient(t, clientConn, rpc.ClientOptions{BreakerFailures: 1000})
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rpc.Do(ctx, client, queue, "POST", "/v1/echo", echoBody{N: 1}, nil)
	}
	if err := call(); err != nil {
		t.Fatalf("before: %v", err)
	}
	testenv.CloseAllConnections(t, vhost)
	testenv.Eventually(t, 30*time.Second, "both sides to reconnect and serve", func() bool { return call() == nil })
	for i := range 10 {
		if err := call(); err != nil {
			t.Fatalf("call %d after reconnect: %v", i, err)
		}
	}
}

// closedPort is a loopback address with nothing listening on it.
func closedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}
