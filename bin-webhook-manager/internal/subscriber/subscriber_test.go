package subscriber_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/mysql"
	"voipbin/bin-webhook-manager/internal/subscriber"
	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/bin-webhook-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

func publish(t *testing.T, conn *amqp.Conn, exchange string, ev event.Event) {
	t.Helper()
	b, _ := json.Marshal(ev)
	err := conn.Publish(context.Background(), exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
		amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: ev.EventID, Body: b}, amqp.PublishOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// Events published to the real call.events and billing.events exchanges become deliveries in
// MySQL, once each however often they arrive.
func TestEventsBecomeDeliveries(t *testing.T) {
	ctx := context.Background()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(ctx, db, migrations.FS, "webhook", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	conn := testenv.Rabbit(t)
	queue := testenv.Name("webhook-events")
	testenv.DeleteQueuesAtCleanup(t, conn, queue, event.DeadQueue(queue))
	rdb := testenv.Redis(t)

	customer := uuid.NewString()
	hooks := mysql.NewWebhookStore(db)
	secret, _ := webhook.NewSecret()
	now := time.Now().UTC()
	for _, types := range [][]string{{"call.*"}, {"billing.charged"}} {
		if err := hooks.Create(ctx, webhook.Webhook{ID: uuid.NewString(), CustomerID: customer, URI: "https://example.com/", Method: "POST",
			EventTypes: types, Status: webhook.StatusEnabled, Secret: secret, TMCreate: now, TMUpdate: now}); err != nil {
			t.Fatal(err)
		}
	}
	deliveries := mysql.NewDeliveryStore(db)
	sub := subscriber.New(conn, testenv.Logger(t), subscriber.Options{Queue: queue, Redis: rdb}, webhook.NewFanout(deliveries, nil).HandleBatch)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = sub.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 10*time.Second, "the queue bound and consumed", func() bool {
		ch, err := conn.Channel(ctx)
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})

	call := uuid.NewString()
	created, _ := event.New("call.created", customer, "call", call, 1, map[string]any{"id": call, "call_id": call})
	charged, _ := event.New("billing.charged", customer, "billing", uuid.NewString(), 1, map[string]any{"amount": 1})
	account, _ := event.New("billing.account_updated", customer, "billing_account", uuid.NewString(), 1, map[string]any{})
	other, _ := event.New("call.created", uuid.NewString(), "call", uuid.NewString(), 1, map[string]any{})
	publish(t, conn, event.ExchangeCall, created)
	publish(t, conn, event.ExchangeCall, created) // redelivered
	publish(t, conn, event.ExchangeBilling, charged)
	publish(t, conn, event.ExchangeBilling, account) // no webhook wants it
	publish(t, conn, event.ExchangeCall, other)      // another customer's

	count := func() int {
		var n int
		_ = db.QueryRow("SELECT COUNT(*) FROM webhook_deliveries").Scan(&n)
		return n
	}
	testenv.Eventually(t, 10*time.Second, "two deliveries", func() bool { return count() >= 2 })
	// A sentinel event after the others: once it is recorded, every earlier one was handled.
	sentinel, _ := event.New("call.ended", customer, "call", call, 2, map[string]any{})
	publish(t, conn, event.ExchangeCall, sentinel)
	testenv.Eventually(t, 10*time.Second, "the sentinel's delivery", func() bool { return count() >= 3 })
	rows, err := db.Query("SELECT event_type, payload FROM webhook_deliveries ORDER BY tm_create")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var types []string
	for rows.Next() {
		var typ string
		var payload []byte
		if err := rows.Scan(&typ, &payload); err != nil {
			t.Fatal(err)
		}
		var ev event.Event
		if err := json.Unmarshal(payload, &ev); err != nil || ev.EventType != typ || ev.CustomerID != customer {
			t.Fatalf("payload %s is not the envelope of a %s event", payload, typ)
		}
		types = append(types, typ)
	}
	if len(types) != 3 || types[0] != "call.created" || types[1] != "billing.charged" || types[2] != "call.ended" {
		t.Fatalf("deliveries of %v, want call.created, billing.charged, call.ended once each", types)
	}
}

// waitConsumers waits until queue has n consumers.
func waitConsumers(t *testing.T, conn *amqp.Conn, queue string, n int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%d consumers on %s", n, queue), func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, amqp.Table{"x-single-active-consumer": true})
		return err == nil && q.Consumers == n
	})
}

