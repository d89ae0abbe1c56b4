package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-call-manager/internal/cache"
	"voipbin/bin-call-manager/internal/config"
	"voipbin/bin-call-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
	"voipbin/pkg/testenv"
)

// The end-to-end tests run the call manager as main wires it (serve), on the real MariaDB, Redis
// and RabbitMQ, with its queues under a prefix unique to the test, small rpc.Servers standing in
// for billing and rtc, rtc events published to the real rtc.events exchange and call events read
// back from the real call.events exchange.

// clock is the service's clock, moved by the test (the reaper's deadlines and probes).
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// prefixCaller sends every request to prefix+queue, so the service under test and its
// stand-ins never meet another test's (or a running stack's) queues.
type prefixCaller struct {
	c      rpc.Caller
	prefix string
}

func (p prefixCaller) Call(ctx context.Context, queue string, req rpc.Request) (*rpc.Response, error) {
	return p.c.Call(ctx, p.prefix+queue, req)
}

// fakeBilling is the balance gate: a customer with a budget is allowed that many calls and then
// refused; customers without one are always allowed. It records everything.
type fakeBilling struct {
	mu       sync.Mutex
	budget   map[string]int
	gates    []billingapi.GateRequest
	released []string
	hold     chan struct{} // when set, gates wait until it is closed
}

func (f *fakeBilling) setBudget(customer string, n int) {
	f.mu.Lock()
	f.budget[customer] = n
	f.mu.Unlock()
}

func (f *fakeBilling) gate(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
	var req billingapi.GateRequest
	if err := r.Decode(&req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	f.mu.Lock()
	f.gates = append(f.gates, req)
	left, limited := f.budget[req.CustomerID]
	refused := limited && left <= 0
	if limited && !refused {
		f.budget[req.CustomerID]--
	}
	f.mu.Unlock()
	if refused {
		return nil, apierr.New(apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance, "balance too low").
			WithDetails(apierr.Detail{"available": 100.0, "required": 60000.0})
	}
	return rpc.JSON(200, billingapi.GateResponse{Allowed: true, Reserved: 60000})
}

func (f *fakeBilling) release(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
	f.mu.Lock()
	f.released = append(f.released, r.Param("call_id"))
	f.mu.Unlock()
	return nil, nil
}

func (f *fakeBilling) snapshot() ([]billingapi.GateRequest, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]billingapi.GateRequest(nil), f.gates...), append([]string(nil), f.released...)
}

type hangupReq struct{ Node, CallID string } // Node "" is the shared queue

// fakeRTC dials on the shared queue and owns the dialogs on its node queue.
type fakeRTC struct {
	node string

	mu      sync.Mutex
	dials   []rtcapi.DialRequest
	hangups []hangupReq
	refuse  map[string]bool // destination targets whose dial is refused
	gone    map[string]bool // call ids the node says it does not have
	probes  int
	hold    chan struct{} // when set, dials wait until it is closed
}

func (f *fakeRTC) dial(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
	var req rtcapi.DialRequest
	if err := r.Decode(&req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.dials = append(f.dials, req)
	refused := f.refuse[req.Destination.Target]
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if refused {
		return nil, apierr.New(apierr.Unavailable, rtcapi.ErrReasonDialFailed, "sending the INVITE failed")
	}
	return rpc.JSON(200, rtcapi.DialResponse{NodeID: f.node, SIPCallID: "sip-" + req.CallID})
}

func (f *fakeRTC) hangup(node string) rpc.HandlerFunc {
	return func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
		f.mu.Lock()
		f.hangups = append(f.hangups, hangupReq{Node: node, CallID: r.Param("call_id")})
		f.mu.Unlock()
		return nil, nil
	}
}

func (f *fakeRTC) getDialog(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
	id := r.Param("call_id")
	f.mu.Lock()
	f.probes++
	gone := f.gone[id]
	f.mu.Unlock()
	if gone {
		return nil, apierr.Newf(apierr.NotFound, rtcapi.ErrReasonDialogNotFound, "no dialog for call %s", id)
	}
	return rpc.JSON(200, rtcapi.Dialog{CallID: id, NodeID: f.node, SIPCallID: "sip-" + id, State: "calling"})
}

func (f *fakeRTC) forget(id string) {
	f.mu.Lock()
	f.gone[id] = true
	f.mu.Unlock()
}

func (f *fakeRTC) snapshot() ([]rtcapi.DialRequest, []hangupReq) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]rtcapi.DialRequest(nil), f.dials...), append([]hangupReq(nil), f.hangups...)
}

func (f *fakeRTC) hangupsOf(id string) []hangupReq {
	_, hs := f.snapshot()
	var out []hangupReq
	for _, h := range hs {
		if h.CallID == id {
			out = append(out, h)
		}
	}
	return out
}

