package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
	"voipbin/pkg/webhookapi"
)

// benchReceiver is a fast local endpoint that checks every signature and notes when each event
// first arrived.
type benchReceiver struct {
	mu      sync.Mutex
	secret  webhook.Secret
	first   map[string]time.Duration // event id -> event timestamp to first arrival
	arrived chan struct{}
	bad     int
}

func (r *benchReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	now := time.Now()
	var ev event.Event
	_ = json.Unmarshal(body, &ev)
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.Header.Get(webhook.HeaderSignature) != webhook.Signature(r.secret, body) {
		r.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if _, seen := r.first[ev.EventID]; !seen {
		r.first[ev.EventID] = now.Sub(ev.Timestamp)
		r.arrived <- struct{}{}
	}
	w.WriteHeader(http.StatusNoContent)
}

type benchEnv struct {
	rcv      *benchReceiver
	customer string
	conn     *amqp.Conn
}

func (e *benchEnv) publish(b *testing.B, evs ...event.Event) {
	b.Helper()
	msgs := make([]amqp.Message, len(evs))
	for i, ev := range evs {
		body, _ := json.Marshal(ev)
		msgs[i] = amqp.Message{Exchange: event.ExchangeCall, Key: event.RoutingKey(ev.CustomerID, ev.EventType),
			Publishing: amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: ev.EventID, Body: body}}
	}
	if err := e.conn.PublishBatch(context.Background(), msgs); err != nil {
		b.Fatal(err)
	}
}

// startBench runs the webhook manager in this process (run(), as main does) on a fresh database
// and its own queues, with one webhook of one customer pointing at a local receiver.
func startBench(b *testing.B, n int) *benchEnv {
	b.Helper()
	rcv := &benchReceiver{first: map[string]time.Duration{}, arrived: make(chan struct{}, n+16)}
	srv := httptest.NewServer(rcv)
	b.Cleanup(srv.Close)
	conn := testenv.Rabbit(b)
	events, rpcQ := testenv.Name("webhook-bench-events"), testenv.Name("webhook-bench-rpc")
	testenv.DeleteQueuesAtCleanup(b, conn, events, event.DeadQueue(events), rpcQ)
	env := map[string]string{
		"DATABASE_DSN":             testenv.MySQLDSN(b),
		"RABBITMQ_ADDRESS":         testenv.RabbitURL(),
		"REDIS_ADDRESS":            testenv.RedisAddress(),
		"ADMIN_ADDRESS":            "127.0.0.1:0",
		"LOG_LEVEL":                "warn",
		"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
		"WEBHOOK_EVENT_QUEUE":      events,
		"WEBHOOK_RPC_QUEUE":        rpcQ,
		"WEBHOOK_WORKERS":          os.Getenv("BENCH_WORKERS"),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, io.Discard) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	rc := rpc.NewClient(conn, testenv.Logger(b), rpc.ClientOptions{})
	b.Cleanup(rc.Close)
	client := webhookapi.NewClient(toQueue{c: rc, queue: rpcQ})
	customer := uuid.NewString()
	var w webhookapi.Webhook
	testenv.Eventually(b, 60*time.Second, "the service to create a webhook", func() bool {
		var err error
		w, err = client.Create(context.Background(), webhookapi.WriteRequest{CustomerID: customer, URI: srv.URL + "/hook", EventTypes: []string{"call.*"}})
		return err == nil
	})
	rcv.secret = webhook.Secret(w.Secret)
	testenv.Eventually(b, 30*time.Second, "the event queue consumed", func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(events, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
	return &benchEnv{rcv: rcv, customer: customer, conn: conn}
}

// callEvents makes n events of n/5 calls, five events each, interleaved call by call.
func callEvents(b *testing.B, customer string, n int) []event.Event {
	types := []string{"call.created", "call.ringing", "call.answered", "call.updated", "call.ended"}
	calls := make([]string, (n+len(types)-1)/len(types))
	for i := range calls {
		calls[i] = uuid.NewString()
	}
	out := make([]event.Event, 0, n)
	for i := range n {
		call, seq := calls[i%len(calls)], i/len(calls)
		ev, err := event.New(types[seq%len(types)], customer, "call", call, int64(seq+1), map[string]any{"call_id": call})
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func (e *benchEnv) wait(b *testing.B, n int) {
	b.Helper()
	timeout := time.After(5 * time.Minute)
	for range n {
		select {
		case <-e.rcv.arrived:
		case <-timeout:
			b.Fatalf("only part of %d deliveries arrived in 5 minutes", n)
		}
	}
	if e.rcv.bad > 0 {
		b.Fatalf("%d deliveries failed signature verification", e.rcv.bad)
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(int(float64(len(s))*p), len(s)-1)]
}

func (e *benchEnv) latencies() []time.Duration {
	e.rcv.mu.Lock()
	defer e.rcv.mu.Unlock()
	out := make([]time.Duration, 0, len(e.rcv.first))
	for _, d := range e.rcv.first {
		out = append(out, d)
	}
	return out
}

// BenchmarkDeliveryThroughput publishes b.N call events at once (five per call, in batches of 200
// as an outbox relay does) and measures how fast they reach the receiver: the whole path from
// call.events through MySQL to HTTP.
func BenchmarkDeliveryThroughput(b *testing.B) {
	e := startBench(b, b.N)
	evs := callEvents(b, e.customer, b.N)
	b.ResetTimer()
	start := time.Now()
	for batch := range slices.Chunk(evs, 200) {
		e.publish(b, batch...)
	}
	published := time.Since(start)
	e.wait(b, b.N)
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.N)/published.Seconds(), "published/s")
}

// BenchmarkEventToFirstAttempt publishes b.N call events at a steady 100 per second, below the
// throughput, and measures from each event's timestamp to its first arrival at the receiver.
func BenchmarkEventToFirstAttempt(b *testing.B) {
	e := startBench(b, b.N)
	evs := callEvents(b, e.customer, b.N)
	b.ResetTimer()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for _, ev := range evs {
		<-tick.C
		ev.Timestamp = time.Now().UTC()
		e.publish(b, ev)
	}
	e.wait(b, b.N)
	b.StopTimer()
	lat := e.latencies()
	b.ReportMetric(float64(percentile(lat, 0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
}
