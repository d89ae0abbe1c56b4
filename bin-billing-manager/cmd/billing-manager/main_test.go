package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-billing-manager/internal/subscriber"
	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/customerapi"
	"voipbin/pkg/event"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
)

// syncBuffer is the process's stderr, read while it is written.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines() []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func freeAddress(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestRunServesTheWholeFlow starts the billing manager as main does, in this test process's own
// RabbitMQ virtual host and a fresh database, and walks a customer through it: account opened from
// customer.created, a call let through the gate over RPC, charged from call.ended, the charge
// published on billing.events; then a graceful stop.
func TestRunServesTheWholeFlow(t *testing.T) {
	const rate = 30_000
	admin := freeAddress(t)
	env := map[string]string{
		"DATABASE_DSN":            testenv.MySQLDSN(t),
		"RABBITMQ_ADDRESS":        testenv.RabbitURL(),
		"REDIS_ADDRESS":           testenv.RedisAddress(),
		"ADMIN_ADDRESS":           admin,
		"BILLING_INITIAL_BALANCE": "30000", // exactly one tel minute
		"BILLING_RATE_TEL":        "30000",
	}
	getenv := func(k string) string { return env[k] }
	var stderr syncBuffer

	if err := run(context.Background(), []string{"migrate"}, getenv, &stderr); err != nil {
		t.Fatalf("migrate: %v", err)
	}

	conn := testenv.Rabbit(t)
	testenv.DeleteQueuesAtCleanup(t, conn, billingapi.Queue, subscriber.Queue, event.DeadQueue(subscriber.Queue))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, getenv, &stderr) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	testenv.Eventually(t, 20*time.Second, "/readyz to answer 200", func() bool {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	testenv.Eventually(t, 10*time.Second, "consumers on both queues", func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		for _, q := range []string{billingapi.Queue, subscriber.Queue} {
			if st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil || st.Consumers == 0 {
				return false
			}
		}
		return true
	})
	billed := listen(t, conn, event.ExchangeBilling)
	rpcClient := rpc.NewClient(conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(rpcClient.Close)
	client := billingapi.NewClient(rpcClient)

	cus := uuid.NewString()
	publish(t, conn, event.ExchangeCustomer, mustEvent(t, customerapi.EventCreated, cus, "customer", cus, customerapi.Customer{ID: cus, Name: "Acme"}))
	var acc billingapi.Account
	testenv.Eventually(t, 10*time.Second, "the account to open", func() bool {
		accs, err := client.Accounts(context.Background(), cus)
		if err == nil && len(accs) == 1 {
			acc = accs[0]
			return true
		}
		return false
	})
	if acc.Balance != rate {
		t.Fatalf("account = %+v, want the initial balance", acc)
	}

	call := uuid.NewString()
	if r, err := client.Gate(context.Background(), billingapi.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil || !r.Allowed {
		t.Fatalf("Gate = %+v, %v", r, err)
	}
	_, err := client.Gate(context.Background(), billingapi.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "tel"})
	if !apierr.HasReason(err, billingapi.ErrReasonInsufficientBalance) {
		t.Fatalf("second Gate = %v, want INSUFFICIENT_BALANCE", err)
	}

	c := callapi.Call{ID: call, CustomerID: cus, Status: callapi.StatusHangup, Destination: callapi.Address{Type: "tel", Target: "+15550001111"}, Duration: 42}
	publish(t, conn, event.ExchangeCall, mustEvent(t, callapi.EventEnded, cus, "call", call, callapi.EventData{Call: c, CallID: call}))
	var types []string
	for len(types) < 3 {
		select {
		case ev := <-billed:
			if ev.CustomerID == cus {
				types = append(types, ev.EventType)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("billing events so far %v", types)
		}
	}
	if strings.Join(types, ",") != "billing.account_updated,billing.charged,billing.account_updated" {
		t.Fatalf("billing events = %v", types)
	}
	if a, err := client.Account(context.Background(), cus, acc.ID); err != nil || a.Balance != 0 || a.Reserved != 0 {
		t.Fatalf("after the charge account = %+v, %v", a, err)
	}

	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`billing_gate_decisions_total{result="allowed"} 1`, `billing_gate_decisions_total{result="refused"} 1`,
		`billing_charges_total{destination_type="tel",outcome="charged"} 1`, `billing_charged_amount_micros_total{destination_type="tel"} 30000`,
		`billing_accounts_opened_total 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	cancel()
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Fatalf("run returned %v after a stop", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}

	// An operator can follow the call in the logs: the charge names the customer and the call.
	found := false
	for _, l := range stderr.lines() {
		if l["msg"] == "call charged" && l["customer_id"] == cus && l["call_id"] == call && l["service"] == service {
			found = true
		}
	}
	if !found {
		t.Fatal("no 'call charged' log line with customer_id and call_id")
	}
}

func TestRunReportsEveryConfigProblem(t *testing.T) {
	var stderr syncBuffer
	err := run(context.Background(), nil, func(string) string { return "" }, &stderr)
	if err == nil || !strings.Contains(err.Error(), "DATABASE_DSN") || !strings.Contains(err.Error(), "RABBITMQ_ADDRESS") {
		t.Fatalf("run with no configuration = %v", err)
	}
}

func mustEvent(t *testing.T, typ, customerID, resourceType, resourceID string, data any) event.Event {
	t.Helper()
	ev, err := event.New(typ, customerID, resourceType, resourceID, 1, data)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func publish(t *testing.T, conn *amqp.Conn, exchange string, ev event.Event) {
	t.Helper()
	b, _ := json.Marshal(ev)
	if err := conn.Publish(context.Background(), exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
		amqp.Publishing{ContentType: "application/json", MessageId: ev.EventID, Body: b}, amqp.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
}

func listen(t *testing.T, conn *amqp.Conn, exchange string) <-chan event.Event {
	t.Helper()
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	if err := event.DeclareExchange(ch, exchange); err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	msgs, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan event.Event, 100)
	go func() {
		for m := range msgs {
			var ev event.Event
			if json.Unmarshal(m.Body, &ev) == nil {
				out <- ev
			}
		}
	}()
	return out
}