// syncBuffer collects log lines from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines are the JSON log lines written so far.
func (s *syncBuffer) lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(s.b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

type harnessOpts struct {
	noRTC     bool   // no rtc manager at all: its queues are unroutable
	redisAddr string // default: the test Redis
	quiet     bool   // discard the service's logs (benchmarks)
	call      func(*config.Call)
}

type harness struct {
	t         testing.TB
	prefix    string
	db        *sql.DB
	rdb       *redis.Client
	conn      *amqp.Conn
	reg       *prometheus.Registry
	clock     *clock
	client    *callapi.Client
	billing   *fakeBilling
	rtc       *fakeRTC
	logs      *syncBuffer
	customerA string
	customerB string
	stopNode  func()
	stopRTC   func()

	evMu   sync.Mutex
	events []event.Event
}

// deleteQueues deletes durable queues the test made, when it ends.
func deleteQueues(t testing.TB, conn *amqp.Conn, queues ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ch, err := conn.Channel(ctx)
		if err != nil {
			return
		}
		defer ch.Close()
		for _, q := range queues {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})
}

// waitConsumer waits until queue has a consumer.
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

// runServer runs an rpc server until the returned stop (or the test's end).
func runServer(t testing.TB, conn *amqp.Conn, queue string, exclusive bool, routes map[string]rpc.HandlerFunc) (stop func()) {
	t.Helper()
	srv := rpc.NewServer(conn, queue, testenv.Logger(t), rpc.ServerOptions{Workers: 64, Exclusive: exclusive})
	for p, h := range routes {
		srv.Handle(p, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	waitConsumer(t, conn, queue)
	return stop
}

func testCallConfig() config.Call {
	return config.Call{DialTimeout: 60 * time.Second, MaxDuration: time.Hour, ReaperGrace: 2 * time.Minute,
		ReaperInterval: 20 * time.Millisecond, ProbeInterval: 30 * time.Second, RPCTimeout: 3 * time.Second, CacheTTL: time.Hour,
		CreateBudget: 8 * time.Second, GateBudget: 3 * time.Second, DialBudget: 3 * time.Second,
		QuotaLead: 10 * time.Second, QuotaInterval: 100 * time.Millisecond}
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()

	h := &harness{t: t, prefix: testenv.Name("cm") + ".", reg: prometheus.NewRegistry(), logs: &syncBuffer{},
		clock: &clock{t: time.Now().UTC()}, customerA: uuid.NewString(), customerB: uuid.NewString(),
		billing: &fakeBilling{budget: map[string]int{}}}
	h.rtc = &fakeRTC{node: "node-" + uuid.NewString()[:8], refuse: map[string]bool{}, gone: map[string]bool{}}

	h.db = testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), h.db, migrations.FS, "call", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	h.conn = testenv.Rabbit(t)
	addr := o.redisAddr
	if addr == "" {
		addr = testenv.RedisAddress()
	}
	h.rdb = cache.NewClient(addr)
	t.Cleanup(func() { _ = h.rdb.Close() })

	queue, rtcQueue := h.prefix+callapi.Queue, h.prefix+"bin-manager.call.rtc-events"
	deleteQueues(t, h.conn, queue, rtcQueue, event.DeadQueue(rtcQueue), h.prefix+billingapi.Queue, h.prefix+rtcapi.Queue)

	runServer(t, h.conn, h.prefix+billingapi.Queue, false, map[string]rpc.HandlerFunc{
		billingapi.RouteGate: h.billing.gate, billingapi.RouteRelease: h.billing.release})
	if !o.noRTC {
		h.stopRTC = runServer(t, h.conn, h.prefix+rtcapi.Queue, false, map[string]rpc.HandlerFunc{
			rtcapi.RouteDial: h.rtc.dial, rtcapi.RouteHangup: h.rtc.hangup("")})
		h.stopNode = runServer(t, h.conn, h.prefix+rtcapi.NodeQueue(h.rtc.node), true, map[string]rpc.HandlerFunc{
			rtcapi.RouteHangup: h.rtc.hangup(h.rtc.node), rtcapi.RouteGetDialog: h.rtc.getDialog})
	}

	h.consumeCallEvents(t)

	rpcClient := rpc.NewClient(h.conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(rpcClient.Close)
	caller := prefixCaller{c: rpcClient, prefix: h.prefix}
	h.client = callapi.NewClient(caller)

	cfg := testCallConfig()
	if o.call != nil {
		o.call(&cfg)
	}
	var bindings []event.Binding
	for _, c := range []string{h.customerA, h.customerB} {
		bindings = append(bindings, event.Binding{Exchange: event.ExchangeRTC, Key: "customer_id." + c + ".rtc.*"})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs io.Writer = h.logs
	if o.quiet {
		logs = io.Discard
	}
	go func() {
		done <- serve(ctx, wiring{cfg: cfg, log: telemetry.NewLogger(logs, service, nil), reg: h.reg, db: h.db,
			conn: h.conn, rdb: h.rdb, caller: caller, queue: queue, rtcQueue: rtcQueue, rtcBindings: bindings, now: h.clock.Now})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitConsumer(t, h.conn, queue)
	waitConsumer(t, h.conn, rtcQueue)
	return h
}

// consumeCallEvents collects every call event of the harness's customers from call.events.
func (h *harness) consumeCallEvents(t testing.TB) {
	ch, err := h.conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	if err := event.DeclareExchange(ch, event.ExchangeCall); err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{h.customerA, h.customerB} {
		if err := ch.QueueBind(q.Name, event.CustomerKey(c), event.ExchangeCall, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for m := range msgs {
			var ev event.Event
			if err := json.Unmarshal(m.Body, &ev); err != nil {
				continue
			}
			if m.RoutingKey != event.RoutingKey(ev.CustomerID, ev.EventType) {
				h.t.Errorf("routing key %q for %s of %s", m.RoutingKey, ev.EventType, ev.CustomerID)
			}
			h.evMu.Lock()
			h.events = append(h.events, ev)
			h.evMu.Unlock()
		}
	}()
}

// eventsOf are the call events received for a call, by sequence.
func (h *harness) eventsOf(id string) []event.Event {
	h.evMu.Lock()
	defer h.evMu.Unlock()
	var out []event.Event
	for _, ev := range h.events {
		if ev.ResourceID == id {
			out = append(out, ev)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Sequence < out[j].Sequence })
	return out
}

// waitEvents waits until the call has events of exactly these types, in sequence order 1..n.
func (h *harness) waitEvents(id string, types ...string) []event.Event {
	h.t.Helper()
	var got []event.Event
	testenv.Eventually(h.t, 10*time.Second, "events "+strings.Join(types, ",")+" of call "+id, func() bool {
		got = h.eventsOf(id)
		return len(got) >= len(types)
	})
	if len(got) != len(types) {
		h.t.Fatalf("call %s has %d events %v, want %v", id, len(got), eventTypes(got), types)
	}
	for i, ev := range got {
		if ev.EventType != types[i] || ev.Sequence != int64(i+1) || ev.ResourceType != "call" {
			h.t.Fatalf("call %s events = %v, want %v with sequences 1..%d", id, eventTypes(got), types, len(types))
		}
	}
	return got
}

func eventTypes(evs []event.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.EventType)
	}
	return out
}

// data decodes a call event's data.
func data(t testing.TB, ev event.Event) callapi.EventData {
	t.Helper()
	var d callapi.EventData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.CallID != d.ID || d.ID != ev.ResourceID {
		t.Fatalf("event data call_id %q id %q, resource %q", d.CallID, d.ID, ev.ResourceID)
	}
	return d
}

// publishRTC publishes an rtc event to the real rtc.events exchange.
func (h *harness) publishRTC(customer, typ string, ev rtcapi.Event) {
	h.t.Helper()
	env, err := event.New(typ, customer, "call", ev.CallID, 0, ev)
	if err != nil {
		h.t.Fatal(err)
	}
	b, _ := json.Marshal(env)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.conn.Publish(ctx, event.ExchangeRTC, event.RoutingKey(customer, typ), amqp.Publishing{
		ContentType: "application/json", MessageId: env.EventID, Body: b}, amqp.PublishOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// counter sums a counter family's samples whose labels include match.
func (h *harness) counter(name string, match map[string]string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue metrics
				}
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if hi := m.GetHistogram(); hi != nil {
				sum += float64(hi.GetSampleCount())
			}
		}
	}
	return sum
}

// rtcHandled is how many rtc events the service has finished with.
func (h *harness) rtcHandled() float64 { return h.counter("call_rtc_events_total", nil) }

// count runs a COUNT(*) query.
func (h *harness) count(query string, args ...any) int {
	h.t.Helper()
	var n int
	if err := h.db.QueryRow(query, args...).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) endedEvents(id string) int {
	n := 0
	for _, ev := range h.eventsOf(id) {
		if ev.EventType == callapi.EventEnded {
			n++
		}
	}
	return n
}

func tel(n string) callapi.Address { return callapi.Address{Type: callapi.AddressTel, Target: n} }

func (h *harness) create(customer string, dests ...callapi.Address) []callapi.Call {
	h.t.Helper()
	calls, err := h.client.Create(context.Background(), callapi.CreateRequest{CustomerID: customer,
		Source: tel("+15550000001"), Destinations: dests})
	if err != nil {
		h.t.Fatalf("Create: %v", err)
	}
	if len(calls) != len(dests) {
		h.t.Fatalf("Create made %d calls for %d destinations", len(calls), len(dests))
	}
	return calls
}

// wantAPIErr checks that err is a typed error with the status and reason.
func wantAPIErr(t testing.TB, err error, status apierr.Status, reason string) *apierr.Error {
	t.Helper()
	e, ok := apierr.As(err)
	if !ok || e.Status != status || e.Reason != reason {
		t.Fatalf("error = %v, want %s/%s", err, status, reason)
	}
	return e
}

// closedAddr is an address nothing listens on.
func closedAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// stopShared stops the rtc manager's shared queue consumer and deletes the queue, so requests
// to it are unroutable.
func (h *harness) stopShared(t testing.TB) {
	h.stopRTC()
	ch, err := h.conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(h.prefix+rtcapi.Queue, false, false, false); err != nil {
		t.Fatal(err)
	}
}