type recorder struct {
	mu   sync.Mutex
	seen []event.Event
	fail error
}

func (r *recorder) handle(_ context.Context, evs []event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.seen = append(r.seen, evs...)
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func startSub(t *testing.T, conn *amqp.Conn, opts subscriber.Options, h subscriber.Handler) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = subscriber.New(conn, testenv.Logger(t), opts, h).Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// Two instances on one queue: one consumes every event, in order; when it stops, the other takes
// over. That is what keeps a call's events in order with several webhook managers.
func TestOneActiveConsumerInOrderWithFailover(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("webhook-events")
	testenv.DeleteQueuesAtCleanup(t, conn, queue, event.DeadQueue(queue))
	a, b := &recorder{}, &recorder{}
	stopA := startSub(t, conn, subscriber.Options{Queue: queue}, a.handle)
	waitConsumers(t, conn, queue, 1)
	startSub(t, conn, subscriber.Options{Queue: queue}, b.handle)
	waitConsumers(t, conn, queue, 2)

	customer, call := uuid.NewString(), uuid.NewString()
	const n = 50
	for seq := int64(1); seq <= n; seq++ {
		publish(t, conn, event.ExchangeCall, func() event.Event {
			ev, _ := event.New("call.updated", customer, "call", call, seq, map[string]any{})
			return ev
		}())
	}
	testenv.Eventually(t, 10*time.Second, "every event handled", func() bool { return a.count()+b.count() >= n })
	if a.count() != n || b.count() != 0 {
		t.Fatalf("first instance handled %d, second %d: want all %d by the active one", a.count(), b.count(), n)
	}
	for i, ev := range a.seen {
		if ev.Sequence != int64(i+1) {
			t.Fatalf("event %d handled has sequence %d: out of order", i, ev.Sequence)
		}
	}

	stopA()
	later, _ := event.New("call.ended", customer, "call", call, n+1, map[string]any{})
	publish(t, conn, event.ExchangeCall, later)
	testenv.Eventually(t, 10*time.Second, "the second instance to take over", func() bool { return b.count() == 1 })
}

// A failing handler's event ends in the dead-letter queue with the reason, and so does a malformed
// envelope: nothing is dropped.
func TestFailuresAreDeadLettered(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("webhook-events")
	testenv.DeleteQueuesAtCleanup(t, conn, queue, event.DeadQueue(queue))
	r := &recorder{fail: fmt.Errorf("mysql is down")}
	startSub(t, conn, subscriber.Options{Queue: queue, MaxAttempts: 2, Backoff: time.Millisecond}, r.handle)
	waitConsumers(t, conn, queue, 1)

	ev, _ := event.New("call.created", uuid.NewString(), "call", uuid.NewString(), 1, map[string]any{})
	publish(t, conn, event.ExchangeCall, ev)
	if err := conn.Publish(context.Background(), event.ExchangeCall, "customer_id.x.call.created",
		amqp.Publishing{ContentType: "application/json", Body: []byte("{not json")}, amqp.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var dead []amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "two dead letters", func() bool {
		d, ok, err := ch.Get(event.DeadQueue(queue), true)
		if err == nil && ok {
			dead = append(dead, d)
		}
		return len(dead) == 2
	})
	// The two may come in either order: a malformed envelope is set aside before its batch runs.
	byID := map[string]string{}
	for _, d := range dead {
		byID[d.MessageId] = fmt.Sprint(d.Headers["x-error"])
	}
	if got := byID[ev.EventID]; got != "mysql is down" {
		t.Fatalf("the failing event's dead letter says %q (all: %v)", got, byID)
	}
	if got := byID[""]; !strings.Contains(got, "malformed") {
		t.Fatalf("the malformed envelope's dead letter says %q (all: %v)", got, byID)
	}
}

// Events waiting in the queue are recorded in batches; a batch holding an event that always fails
// falls back to one by one: the others are recorded in order and the bad one dead-lettered.
func TestBatchesFallBackToOneByOne(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("webhook-events")
	testenv.DeleteQueuesAtCleanup(t, conn, queue, event.DeadQueue(queue))
	// Declare and bind the queue by starting and stopping a subscriber, then let events pile up.
	stop := startSub(t, conn, subscriber.Options{Queue: queue}, func(context.Context, []event.Event) error { return nil })
	waitConsumers(t, conn, queue, 1)
	stop()
	waitConsumers(t, conn, queue, 0)

	customer, call := uuid.NewString(), uuid.NewString()
	var poison string
	for seq := int64(1); seq <= 20; seq++ {
		typ := "call.updated"
		if seq == 7 {
			typ = "call.poison"
		}
		ev, _ := event.New(typ, customer, "call", call, seq, map[string]any{})
		if seq == 7 {
			poison = ev.EventID
		}
		publish(t, conn, event.ExchangeCall, ev)
	}
	var mu sync.Mutex
	var seen []int64
	var sizes []int
	startSub(t, conn, subscriber.Options{Queue: queue, MaxAttempts: 2, Backoff: time.Millisecond}, func(_ context.Context, evs []event.Event) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(evs))
		for _, ev := range evs {
			if ev.EventType == "call.poison" {
				return fmt.Errorf("cannot record %s", ev.EventID)
			}
		}
		for _, ev := range evs {
			seen = append(seen, ev.Sequence)
		}
		return nil
	})
	testenv.Eventually(t, 10*time.Second, "19 events recorded", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 19 })
	mu.Lock()
	defer mu.Unlock()
	want := []int64{1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("recorded %v, want %v", seen, want)
	}
	if slices.Max(sizes) < 2 {
		t.Fatalf("batch sizes %v: waiting events were not batched", sizes)
	}
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var dead amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "the poison event dead-lettered", func() bool {
		d, ok, err := ch.Get(event.DeadQueue(queue), true)
		if err == nil && ok {
			dead = d
		}
		return ok
	})
	if dead.MessageId != poison {
		t.Fatalf("dead letter %s, want the poison event %s", dead.MessageId, poison)
	}
}

// After the broker drops every connection, the subscriber consumes again on the new one.
func TestResumesAfterTheBrokerClosesTheConnection(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	conn := testenv.DialRabbit(t, url)
	queue := testenv.Name("webhook-events")
	r := &recorder{}
	startSub(t, conn, subscriber.Options{Queue: queue}, r.handle)
	waitConsumers(t, conn, queue, 1)
	customer, call := uuid.NewString(), uuid.NewString()
	first, _ := event.New("call.created", customer, "call", call, 1, map[string]any{})
	publish(t, conn, event.ExchangeCall, first)
	testenv.Eventually(t, 10*time.Second, "the first event", func() bool { return r.count() == 1 })

	testenv.CloseAllConnections(t, vhost)
	waitConsumers(t, conn, queue, 1) // passive declare on the reconnected connection
	second, _ := event.New("call.ended", customer, "call", call, 2, map[string]any{})
	publish(t, conn, event.ExchangeCall, second)
	testenv.Eventually(t, 20*time.Second, "the event published after the reconnection", func() bool { return r.count() >= 2 })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen[len(r.seen)-1].EventID != second.EventID {
		t.Fatalf("last handled %s, want %s", r.seen[len(r.seen)-1].EventID, second.EventID)
	}
}
