// Package subscriber feeds the webhook fan-out from RabbitMQ: a durable queue bound to every key
// of call.events and billing.events, consumed in queue order (so a resource's events are recorded
// in the order they were published), acked only once the deliveries they cause are in MySQL,
// retried and then dead-lettered on failure, with handled event ids remembered in Redis.
package subscriber

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
)

// DefaultQueue is the webhook manager's event queue.
const DefaultQueue = "bin-manager.webhook.events"

// Options configure the subscriber.
type Options struct {
	Queue      string        // default DefaultQueue
	Redis      *redis.Client // dedupe store; nil remembers ids in memory only
	Registerer prometheus.Registerer
}

// Handler records the deliveries of one event; nil means they are durable.
type Handler func(ctx context.Context, ev event.Event) error

// New makes the subscriber; Run starts it.
func New(conn *amqp.Conn, log *slog.Logger, opts Options, h Handler) *event.Subscriber {
	if opts.Queue == "" {
		opts.Queue = DefaultQueue
	}
	var dedupe event.Deduper
	if opts.Redis != nil {
		// Keyed by queue: each consumer group remembers what it handled itself.
		dedupe = event.NewRedisDeduper(opts.Redis, "webhook:"+opts.Queue+":seen:", 24*time.Hour)
	}
	return event.NewSubscriber(conn, log, event.SubscriberOptions{
		Queue: opts.Queue,
		Bindings: []event.Binding{
			{Exchange: event.ExchangeCall, Key: "#"},
			{Exchange: event.ExchangeBilling, Key: "#"},
		},
		// Workers stays 1: events are recorded in queue order, which keeps each call's deliveries
		// in sequence order. A database outage of a few minutes is retried before dead-lettering.
		Workers:     1,
		MaxAttempts: 20,
		Backoff:     250 * time.Millisecond,
		Dedupe:      dedupe,
		Registerer:  opts.Registerer,
	}, event.Handler(h))
}
