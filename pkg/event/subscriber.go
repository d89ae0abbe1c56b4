package event

import (
	"container/list"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/outage"
	"voipbin/pkg/telemetry"
)

// Handler does the work for one event. Returning nil means the work is durable; any error means
// "try again". A handler that cannot ever succeed should still return the error: the event then
// ends in the dead-letter queue instead of vanishing.
type Handler func(ctx context.Context, ev Event) error

// Binding binds the subscriber's queue to an exchange with a routing-key pattern.
type Binding struct {
	Exchange string
	Key      string
}

// Deduper remembers which event ids were handled.
type Deduper interface {
	Seen(ctx context.Context, eventID string) bool
	Mark(ctx context.Context, eventID string)
}

// SubscriberOptions tune a Subscriber.
type SubscriberOptions struct {
	// Queue is the durable queue to consume; empty means a server-named, exclusive, auto-deleted
	// queue for this process alone (e.g. a WebSocket fan-out), which has no dead-letter queue.
	Queue    string
	Bindings []Binding
	// MaxAttempts is how often a failing event is tried before it is dead-lettered (default 5).
	MaxAttempts int
	// Backoff is the first retry delay; it doubles per attempt with jitter, up to 10 s (default 200 ms).
	Backoff time.Duration
	// Workers handle events in parallel (default 1: in queue order).
	Workers int
	// Dedupe drops events already handled (default: an in-memory set of the last 100 000 ids).
	Dedupe     Deduper
	Registerer prometheus.Registerer
	// OnResume, when set, is called when consumption resumes after an interruption, with the time
	// it was noticed, before any event of the resumed consumer is handled. A server-named queue
	// (Queue "") is new then: what the old one held is lost, and OnResume is where to say so.
	OnResume func(interrupted time.Time)
}

// Subscriber consumes events from a queue bound to topic exchanges.
type Subscriber struct {
	conn    *amqp.Conn
	log     *slog.Logger
	opts    SubscriberOptions
	handler Handler

	mu       sync.Mutex
	bindings map[Binding]bool
	queue    string // the queue consumed now (server-named ones change on reconnect)

	handled   *prometheus.CounterVec
	attempts  prometheus.Counter
	transient prometheus.Counter
}

// NewSubscriber makes a subscriber; Run starts it.
func NewSubscriber(conn *amqp.Conn, log *slog.Logger, opts SubscriberOptions, h Handler) *Subscriber {
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 200 * time.Millisecond
	}
	if opts.Workers <= 0 {
		opts.Workers = 1
	}
	if opts.Dedupe == nil {
		opts.Dedupe = NewMemoryDeduper(100_000)
	}
	name := opts.Queue
	if name == "" {
		name = "exclusive"
	}
	s := &Subscriber{conn: conn, log: log.With("queue", name), opts: opts, handler: h, bindings: map[Binding]bool{},
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "event_consumed_total",
			Help: "Events consumed by outcome (ok, duplicate, dead_lettered, malformed).", ConstLabels: prometheus.Labels{"queue": name}}, []string{"outcome"}),
		attempts: prometheus.NewCounter(prometheus.CounterOpts{Name: "event_handler_failures_total",
			Help: "Handler attempts that failed (each is retried or dead-lettered).", ConstLabels: prometheus.Labels{"queue": name}}),
		transient: prometheus.NewCounter(prometheus.CounterOpts{Name: "event_handler_unavailable_total",
			Help: "Handler attempts that failed because a dependency was unavailable (retried until it is back, never dead-lettered).", ConstLabels: prometheus.Labels{"queue": name}}),
	}
	for _, b := range opts.Bindings {
		s.bindings[b] = true
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.handled, s.attempts, s.transient)
	}
	return s
}

// Queue is the durable queue consumed ("" for a server-named exclusive one).
func (s *Subscriber) Queue() string { return s.opts.Queue }

// Conn is the connection the subscriber consumes on.
func (s *Subscriber) Conn() *amqp.Conn { return s.conn }

// DeadQueue is the dead-letter queue of queue.
func DeadQueue(queue string) string { return queue + ".dead" }

// DeclareExchange declares a durable topic exchange.
func DeclareExchange(ch *amqp.Channel, name string) error {
	return ch.ExchangeDeclare(name, "topic", true, false, false, false, nil)
}

func (s *Subscriber) setup(ch *amqp.Channel) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var queue string
	if s.opts.Queue == "" {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return "", err
		}
		queue = q.Name
	} else {
		queue = s.opts.Queue
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			return "", err
		}
		if _, err := ch.QueueDeclare(DeadQueue(queue), true, false, false, false, nil); err != nil {
			return "", err
		}
	}
	for b := range s.bindings {
		if err := DeclareExchange(ch, b.Exchange); err != nil {
			return "", err
		}
		if err := ch.QueueBind(queue, b.Key, b.Exchange, false, nil); err != nil {
			return "", err
		}
	}
	s.queue = queue
	return queue, nil
}

// Bind adds a binding now and keeps it across reconnections.
func (s *Subscriber) Bind(ctx context.Context, b Binding) error {
	return s.changeBinding(ctx, b, true)
}

// Unbind removes a binding.
func (s *Subscriber) Unbind(ctx context.Context, b Binding) error {
	return s.changeBinding(ctx, b, false)
}

func (s *Subscriber) changeBinding(ctx context.Context, b Binding, add bool) error {
	s.mu.Lock()
	if add {
		s.bindings[b] = true
	} else {
		delete(s.bindings, b)
	}
	queue := s.queue
	s.mu.Unlock()
	if queue == "" {
		return nil // not consuming yet: setup applies it
	}
	ch, err := s.conn.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if add {
		if err := DeclareExchange(ch, b.Exchange); err != nil {
			return err
		}
		return ch.QueueBind(queue, b.Key, b.Exchange, false, nil)
	}
	return ch.QueueUnbind(queue, b.Key, b.Exchange, nil)
}

