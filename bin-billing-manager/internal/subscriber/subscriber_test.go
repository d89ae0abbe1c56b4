package subscriber_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/bin-billing-manager/internal/mysql"
	"voipbin/bin-billing-manager/internal/subscriber"
	"voipbin/bin-billing-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/customerapi"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

const rateTel = 20_000

type stack struct {
	db     *sql.DB
	conn   *amqp.Conn
	svc    *billing.Service
	reg    *prometheus.Registry
	billed <-chan event.Event // what the relay published on billing.events
}

// newStack runs the billing manager's event side as main wires it — the subscriber on its queue
// with its bindings and the Redis deduper, the MySQL store, the outbox relay — in this test
// process's own RabbitMQ virtual host, and listens to billing.events.
func newStack(t *testing.T, initial int64) *stack {
	t.Helper()
	s := startStack(t, stackOptions{initial: initial, workers: 4})
	s.billed = listen(t, s.conn, event.ExchangeBilling)
	return s
}

type stackOptions struct {
	initial int64
	workers int
	conn    *amqp.Conn    // default testenv.Rabbit
	redis   *redis.Client // default testenv.Redis
}

// startStack is newStack without the listener.
func startStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	db := testenv.MySQL(t)
	log := testenv.Logger(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "billing", log); err != nil {
		t.Fatal(err)
	}
	conn, rdb := o.conn, o.redis
	if conn == nil {
		conn = testenv.Rabbit(t)
	}
	if rdb == nil {
		rdb = testenv.Redis(t)
	}
	initial, workers := o.initial, o.workers
	reg := prometheus.NewRegistry()
	relay := event.NewRelay(db, conn, mysql.OutboxTable, log, event.RelayOptions{})
	store := mysql.NewStore(db, mysql.Options{OnCommit: relay.Kick})
	svc := billing.NewService(billing.Deps{Store: store, Reader: store, Policy: billing.Policy{Currency: "USD",
		InitialBalance: initial, Rates: map[string]int64{"tel": rateTel, "sip": 0}, ReservationTTL: time.Hour}})
	h := subscriber.New(subscriber.Deps{Opener: svc, Charger: svc, Log: log, Registerer: reg})
	sub := event.NewSubscriber(conn, log, event.SubscriberOptions{Queue: subscriber.Queue, Bindings: subscriber.Bindings(),
		Workers: workers, MaxAttempts: 3, Backoff: 10 * time.Millisecond, Registerer: reg,
		Dedupe: event.NewRedisDeduper(rdb, testenv.Name("billing")+":", time.Minute)}, h.Handle)
	testenv.DeleteQueuesAtCleanup(t, conn, subscriber.Queue, event.DeadQueue(subscriber.Queue))

	// The relay publishes to billing.events, which main declares.
	if err := conn.Declare(context.Background(), func(ch *amqp.Channel) error { return event.DeclareExchange(ch, event.ExchangeBilling) }); err != nil {
		t.Fatal(err)
	}
	s := &stack{db: db, conn: conn, svc: svc, reg: reg}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = sub.Run(ctx); done <- struct{}{} }()
	go func() { _ = relay.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	testenv.Eventually(t, 10*time.Second, "the subscriber consuming", func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(subscriber.Queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
	return s
}

// listen binds a private queue to every key of exchange and streams its events.
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
			if json.Unmarshal(m.Body, &ev) == nil && m.RoutingKey == event.RoutingKey(ev.CustomerID, ev.EventType) {
				out <- ev
			}
		}
	}()
	return out
}

// publish sends ev to exchange as its producer's relay would.
func (s *stack) publish(t *testing.T, exchange string, ev event.Event) {
	t.Helper()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.conn.Publish(context.Background(), exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
		amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: ev.EventID, Body: b},
		amqp.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
}

// consumed is how many events the subscriber finished, whatever the outcome.
func (s *stack) consumed(t *testing.T) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "event_consumed_total" {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

func (s *stack) waitConsumed(t *testing.T, n float64) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, "events to be consumed", func() bool { return s.consumed(t) >= n })
}

