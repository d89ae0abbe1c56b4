// Package subscriber feeds the webhook fan-out from RabbitMQ: a durable queue bound to every key
// of call.events and billing.events, acked only once the deliveries an event causes are in MySQL,
// retried and then dead-lettered on failure, with handled event ids remembered in Redis.
//
// It keeps the contract of pkg/event's Subscriber (ack after work, retries, "<queue>.dead", dedupe
// by event_id, the same metrics) with one difference that per-call ordering needs: the queue is
// declared with x-single-active-consumer, so however many webhook managers run, one of them at a
// time consumes it, one event after another, and a call's events are recorded in the order they
// were published (the others take over if it goes away). Dispatch, the slow part, still runs on
// every instance. pkg/event's Subscriber cannot declare queue arguments, hence this adapter.
package subscriber

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/telemetry"
)

// DefaultQueue is the webhook manager's event queue.
const DefaultQueue = "bin-manager.webhook.events"

// Options configure the subscriber.
type Options struct {
	Queue       string        // default DefaultQueue
	Redis       *redis.Client // dedupe store; nil remembers ids in this process only
	MaxAttempts int           // tries before dead-lettering (default 20: a few minutes of database outage)
	Backoff     time.Duration // first retry delay, doubling to 10 s (default 250 ms)
	Prefetch    int           // deliveries the broker sends ahead (default 32; handled one at a time)
	Registerer  prometheus.Registerer
}

// Handler records the deliveries of one event; nil means they are durable.
type Handler func(ctx context.Context, ev event.Event) error

// Subscriber consumes the event queue.
type Subscriber struct {
	conn    *amqp.Conn
	log     *slog.Logger
	opts    Options
	dedupe  event.Deduper
	handler Handler

	handled  *prometheus.CounterVec
	failures prometheus.Counter
}

// New makes the subscriber; Run starts it.
func New(conn *amqp.Conn, log *slog.Logger, opts Options, h Handler) *Subscriber {
	if opts.Queue == "" {
		opts.Queue = DefaultQueue
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 20
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 250 * time.Millisecond
	}
	if opts.Prefetch <= 0 {
		opts.Prefetch = 32
	}
	var dedupe event.Deduper = event.NewMemoryDeduper(100_000)
	if opts.Redis != nil {
		// Keyed by queue: each consumer group remembers what it handled itself.
		dedupe = event.NewRedisDeduper(opts.Redis, "webhook:"+opts.Queue+":seen:", 24*time.Hour)
	}
	labels := prometheus.Labels{"queue": opts.Queue}
	s := &Subscriber{conn: conn, log: log.With("queue", opts.Queue), opts: opts, dedupe: dedupe, handler: h,
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "event_consumed_total",
			Help: "Events consumed by outcome (ok, duplicate, dead_lettered, malformed).", ConstLabels: labels}, []string{"outcome"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "event_handler_failures_total",
			Help: "Handler attempts that failed (each is retried or dead-lettered).", ConstLabels: labels}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.handled, s.failures)
	}
	return s
}

// Bindings are the exchanges and keys the queue is bound to.
var Bindings = []event.Binding{
	{Exchange: event.ExchangeCall, Key: "#"},
	{Exchange: event.ExchangeBilling, Key: "#"},
}

func (s *Subscriber) setup(ch *amqp.Channel) (string, error) {
	args := amqp.Table{"x-single-active-consumer": true}
	if _, err := ch.QueueDeclare(s.opts.Queue, true, false, false, false, args); err != nil {
		return "", fmt.Errorf("declare %s: %w", s.opts.Queue, err)
	}
	if _, err := ch.QueueDeclare(event.DeadQueue(s.opts.Queue), true, false, false, false, nil); err != nil {
		return "", fmt.Errorf("declare %s: %w", event.DeadQueue(s.opts.Queue), err)
	}
	for _, b := range Bindings {
		if err := event.DeclareExchange(ch, b.Exchange); err != nil {
			return "", err
		}
		if err := ch.QueueBind(s.opts.Queue, b.Key, b.Exchange, false, nil); err != nil {
			return "", err
		}
	}
	return s.opts.Queue, nil
}

// Run consumes until ctx ends; the event being handled finishes first.
func (s *Subscriber) Run(ctx context.Context) error {
	s.log.Info("event subscriber consuming (single active consumer)")
	return s.conn.Consume(ctx, amqp.ConsumeSpec{Setup: s.setup, Workers: 1, Prefetch: s.opts.Prefetch},
		func(hctx context.Context, d amqp.Delivery) { s.handle(ctx, hctx, d) })
}

func (s *Subscriber) handle(runCtx, ctx context.Context, d amqp.Delivery) {
	var ev event.Event
	if err := json.Unmarshal(d.Body, &ev); err != nil || ev.EventID == "" || ev.EventType == "" {
		s.handled.WithLabelValues("malformed").Inc()
		s.deadLetter(ctx, d, fmt.Errorf("malformed event envelope: %v", err), 0)
		return
	}
	ctx = telemetry.WithCustomerID(ctx, ev.CustomerID)
	if ev.ResourceType == "call" {
		ctx = telemetry.WithCallID(ctx, ev.ResourceID)
	}
	if s.dedupe.Seen(ctx, ev.EventID) {
		s.handled.WithLabelValues("duplicate").Inc()
		_ = d.Ack(false)
		return
	}
	var err error
	for attempt := 1; ; attempt++ {
		if err = s.handler(ctx, ev); err == nil {
			s.dedupe.Mark(ctx, ev.EventID)
			s.handled.WithLabelValues("ok").Inc()
			_ = d.Ack(false)
			return
		}
		s.failures.Inc()
		if attempt >= s.opts.MaxAttempts {
			break
		}
		s.log.WarnContext(ctx, "event handler failed, retrying", "event_type", ev.EventType, "event_id", ev.EventID, "attempt", attempt, "error", err)
		select {
		case <-runCtx.Done(): // shutting down: leave it to the next consumer
			_ = d.Nack(false, true)
			return
		case <-time.After(retryDelay(s.opts.Backoff, attempt)):
		}
	}
	s.handled.WithLabelValues("dead_lettered").Inc()
	s.deadLetter(ctx, d, err, s.opts.MaxAttempts)
}

func retryDelay(base time.Duration, attempt int) time.Duration {
	d := min(base<<min(attempt-1, 10), 10*time.Second)
	return d/2 + rand.N(d/2+1)
}

// deadLetter moves d to the dead-letter queue with the reason, then acks it. If the move fails the
// delivery is requeued: an event is never dropped.
func (s *Subscriber) deadLetter(ctx context.Context, d amqp.Delivery, cause error, attempts int) {
	headers := amqp.Table{"x-error": cause.Error(), "x-attempts": int64(attempts),
		"x-original-exchange": d.Exchange, "x-original-routing-key": d.RoutingKey}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := s.conn.Publish(pctx, "", event.DeadQueue(s.opts.Queue), amqp.Publishing{ContentType: "application/json",
		DeliveryMode: amqp.Persistent, MessageId: d.MessageId, Headers: headers, Body: d.Body, Timestamp: time.Now()},
		amqp.PublishOptions{Mandatory: true})
	if err != nil {
		s.log.ErrorContext(ctx, "dead-lettering failed, requeueing the event", "error", err)
		_ = d.Nack(false, true)
		return
	}
	s.log.ErrorContext(ctx, "event dead-lettered", "dead_queue", event.DeadQueue(s.opts.Queue), "attempts", attempts, "error", cause)
	_ = d.Ack(false)
}