// Run consumes until ctx ends; events being handled finish first.
func (s *Subscriber) Run(ctx context.Context) error {
	s.log.Info("event subscriber consuming")
	return s.conn.Consume(ctx, amqp.ConsumeSpec{Setup: s.setup, Workers: s.opts.Workers,
		Exclusive: s.opts.Queue == "", Resumed: s.opts.OnResume}, func(hctx context.Context, d amqp.Delivery) { s.handle(ctx, hctx, d) })
}

func (s *Subscriber) handle(runCtx, ctx context.Context, d amqp.Delivery) {
	var ev Event
	if err := json.Unmarshal(d.Body, &ev); err != nil || ev.EventID == "" || ev.EventType == "" {
		s.handled.WithLabelValues("malformed").Inc()
		s.deadLetter(ctx, d, fmt.Errorf("malformed event envelope: %v", err), 0)
		return
	}
	ctx = telemetry.WithCustomerID(ctx, ev.CustomerID)
	if ev.ResourceType == "call" {
		ctx = telemetry.WithCallID(ctx, ev.ResourceID)
	}
	if s.opts.Dedupe.Seen(ctx, ev.EventID) {
		s.handled.WithLabelValues("duplicate").Inc()
		_ = d.Ack(false)
		return
	}
	var err error
	for attempt := 1; ; attempt++ {
		if err = s.handler(ctx, ev); err == nil {
			s.opts.Dedupe.Mark(ctx, ev.EventID)
			s.handled.WithLabelValues("ok").Inc()
			_ = d.Ack(false)
			return
		}
		s.attempts.Inc()
		// A dependency that is down (the database, another service) says nothing about the event:
		// it is retried until the dependency is back, however long the outage, and never
		// dead-lettered for it; only other failures count towards MaxAttempts.
		if transient(err) {
			s.transient.Inc()
			attempt = min(attempt, s.opts.MaxAttempts-1)
		} else if attempt >= s.opts.MaxAttempts {
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

// transient reports whether err says a dependency is unavailable rather than the event is bad.
func transient(err error) bool {
	if outage.Unavailable(err) {
		return true
	}
	e, ok := apierr.As(err)
	return ok && e.Status == apierr.Unavailable
}

func retryDelay(base time.Duration, attempt int) time.Duration {
	d := min(base<<min(attempt-1, 10), 10*time.Second)
	return d/2 + rand.N(d/2+1)
}

// deadLetter moves d to the dead-letter queue with the reason, then acks it. If the move fails the
// delivery is requeued: an event is never dropped.
func (s *Subscriber) deadLetter(ctx context.Context, d amqp.Delivery, cause error, attempts int) {
	if s.opts.Queue == "" {
		s.log.ErrorContext(ctx, "event failed on an exclusive queue; dropped from this process's fan-out", "error", cause)
		_ = d.Ack(false)
		return
	}
	headers := amqp.Table{"x-error": cause.Error(), "x-attempts": int64(attempts),
		"x-original-exchange": d.Exchange, "x-original-routing-key": d.RoutingKey}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := s.conn.Publish(pctx, "", DeadQueue(s.opts.Queue), amqp.Publishing{ContentType: "application/json",
		DeliveryMode: amqp.Persistent, MessageId: d.MessageId, Headers: headers, Body: d.Body, Timestamp: time.Now()},
		amqp.PublishOptions{Mandatory: true})
	if err != nil {
		s.log.ErrorContext(ctx, "dead-lettering failed, requeueing the event", "error", err)
		_ = d.Nack(false, true)
		return
	}
	s.log.ErrorContext(ctx, "event dead-lettered", "dead_queue", DeadQueue(s.opts.Queue), "attempts", attempts, "error", cause)
	_ = d.Ack(false)
}

// MemoryDeduper remembers the last n event ids in this process.
type MemoryDeduper struct {
	mu    sync.Mutex
	n     int
	order *list.List
	ids   map[string]*list.Element
}

// NewMemoryDeduper remembers up to n ids.
func NewMemoryDeduper(n int) *MemoryDeduper {
	return &MemoryDeduper{n: n, order: list.New(), ids: map[string]*list.Element{}}
}

// Seen reports whether id was marked.
func (m *MemoryDeduper) Seen(_ context.Context, id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.ids[id]
	return ok
}

// Mark remembers id, forgetting the oldest beyond n.
func (m *MemoryDeduper) Mark(_ context.Context, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ids[id]; ok {
		return
	}
	m.ids[id] = m.order.PushBack(id)
	if m.order.Len() > m.n {
		delete(m.ids, m.order.Remove(m.order.Front()).(string))
	}
}

// RedisDeduper remembers handled ids in Redis for ttl, shared by every instance of a consumer.
// With Redis down it remembers nothing (handlers are idempotent; dedupe only saves work).
type RedisDeduper struct {
	rdb    *redis.Client
	prefix string
	ttl    time.Duration
}

// NewRedisDeduper keys ids as prefix+id.
func NewRedisDeduper(rdb *redis.Client, prefix string, ttl time.Duration) *RedisDeduper {
	return &RedisDeduper{rdb: rdb, prefix: prefix, ttl: ttl}
}

// Seen reports whether id was marked; false when Redis cannot answer.
func (r *RedisDeduper) Seen(ctx context.Context, id string) bool {
	n, err := r.rdb.Exists(ctx, r.prefix+id).Result()
	return err == nil && n > 0
}

// Mark remembers id.
func (r *RedisDeduper) Mark(ctx context.Context, id string) {
	_ = r.rdb.Set(ctx, r.prefix+id, 1, r.ttl).Err()
}