func (s *stack) count(t *testing.T, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// next is the next billing event published, or a failure after a while.
func (s *stack) next(t *testing.T) event.Event {
	t.Helper()
	select {
	case ev := <-s.billed:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no billing event published")
		return event.Event{}
	}
}

func customerCreated(t *testing.T, id string) event.Event {
	ev, err := event.New(customerapi.EventCreated, id, "customer", id, 1, customerapi.Customer{ID: id, Name: "Acme", TMCreate: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func callEnded(t testing.TB, customerID, callID, destType string, duration int) event.Event {
	c := callapi.Call{ID: callID, CustomerID: customerID, Status: callapi.StatusHangup, Direction: callapi.DirectionOutgoing,
		Source:      callapi.Address{Type: "tel", Target: "+15550000001"},
		Destination: callapi.Address{Type: destType, Target: "+15550000002"}, Duration: duration,
		HangupBy: callapi.HangupByRemote, HangupReason: callapi.ReasonNormal, HangupCause: 16, SIPCode: 200}
	ev, err := event.New(callapi.EventEnded, customerID, "call", callID, 5, callapi.EventData{Call: c, CallID: callID})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestCustomerCreatedOpensOneAccount(t *testing.T) {
	s := newStack(t, 10_000_000)
	cus := uuid.NewString()
	first := customerCreated(t, cus)
	s.publish(t, event.ExchangeCustomer, first)
	s.publish(t, event.ExchangeCustomer, first)                   // redelivered copy
	s.publish(t, event.ExchangeCustomer, customerCreated(t, cus)) // a second event for the same customer
	s.waitConsumed(t, 3)

	if n := s.count(t, "SELECT COUNT(*) FROM billing_accounts"); n != 1 {
		t.Fatalf("%d accounts, want 1", n)
	}
	ev := s.next(t)
	var acc billingapi.Account
	if err := json.Unmarshal(ev.Data, &acc); err != nil {
		t.Fatal(err)
	}
	if ev.EventType != billingapi.EventAccountUpdated || ev.CustomerID != cus || ev.Sequence != 1 ||
		acc.CustomerID != cus || acc.Balance != 10_000_000 || acc.Available != 10_000_000 || acc.Currency != "USD" {
		t.Fatalf("published %+v with %+v", ev, acc)
	}
	if n := s.count(t, "SELECT COUNT(*) FROM billing_outbox"); n != 1 {
		t.Fatalf("%d events written, want 1", n)
	}
}

// TestDuplicatedCallEndedChargesOnce: the same call.ended redelivered, and a second envelope
// for the same call (a republished event has a new id), charge the call once.
func TestDuplicatedCallEndedChargesOnce(t *testing.T) {
	s := newStack(t, 1_000_000)
	cus := uuid.NewString()
	s.publish(t, event.ExchangeCustomer, customerCreated(t, cus))
	s.waitConsumed(t, 1)
	if ev := s.next(t); ev.EventType != billingapi.EventAccountUpdated {
		t.Fatalf("opening event %s", ev.EventType)
	}
	call := uuid.NewString()
	if _, err := s.svc.Gate(context.Background(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}

	for _, quota := range []int{60, 120} { // the call got three minutes of quota
		if _, err := s.svc.Extend(context.Background(), billing.ExtendRequest{CustomerID: cus, CallID: call, Quota: quota}); err != nil {
			t.Fatal(err)
		}
	}

	ended := callEnded(t, cus, call, "tel", 125) // three started minutes
	s.publish(t, event.ExchangeCall, ended)
	s.publish(t, event.ExchangeCall, ended)
	s.publish(t, event.ExchangeCall, callEnded(t, cus, call, "tel", 125))
	s.waitConsumed(t, 4)

	if n := s.count(t, "SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'"); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
	if b := s.count(t, "SELECT balance FROM billing_accounts"); b != 1_000_000-3*rateTel {
		t.Fatalf("balance %d, want %d", b, 1_000_000-3*rateTel)
	}
	if n := s.count(t, "SELECT COUNT(*) FROM billing_reservations WHERE tm_release IS NULL"); n != 0 {
		t.Fatalf("%d reservations still active", n)
	}

	charged, updated := s.next(t), s.next(t)
	var b billingapi.Billing
	if err := json.Unmarshal(charged.Data, &b); err != nil {
		t.Fatal(err)
	}
	if charged.EventType != billingapi.EventCharged || charged.Sequence != 2 || b.CallID != call || b.Amount != -3*rateTel ||
		b.BillableSeconds != 180 || b.RatePerMinute != rateTel || b.DestinationType != "tel" || b.BalanceAfter != 1_000_000-3*rateTel {
		t.Fatalf("billing.charged %+v: %+v", charged, b)
	}
	var a billingapi.Account
	if err := json.Unmarshal(updated.Data, &a); err != nil {
		t.Fatal(err)
	}
	if updated.EventType != billingapi.EventAccountUpdated || updated.Sequence != 3 || updated.ResourceID != charged.ResourceID ||
		a.Balance != 1_000_000-3*rateTel || a.Reserved != 0 {
		t.Fatalf("billing.account_updated %+v: %+v", updated, a)
	}
	if n := s.count(t, "SELECT COUNT(*) FROM billing_outbox"); n != 3 {
		t.Fatalf("%d events written, want 3 (opening, charged, account_updated)", n)
	}
}

func TestUnansweredCallEndedReleasesTheReservation(t *testing.T) {
	s := newStack(t, rateTel)
	cus := uuid.NewString()
	if _, err := s.svc.OpenAccount(context.Background(), cus); err != nil {
		t.Fatal(err)
	}
	call := uuid.NewString()
	if _, err := s.svc.Gate(context.Background(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}
	s.publish(t, event.ExchangeCall, callEnded(t, cus, call, "tel", 0))
	s.waitConsumed(t, 1)
	if n := s.count(t, "SELECT COUNT(*) FROM billing_reservations WHERE tm_release IS NULL"); n != 0 {
		t.Fatalf("%d reservations still active", n)
	}
	if b := s.count(t, "SELECT balance FROM billing_accounts"); b != rateTel {
		t.Fatalf("balance %d: an unanswered call cost money", b)
	}
	// The freed minute lets the next call start.
	if _, err := s.svc.Gate(context.Background(), billing.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "tel"}); err != nil {
		t.Fatalf("next call: %v", err)
	}
}

func TestUnusableEventsAreDeadLetteredNotDropped(t *testing.T) {
	s := newStack(t, 1_000_000)
	cus := uuid.NewString()
	if _, err := s.svc.OpenAccount(context.Background(), cus); err != nil {
		t.Fatal(err)
	}
	badData := callEnded(t, cus, uuid.NewString(), "tel", 10)
	badData.Data = json.RawMessage(`{"id":"x","duration":"long"}`)
	noAccount := callEnded(t, uuid.NewString(), uuid.NewString(), "tel", 10)
	mismatch := callEnded(t, cus, uuid.NewString(), "tel", 10)
	mismatch.CustomerID = uuid.NewString()
	for _, ev := range []event.Event{badData, noAccount, mismatch} {
		s.publish(t, event.ExchangeCall, ev)
	}
	ch, err := s.conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	dead := map[string]bool{}
	testenv.Eventually(t, 15*time.Second, "three events in the dead-letter queue", func() bool {
		if d, ok, err := ch.Get(event.DeadQueue(subscriber.Queue), true); err == nil && ok {
			var ev event.Event
			_ = json.Unmarshal(d.Body, &ev)
			dead[ev.EventID] = true
		}
		return len(dead) == 3
	})
	if !dead[badData.EventID] || !dead[noAccount.EventID] || !dead[mismatch.EventID] {
		t.Fatalf("dead-lettered %v", dead)
	}
	if n := s.count(t, "SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'"); n != 0 {
		t.Fatalf("%d charges from unusable events", n)
	}
}

// closedAddress is a local address nobody listens on.
func closedAddress(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestRedisDownStillChargesOnce: Redis only saves work; with it down, duplicates reach the
// handler and the ledger's unique call id still charges once.
func TestRedisDownStillChargesOnce(t *testing.T) {
	down := redis.NewClient(&redis.Options{Addr: closedAddress(t), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = down.Close() })
	s := startStack(t, stackOptions{initial: 1_000_000, workers: 4, redis: down})
	cus, call := uuid.NewString(), uuid.NewString()
	s.publish(t, event.ExchangeCustomer, customerCreated(t, cus))
	s.waitConsumed(t, 1)
	ended := callEnded(t, cus, call, "tel", 10)
	for range 3 {
		s.publish(t, event.ExchangeCall, ended)
	}
	s.waitConsumed(t, 4)
	if n := s.count(t, "SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'"); n != 1 {
		t.Fatalf("%d charges, want 1", n)
	}
	if b := s.count(t, "SELECT balance FROM billing_accounts"); b != 1_000_000-rateTel {
		t.Fatalf("balance %d", b)
	}
}

// TestBrokerConnectionLossIsSurvived: after every connection to the broker is force-closed, the
// subscriber resumes and the relay publishes the charge's events once it is back.
func TestBrokerConnectionLossIsSurvived(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	conn := testenv.DialRabbit(t, url)
	s := startStack(t, stackOptions{initial: 1_000_000, workers: 2, conn: conn})
	cus := uuid.NewString()
	if _, err := s.svc.OpenAccount(context.Background(), cus); err != nil {
		t.Fatal(err)
	}

	testenv.CloseAllConnections(t, vhost)
	billed := listen(t, testenv.DialRabbit(t, url), event.ExchangeBilling)
	call := uuid.NewString()
	testenv.Eventually(t, 20*time.Second, "the subscriber to consume again", func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(subscriber.Queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
	s.publish(t, event.ExchangeCall, callEnded(t, cus, call, "tel", 61))
	for {
		select {
		case ev := <-billed:
			if ev.EventType == billingapi.EventCharged {
				return
			}
		case <-time.After(20 * time.Second):
			t.Fatal("billing.charged not published after the connection loss")
		}
	}
}
