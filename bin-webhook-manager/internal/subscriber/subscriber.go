// Package subscriber feeds the webhook fan-out from RabbitMQ: a durable queue bound to every key
// of call.events and billing.events, acked only once the deliveries an event causes are in MySQL,
// retried and then dead-lettered on failure, with handled event ids remembered in Redis.
//
// It keeps the contract of pkg/event's Subscriber (ack after work, retries, "<queue>.dead", dedupe
// by event_id, the same metrics) with two differences. The queue is declared with
// x-single-active-consumer, so however many webhook managers run, one of them at a time consumes
// it, in queue order, and a call's events are recorded in the order they were published (another
// takes over if it goes away); dispatch, the slow part, still runs on every instance. And events
// that are already waiting are recorded in batches, one commit per batch, which is what lets one
// consumer keep up. pkg/event's Subscriber can neither declare queue arguments nor batch, hence
// this adapter.
package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
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
	MaxAttempts int           // tries of one event before dead-lettering (default 20: a few minutes of database outage)
	Backoff     time.Duration // first retry delay, doubling to 10 s (default 250 ms)
	Prefetch    int           // deliveries the broker sends ahead (default 128)
	Batch       int           // most events handled in one call (default 64)
	Linger      time.Duration // how long a batch waits for one more event (default 1 ms)
	Registerer  prometheus.Registerer
}

// Handler records the deliveries of events, in their order; nil means they are all durable.
type Handler func(ctx context.Context, evs []event.Event) error

// Subscriber consumes the event queue.
type Subscriber struct {
	conn    *amqp.Conn
	log     *slog.Logger
	opts    Options
	dedupe  event.Deduper
	handler Handler

	handled  *prometheus.CounterVec
	failures prometheus.Counter
	batches  prometheus.Histogram
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
		opts.Prefetch = 128
	}
	if opts.Batch <= 0 {
		opts.Batch = 64
	}
	if opts.Linger <= 0 {
		opts.Linger = time.Millisecond
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
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "webhook_event_batch_size",
			Help: "Events recorded per batch (one commit each).", Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.handled, s.failures, s.batches)
	}
	return s
}

// Bindings are the exchanges and keys the queue is bound to.
var Bindings = []event.Binding{
	{Exchange: event.ExchangeCall, Key: "#"},
	{Exchange: event.ExchangeBilling, Key: "#"},
}

func (s *Subscriber) setup(ch *amqp.Channel) error {
	args := amqp.Table{"x-single-active-consumer": true}
	if _, err := ch.QueueDeclare(s.opts.Queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare %s: %w", s.opts.Queue, err)
	}
	if _, err := ch.QueueDeclare(event.DeadQueue(s.opts.Queue), true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare %s: %w", event.DeadQueue(s.opts.Queue), err)
	}
	for _, b := range Bindings {
		if err := event.DeclareExchange(ch, b.Exchange); err != nil {
			return err
		}
		if err := ch.QueueBind(s.opts.Queue, b.Key, b.Exchange, false, nil); err != nil {
			return err
		}
	}
	return nil
}

// Run consumes until ctx ends, resuming after connection losses. The batch being handled
// finishes first; deliveries prefetched but not started go back to the queue.
func (s *Subscriber) Run(ctx context.Context) error {
	s.log.Info("event subscriber consuming (single active consumer)")
	for attempt := 0; ; attempt++ {
		err := s.consumeOnce(ctx)
		if ctx.Err() != nil || errors.Is(err, amqp.ErrClosed) {
			return nil
		}
		s.log.Warn("event consumer stopped, resuming", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(min(attempt+1, 10)) * 200 * time.Millisecond):
		}
	}
}

