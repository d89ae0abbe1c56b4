package event_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
)

const table = "test_outbox"

func outboxDB(t *testing.T) *sql.DB {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := db.Exec(strings.ReplaceAll(event.OutboxDDL, "<table>", table)); err != nil {
		t.Fatalf("create outbox: %v", err)
	}
	return db
}

// boundQueue declares an exchange and a queue bound to every key of it, and returns a function
// that reads the next message (or fails after a timeout).
func boundQueue(t *testing.T, conn *amqp.Conn, exchange string) func() (event.Event, bool) {
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
	return func() (event.Event, bool) {
		select {
		case m := <-msgs:
			var ev event.Event
			if err := json.Unmarshal(m.Body, &ev); err != nil {
				t.Fatalf("bad envelope: %s", m.Body)
			}
			if want := event.RoutingKey(ev.CustomerID, ev.EventType); m.RoutingKey != want {
				t.Fatalf("routing key %q, want %q", m.RoutingKey, want)
			}
			return ev, true
		case <-time.After(time.Second):
			return event.Event{}, false
		}
	}
}

func addInTx(t *testing.T, db *sql.DB, exchange string, commit bool, evs ...event.Event) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if err := event.NewOutbox(table).Add(context.Background(), tx, exchange, ev); err != nil {
			t.Fatal(err)
		}
	}
	if commit {
		err = tx.Commit()
	} else {
		err = tx.Rollback()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func newEvent(t *testing.T, typ string, seq int64) event.Event {
	ev, err := event.New(typ, "5e4a0000-0000-0000-0000-000000000001", "call", "c1", seq, map[string]any{"call_id": "c1"})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestCommittedRowIsPublishedRolledBackIsNot(t *testing.T) {
	db := outboxDB(t)
	conn := testenv.Rabbit(t)
	exchange := testenv.Name("ex")
	next := boundQueue(t, conn, exchange)
	relay := event.NewRelay(db, conn, table, testenv.Logger(t), event.RelayOptions{})

	rolledBack := newEvent(t, "call.created", 1)
	committed := newEvent(t, "call.ringing", 2)
	addInTx(t, db, exchange, false, rolledBack)
	addInTx(t, db, exchange, true, committed)
	if n, err := relay.Flush(context.Background()); err != nil || n != 1 {
		t.Fatalf("Flush = %d, %v; want 1 published", n, err)
	}
	got, ok := next()
	if !ok || got.EventID != committed.EventID || got.Sequence != 2 {
		t.Fatalf("got %+v (ok=%v), want the committed event", got, ok)
	}
	if _, ok := next(); ok {
		t.Fatal("a second message arrived: the rolled-back event leaked")
	}
	if n, err := relay.Flush(context.Background()); err != nil || n != 0 {
		t.Fatalf("second Flush = %d, %v; want nothing left", n, err)
	}
}

func TestRelayRunPublishesInOrder(t *testing.T) {
	db := outboxDB(t)
	conn := testenv.Rabbit(t)
	exchange := testenv.Name("ex")
	next := boundQueue(t, conn, exchange)
	relay := event.NewRelay(db, conn, table, testenv.Logger(t), event.RelayOptions{Batch: 7})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for seq := int64(1); seq <= 20; seq++ {
		addInTx(t, db, exchange, true, newEvent(t, "call.updated", seq))
		relay.Kick()
	}
	for want := int64(1); want <= 20; want++ {
		got, ok := next()
		if !ok || got.Sequence != want {
			t.Fatalf("event %d: got seq %d (ok=%v)", want, got.Sequence, ok)
		}
	}
}

// diesAfterPublish publishes for real, then fails as a relay that died before marking would.
type diesAfterPublish struct {
	real  *amqp.Conn
	armed atomic.Bool
}

func (d *diesAfterPublish) PublishBatch(ctx context.Context, msgs []amqp.Message) error {
	if err := d.real.PublishBatch(ctx, msgs); err != nil {
		return err
	}
	if d.armed.CompareAndSwap(true, false) {
		return errors.New("relay died between publish and mark")
	}
	return nil
}

func TestRelayDyingBetweenPublishAndMarkRepublishesAndConsumerSeesOnce(t *testing.T) {
	db := outboxDB(t)
	conn := testenv.Rabbit(t)
	exchange := testenv.Name("ex")
	pub := &diesAfterPublish{real: conn}
	pub.armed.Store(true)
	relay := event.NewRelay(db, pub, table, testenv.Logger(t), event.RelayOptions{})

	var mu sync.Mutex
	seen := map[string]int{}
	queue := testenv.Name("q")
	sub := event.NewSubscriber(conn, testenv.Logger(t), event.SubscriberOptions{
		Queue: queue, Bindings: []event.Binding{{Exchange: exchange, Key: "#"}},
	}, func(ctx context.Context, ev event.Event) error {
		mu.Lock()
		seen[ev.EventID]++
		mu.Unlock()
		return nil
	})
	runSubscriber(t, sub)
	waitBound(t, conn, queue)

	ev := newEvent(t, "call.answered", 3)
	addInTx(t, db, exchange, true, ev)
	if _, err := relay.Flush(context.Background()); err == nil {
		t.Fatal("first pass should have failed after publishing")
	}
	if n, err := relay.Flush(context.Background()); err != nil || n != 1 {
		t.Fatalf("second pass = %d, %v; want the row published again", n, err)
	}
	testenv.Eventually(t, 5*time.Second, "the event to be handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[ev.EventID] == 1
	})
	// A marker queued behind both copies: once it is handled, the in-order subscriber has
	// consumed the duplicate too.
	marker := newEvent(t, "call.updated", 4)
	addInTx(t, db, exchange, true, marker)
	if _, err := relay.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the marker to be handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[marker.EventID] == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if seen[ev.EventID] != 1 {
		t.Fatalf("handler ran %d times, want once", seen[ev.EventID])
	}
}

func TestFailingHandlerIsRetriedThenDeadLettered(t *testing.T) {
	conn := testenv.Rabbit(t)
	exchange := testenv.Name("ex")
	queue := testenv.Name("q")
	var flakyCalls, poisonCalls atomic.Int32
	sub := event.NewSubscriber(conn, testenv.Logger(t), event.SubscriberOptions{
		Queue: queue, Bindings: []event.Binding{{Exchange: exchange, Key: "#"}},
		MaxAttempts: 4, Backoff: 10 * time.Millisecond,
	}, func(ctx context.Context, ev event.Event) error {
		switch ev.EventType {
		case "call.flaky": // fails twice, then works
			if flakyCalls.Add(1) <= 2 {
				return errors.New("transient")
			}
			return nil
		default: // never works
			poisonCalls.Add(1)
			return errors.New("poison")
		}
	})
	runSubscriber(t, sub)
	waitBound(t, conn, queue)

	flaky, poison := newEvent(t, "call.flaky", 1), newEvent(t, "call.poison", 2)
	for _, ev := range []event.Event{flaky, poison} {
		b, _ := json.Marshal(ev)
		if err := conn.Publish(context.Background(), exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
			amqp.Publishing{Body: b, MessageId: ev.EventID}, amqp.PublishOptions{Mandatory: true}); err != nil {
			t.Fatal(err)
		}
	}
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var dead amqp.Delivery
	testenv.Eventually(t, 10*time.Second, "the poison event in the dead-letter queue", func() bool {
		d, ok, err := ch.Get(event.DeadQueue(queue), true)
		if err == nil && ok {
			dead = d
		}
		return ok
	})
	var got event.Event
	_ = json.Unmarshal(dead.Body, &got)
	if got.EventID != poison.EventID {
		t.Fatalf("dead-lettered %s, want the poison event", got.EventType)
	}
	if dead.Headers["x-error"] != "poison" || dead.Headers["x-attempts"] != int64(4) {
		t.Fatalf("dead-letter headers = %v", dead.Headers)
	}
	if flakyCalls.Load() != 3 || poisonCalls.Load() != 4 {
		t.Fatalf("flaky ran %d times (want 3), poison %d (want 4)", flakyCalls.Load(), poisonCalls.Load())
	}
	if _, ok, _ := ch.Get(event.DeadQueue(queue), true); ok {
		t.Fatal("the flaky event was dead-lettered too")
	}
}

func TestConsumerKilledMidMessageIsRedelivered(t *testing.T) {
	url, _ := testenv.RabbitVhost(t)
	first := testenv.DialRabbit(t, url)
	exchange, queue := testenv.Name("ex"), testenv.Name("q")
	opts := event.SubscriberOptions{Queue: queue, Bindings: []event.Binding{{Exchange: exchange, Key: "#"}}}

	started := make(chan string, 1)
	release := make(chan struct{})
	defer close(release)
	dying := event.NewSubscriber(first, testenv.Logger(t), opts, func(ctx context.Context, ev event.Event) error {
		started <- ev.EventID
		<-release // stuck mid-message when its process dies
		return nil
	})
	runSubscriber(t, dying)
	waitBound(t, first, queue)

	ev := newEvent(t, "call.created", 1)
	b, _ := json.Marshal(ev)
	if err := first.Publish(context.Background(), exchange, "customer_id.x.call.created", amqp.Publishing{Body: b}, amqp.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := <-started; got != ev.EventID {
		t.Fatalf("started %s", got)
	}
	_ = first.Close() // the process dies: its connection goes, the message was never acked

	second := testenv.DialRabbit(t, url)
	handled := make(chan string, 1)
	survivor := event.NewSubscriber(second, testenv.Logger(t), opts, func(ctx context.Context, ev event.Event) error {
		handled <- ev.EventID
		return nil
	})
	runSubscriber(t, survivor)
	select {
	case got := <-handled:
		if got != ev.EventID {
			t.Fatalf("redelivered %s, want %s", got, ev.EventID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the unacked event was not redelivered")
	}
}

func TestMatchType(t *testing.T) {
	tests := []struct {
		pattern, typ string
		want         bool
	}{
		{"*", "call.ended", true}, {"call.*", "call.ended", true}, {"call.*", "billing.charged", false},
		{"call.ended", "call.ended", true}, {"call.ended", "call.created", false}, {"call.*", "callx.y", false},
	}
	for _, tt := range tests {
		if got := event.MatchType(tt.pattern, tt.typ); got != tt.want {
			t.Errorf("MatchType(%q, %q) = %v, want %v", tt.pattern, tt.typ, got, tt.want)
		}
	}
}

func runSubscriber(t *testing.T, s *event.Subscriber) {
	t.Helper()
	if q := s.Queue(); q != "" {
		testenv.DeleteQueuesAtCleanup(t, s.Conn(), q, event.DeadQueue(q))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitBound waits until the subscriber consumes queue, which it does only after binding it.
func waitBound(t *testing.T, conn *amqp.Conn, queue string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "the subscriber's consumer", func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0 // the subscriber binds before it consumes
	})
}

// A handler whose dependency is down (the database gone, another service answering
// SERVICE_UNAVAILABLE) is retried past MaxAttempts until the dependency is back: an outage longer
// than a few retries must not dead-letter the event (a charge, a state change) it says nothing about.
func TestOutageIsRetriedUntilItEndsNotDeadLettered(t *testing.T) {
	conn := testenv.Rabbit(t)
	exchange := testenv.Name("ex")
	queue := testenv.Name("q")
	const outageAttempts = 8 // well past MaxAttempts
	var calls atomic.Int32
	done := make(chan struct{})
	sub := event.NewSubscriber(conn, testenv.Logger(t), event.SubscriberOptions{
		Queue: queue, Bindings: []event.Binding{{Exchange: exchange, Key: "#"}},
		MaxAttempts: 3, Backoff: 5 * time.Millisecond,
	}, func(ctx context.Context, ev event.Event) error {
		switch n := calls.Add(1); {
		case n <= outageAttempts/2:
			return fmt.Errorf("charge the call: %w", driver.ErrBadConn) // the database went away
		case n <= outageAttempts:
			return apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "billing is down")
		default:
			close(done)
			return nil
		}
	})
	runSubscriber(t, sub)
	waitBound(t, conn, queue)
	ev := newEvent(t, "call.ended", 1)
	b, _ := json.Marshal(ev)
	if err := conn.Publish(context.Background(), exchange, event.RoutingKey(ev.CustomerID, ev.EventType),
		amqp.Publishing{Body: b, MessageId: ev.EventID}, amqp.PublishOptions{Mandatory: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the event was tried %d times and never handled after the outage", calls.Load())
	}
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, ok, _ := ch.Get(event.DeadQueue(queue), true); ok {
		t.Fatal("the event was dead-lettered during the outage")
	}
	if got := calls.Load(); got != outageAttempts+1 {
		t.Fatalf("handler ran %d times, want %d", got, outageAttempts+1)
	}
}
