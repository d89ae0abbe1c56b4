package subscriber_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/subscriber"
	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

type got struct {
	typ string
	ev  rtcapi.Event
}

// recorder is the handler: it records what it got and fails the call ids in fail.
type recorder struct {
	mu   sync.Mutex
	got  []got
	fail map[string]bool
}

func (r *recorder) OnRTCEvent(_ context.Context, typ string, ev rtcapi.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, got{typ, ev})
	if r.fail[ev.CallID] {
		return errors.New("storage down")
	}
	return nil
}

func (r *recorder) snapshot() []got {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]got(nil), r.got...)
}

func publish(t *testing.T, conn *amqp.Conn, customer, typ string, env event.Event) {
	t.Helper()
	b, _ := json.Marshal(env)
	if err := conn.Publish(context.Background(), event.ExchangeRTC, event.RoutingKey(customer, typ),
		amqp.Publishing{ContentType: "application/json", MessageId: env.EventID, Body: b}, amqp.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
}

func deadCount(t *testing.T, conn *amqp.Conn, queue string) int {
	ch, err := conn.Channel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(event.DeadQueue(queue), true, false, false, false, nil)
	if err != nil {
		return -1
	}
	return q.Messages
}

func TestEventsReachTheHandlerFailuresAreDeadLettered(t *testing.T) {
	conn := testenv.Rabbit(t)
	customer := uuid.NewString()
	queue := testenv.Name("call-rtc-events")
	t.Cleanup(func() {
		ch, err := conn.Channel(context.Background())
		if err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_, _ = ch.QueueDelete(event.DeadQueue(queue), false, false, false)
			_ = ch.Close()
		}
	})
	failing := uuid.NewString()
	rec := &recorder{fail: map[string]bool{failing: true}}
	sub := subscriber.New(conn, testenv.Logger(t), rec, subscriber.Options{Queue: queue, MaxAttempts: 2,
		Bindings: []event.Binding{{Exchange: event.ExchangeRTC, Key: "customer_id." + customer + ".rtc.*"}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = sub.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 10*time.Second, "a consumer on the queue", func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})

	ok := uuid.NewString()
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	env, _ := event.New(rtcapi.EventEnded, customer, "call", ok, 3, rtcapi.Event{CallID: ok, NodeID: "n1", At: at, SIPCode: 486, Cause: 17, By: "remote"})
	publish(t, conn, customer, rtcapi.EventEnded, env)
	// No call_id in the data: the envelope's resource id is the call.
	noID, _ := event.New(rtcapi.EventRinging, customer, "call", ok, 1, rtcapi.Event{NodeID: "n1"})
	publish(t, conn, customer, rtcapi.EventRinging, noID)
	testenv.Eventually(t, 10*time.Second, "two events handled", func() bool { return len(rec.snapshot()) == 2 })
	g := rec.snapshot()
	want := rtcapi.Event{CallID: ok, NodeID: "n1", At: at, SIPCode: 486, Cause: 17, By: "remote"}
	if g[0].typ != rtcapi.EventEnded || g[0].ev != want {
		t.Fatalf("first = %+v, want rtc.ended %+v", g[0], want)
	}
	if g[1].typ != rtcapi.EventRinging || g[1].ev.CallID != ok {
		t.Fatalf("second = %+v, want rtc.ringing for %s", g[1], ok)
	}

	// A handler that keeps failing, and data nobody can read, end in the dead-letter queue.
	bad, _ := event.New(rtcapi.EventAnswered, customer, "call", failing, 2, rtcapi.Event{CallID: failing})
	publish(t, conn, customer, rtcapi.EventAnswered, bad)
	garbage := event.Event{EventID: uuid.NewString(), EventType: rtcapi.EventAnswered, CustomerID: customer, Data: json.RawMessage(`"nope"`)}
	publish(t, conn, customer, rtcapi.EventAnswered, garbage)
	testenv.Eventually(t, 20*time.Second, "both dead-lettered", func() bool { return deadCount(t, conn, queue) == 2 })
	attempts := 0
	for _, x := range rec.snapshot() {
		if x.ev.CallID == failing {
			attempts++
		}
	}
	if attempts != 2 {
		t.Fatalf("failing event tried %d times, want 2 (MaxAttempts)", attempts)
	}
}