// consumeOnce consumes on one channel until it closes or ctx ends. It takes what the broker has
// sent ahead, up to Batch deliveries, and handles them as one batch: under load batches grow and
// commits are shared; when idle each event goes alone after at most Linger.
func (s *Subscriber) consumeOnce(ctx context.Context) error {
	ch, err := s.conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close() // unacked deliveries go back to the queue
	if err := ch.Qos(s.opts.Prefetch, 0, false); err != nil {
		return err
	}
	if err := s.setup(ch); err != nil {
		return err
	}
	tag := "voipbin-webhook-" + uuid.NewString()
	deliveries, err := ch.Consume(s.opts.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", s.opts.Queue, err)
	}
	for {
		if ctx.Err() != nil {
			_ = ch.Cancel(tag, false)
			return nil
		}
		var batch []amqp.Delivery
		select {
		case <-ctx.Done():
			_ = ch.Cancel(tag, false)
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("channel closed")
			}
			batch = append(batch, d)
		}
		// The client hands deliveries over one at a time, so wait a moment for ones already on
		// their way: a batch ends when it is full or nothing came for Linger.
		linger := time.NewTimer(s.opts.Linger)
	fill:
		for len(batch) < s.opts.Batch {
			select {
			case d, ok := <-deliveries:
				if !ok {
					break fill
				}
				batch = append(batch, d)
				linger.Reset(s.opts.Linger)
			case <-linger.C:
				break fill
			}
		}
		linger.Stop()
		s.handleBatch(ctx, batch)
	}
}

type item struct {
	d  amqp.Delivery
	ev event.Event
}

// handleBatch records a batch in one handler call and acks it. Malformed envelopes are
// dead-lettered and duplicates acked first. If the batch fails, its events are handled one by one,
// in order, each with its own retries, so one bad event cannot hold the others back.
func (s *Subscriber) handleBatch(runCtx context.Context, batch []amqp.Delivery) {
	ctx := context.WithoutCancel(runCtx) // a batch started is finished
	var items []item
	for _, d := range batch {
		var ev event.Event
		if err := json.Unmarshal(d.Body, &ev); err != nil || ev.EventID == "" || ev.EventType == "" {
			s.handled.WithLabelValues("malformed").Inc()
			s.deadLetter(ctx, d, fmt.Errorf("malformed event envelope: %v", err), 0)
			continue
		}
		if s.dedupe.Seen(ctx, ev.EventID) {
			s.handled.WithLabelValues("duplicate").Inc()
			_ = d.Ack(false)
			continue
		}
		items = append(items, item{d, ev})
	}
	if len(items) == 0 {
		return
	}
	if len(items) > 1 {
		evs := make([]event.Event, len(items))
		for i, it := range items {
			evs[i] = it.ev
		}
		err := s.handler(ctx, evs)
		if err == nil {
			s.batches.Observe(float64(len(items)))
			for _, it := range items {
				s.done(ctx, it)
			}
			return
		}
		s.failures.Inc()
		s.log.WarnContext(ctx, "event batch failed, handling its events one by one", "events", len(items), "error", err)
	}
	for _, it := range items {
		s.handleOne(runCtx, it)
	}
}

func (s *Subscriber) done(ctx context.Context, it item) {
	s.dedupe.Mark(ctx, it.ev.EventID)
	s.handled.WithLabelValues("ok").Inc()
	_ = it.d.Ack(false)
}

func (s *Subscriber) handleOne(runCtx context.Context, it item) {
	ctx := telemetry.WithCustomerID(context.WithoutCancel(runCtx), it.ev.CustomerID)
	if it.ev.ResourceType == "call" {
		ctx = telemetry.WithCallID(ctx, it.ev.ResourceID)
	}
	var err error
	for attempt := 1; ; attempt++ {
		if err = s.handler(ctx, []event.Event{it.ev}); err == nil {
			s.batches.Observe(1)
			s.done(ctx, it)
			return
		}
		s.failures.Inc()
		if attempt >= s.opts.MaxAttempts {
			break
		}
		s.log.WarnContext(ctx, "event handler failed, retrying", "event_type", it.ev.EventType, "event_id", it.ev.EventID, "attempt", attempt, "error", err)
		select {
		case <-runCtx.Done(): // shutting down: leave it to the next consumer
			_ = it.d.Nack(false, true)
			return
		case <-time.After(retryDelay(s.opts.Backoff, attempt)):
		}
	}
	s.handled.WithLabelValues("dead_lettered").Inc()
	s.deadLetter(ctx, it.d, err, s.opts.MaxAttempts)
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
