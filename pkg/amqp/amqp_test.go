package amqp_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"voipbin/pkg/amqp"
	"voipbin/pkg/testenv"
)

func TestPublishConfirmsAndReportsUnroutable(t *testing.T) {
	conn := testenv.Rabbit(t)
	queue := testenv.Name("q")
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	if err := conn.Declare(context.Background(), func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := conn.Publish(ctx, "", queue, amqp.Publishing{Body: []byte("x"), MessageId: "1"}, amqp.PublishOptions{Mandatory: true}); err != nil {
		t.Fatalf("publish to an existing queue: %v", err)
	}
	err := conn.Publish(ctx, "", testenv.Name("nobody"), amqp.Publishing{Body: []byte("x"), MessageId: "2"}, amqp.PublishOptions{Mandatory: true})
	if !errors.Is(err, amqp.ErrUnroutable) {
		t.Fatalf("publish to no queue: err = %v, want ErrUnroutable", err)
	}
	msgs := []amqp.Message{}
	for i := range 50 {
		msgs = append(msgs, amqp.Message{Key: queue, Publishing: amqp.Publishing{Body: []byte(fmt.Sprint(i))}})
	}
	if err := conn.PublishBatch(ctx, msgs); err != nil {
		t.Fatalf("batch: %v", err)
	}
	ch, err := conn.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil || q.Messages != 51 {
		t.Fatalf("queue holds %d messages (%v), want 51: a confirmed publish is in the queue", q.Messages, err)
	}
}

func TestReconnectRedeclaresTopologyAndResumesConsumers(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	conn := testenv.DialRabbit(t, url)
	exchange, queue := testenv.Name("ex"), testenv.Name("q")
	// The auto-delete queue vanishes with its consumer's connection, and the auto-delete exchange
	// with its last binding: both must come back by themselves after a forced close.
	if err := conn.Declare(context.Background(), func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(exchange, "topic", false, true, false, false, nil)
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	var resumedAt []time.Time
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- conn.Consume(ctx, amqp.ConsumeSpec{Setup: func(ch *amqp.Channel) (string, error) {
			if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
				return "", err
			}
			return queue, ch.QueueBind(queue, "#", exchange, false, nil)
		}, Resumed: func(at time.Time) {
			mu.Lock()
			got = append(got, "resumed")
			resumedAt = append(resumedAt, at)
			mu.Unlock()
		}}, func(_ context.Context, d amqp.Delivery) {
			mu.Lock()
			got = append(got, string(d.Body))
			mu.Unlock()
			_ = d.Ack(false)
		})
	}()
	publishUntilSeen := func(body string) {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, "delivery of "+body, func() bool {
			pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
			defer pcancel()
			_ = conn.Publish(pctx, exchange, "k", amqp.Publishing{Body: []byte(body)}, amqp.PublishOptions{})
			mu.Lock()
			defer mu.Unlock()
			for _, g := range got {
				if g == body {
					return true
				}
			}
			return false
		})
	}
	publishUntilSeen("before")
	closedAt := time.Now()
	testenv.CloseAllConnections(t, vhost)
	publishUntilSeen("after")
	// Resumed ran once, with the time the loss was noticed, before anything of the new consumer.
	mu.Lock()
	if len(resumedAt) != 1 || resumedAt[0].Before(closedAt) || resumedAt[0].After(time.Now()) {
		t.Errorf("Resumed called at %v, want once, after the close at %v", resumedAt, closedAt)
	}
	resumed, after := -1, -1
	for i, g := range got {
		switch g {
		case "resumed":
			resumed = i
		case "after":
			after = i
		}
	}
	if resumed < 0 || after < resumed {
		t.Errorf("handled %v: want \"resumed\" before the first delivery of the new consumer", got)
	}
	mu.Unlock()
	if err := conn.Check(context.Background()); err != nil {
		t.Fatalf("Check after reconnect: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Consume returned %v on shutdown, want nil", err)
	}
}

func TestPublishWaitsForReconnection(t *testing.T) {
	url, vhost := testenv.RabbitVhost(t)
	conn := testenv.DialRabbit(t, url)
	queue := testenv.Name("q")
	if err := conn.Declare(context.Background(), func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	testenv.CloseAllConnections(t, vhost)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The first attempt may hit the dying connection; a publish that returns nil was confirmed.
	testenv.Eventually(t, 30*time.Second, "a confirmed publish after the forced close", func() bool {
		return conn.Publish(ctx, "", queue, amqp.Publishing{Body: []byte("x")}, amqp.PublishOptions{Mandatory: true}) == nil
	})
}
