package rabbit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-rtc-manager/internal/cache"
	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/bin-rtc-manager/internal/rabbit"
	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/testenv"
)

// outboxWith stores n events of one call in a fresh Redis outbox.
func outboxWith(t *testing.T, node string, n int) (*cache.Store, *cache.Outbox, string) {
	s, o, c, _ := outboxWithRaw(t, node, n)
	return s, o, c
}

// outboxWithRaw also returns a function that pushes a raw entry to the outbox.
func outboxWithRaw(t *testing.T, node string, n int) (*cache.Store, *cache.Outbox, string, func([]byte)) {
	t.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: testenv.RedisAddress()})
	prefix := testenv.Name("rtcrelay")
	t.Cleanup(func() {
		keys, _ := rdb.Keys(ctx, prefix+":*").Result()
		if len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
		_ = rdb.Close()
	})
	store := cache.NewStore(rdb, prefix, node)
	customer := testenv.Name("cust")
	if err := store.Create(ctx, &dialog.Dialog{CallID: "call", CustomerID: customer, NodeID: node, State: dialog.StateCalling,
		DialTimeout: time.Minute, MaxDuration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	addEvents(t, store, n)
	push := func(b []byte) {
		if err := rdb.RPush(ctx, cache.OutboxKey(prefix, node), b).Err(); err != nil {
			t.Fatal(err)
		}
	}
	return store, cache.NewOutbox(rdb, prefix, node), customer, push
}

func addEvents(t *testing.T, store *cache.Store, n int) {
	t.Helper()
	for range n {
		if _, err := store.Update(context.Background(), "call", func(d *dialog.Dialog) ([]dialog.Emitted, error) {
			d.Seq++
			return []dialog.Emitted{{Type: rtcapi.EventRinging, Sequence: d.Seq, Data: rtcapi.Event{CallID: "call"}}}, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// flaky fails its first publishes, then records what it is given.
type flaky struct {
	mu    sync.Mutex
	fails int
	got   []amqp.Message
}

func (f *flaky) PublishBatch(_ context.Context, msgs []amqp.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return errors.New("broker unreachable")
	}
	f.got = append(f.got, msgs...)
	return nil
}

func (f *flaky) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got)
}

func TestRelayKeepsEventsUntilConfirmed(t *testing.T) {
	store, outbox, customer, push := outboxWithRaw(t, "n1", 2)
	// Corruption between good events is parked, not published and not in the way.
	push([]byte("not json"))
	addEvents(t, store, 1)
	pub := &flaky{fails: 3}
	relay := rabbit.NewRelay(outbox, pub, testenv.Logger(t), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { cancel(); <-done }()

	testenv.Eventually(t, 10*time.Second, "the events to be published after the failures", func() bool { return pub.count() == 3 })
	testenv.Eventually(t, 5*time.Second, "the outbox to empty", func() bool { n, _ := outbox.Len(context.Background()); return n == 0 })
	for i, m := range pub.got {
		var ev event.Event
		if err := json.Unmarshal(m.Publishing.Body, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Sequence != int64(i+1) || m.Exchange != event.ExchangeRTC || m.Key != event.RoutingKey(customer, rtcapi.EventRinging) ||
			m.Publishing.MessageId != ev.EventID || m.Publishing.DeliveryMode != amqp.Persistent {
			t.Errorf("message %d = %+v (sequence %d)", i, m, ev.Sequence)
		}
	}
}

// Events stored while the broker drops every connection reach a consumer once it is back.
func TestRelayThroughBrokerOutage(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	conn := testenv.DialRabbit(t, url)
	store, outbox, customer := outboxWith(t, "n2", 5)
	if err := conn.Declare(context.Background(), rabbit.DeclareExchange); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	var mu sync.Mutex
	q := testenv.Name("relay_test")
	ready := make(chan struct{})
	var once sync.Once
	cctx, ccancel := context.WithCancel(context.Background())
	cdone := make(chan struct{})
	go func() {
		defer close(cdone)
		_ = conn.Consume(cctx, amqp.ConsumeSpec{Setup: func(ch *amqp.Channel) (string, error) {
			if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
				return "", err
			}
			if err := ch.QueueBind(q, event.CustomerKey(customer), event.ExchangeRTC, false, nil); err != nil {
				return "", err
			}
			once.Do(func() { close(ready) })
			return q, nil
		}}, func(_ context.Context, d amqp.Delivery) {
			var ev event.Event
			_ = json.Unmarshal(d.Body, &ev)
			mu.Lock()
			got[ev.EventID] = ev.Sequence
			mu.Unlock()
			_ = d.Ack(false)
		})
	}()
	defer func() { ccancel(); <-cdone }()
	<-ready

	relay := rabbit.NewRelay(outbox, conn, testenv.Logger(t), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, 10*time.Second, "the first 5 events", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 5 })

	testenv.CloseAllConnections(t, vhost)
	addEvents(t, store, 5)
	relay.Kick()
	testenv.Eventually(t, 30*time.Second, "all 10 events after the outage", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 10
	})
	mu.Lock()
	defer mu.Unlock()
	seqs := map[int64]bool{}
	for _, s := range got {
		seqs[s] = true
	}
	for i := int64(1); i <= 10; i++ {
		if !seqs[i] {
			t.Errorf("sequence %d missing from %v", i, fmt.Sprint(seqs))
		}
	}
	if n, _ := outbox.Len(context.Background()); n != 0 {
		t.Errorf("outbox holds %d events after they were confirmed", n)
	}
}
