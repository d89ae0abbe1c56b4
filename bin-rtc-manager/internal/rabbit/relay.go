// Package rabbit is the rtc manager's RabbitMQ side for events: it declares the rtc.events
// exchange and relays stored events from the node's outbox to it with publisher confirms,
// removing each only after the broker confirmed it, so an event survives a broker outage and a
// restart of the node (at-least-once; consumers dedupe by event_id).
package rabbit

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
)

// Source is where stored events wait.
type Source interface {
	Peek(ctx context.Context, n int) ([][]byte, error)
	Remove(ctx context.Context, published [][]byte) error
	// Park moves an entry that is not an event aside, for an operator.
	Park(ctx context.Context, raw []byte) error
}

// Publisher is the broker side (amqp.Conn).
type Publisher interface {
	PublishBatch(ctx context.Context, msgs []amqp.Message) error
}

// DeclareExchange declares the durable rtc.events topic exchange.
func DeclareExchange(ch *amqp.Channel) error {
	return ch.ExchangeDeclare(event.ExchangeRTC, "topic", true, false, false, false, nil)
}

// Relay moves events from Source to the rtc.events exchange.
type Relay struct {
	src   Source
	pub   Publisher
	log   *slog.Logger
	kick  chan struct{}
	batch int
	every time.Duration

	published prometheus.Counter
	failures  prometheus.Counter
}

// NewRelay makes a relay; reg (may be nil) receives its metrics.
func NewRelay(src Source, pub Publisher, log *slog.Logger, reg prometheus.Registerer) *Relay {
	r := &Relay{src: src, pub: pub, log: log, kick: make(chan struct{}, 1), batch: 100, every: time.Second,
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "rtc_events_published_total",
			Help: "rtc events published to rtc.events and confirmed by the broker."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "rtc_event_publish_failures_total",
			Help: "Failed attempts to publish or clear stored rtc events (they are retried)."}),
	}
	if reg != nil {
		reg.MustRegister(r.published, r.failures)
	}
	return r
}

// Kick asks for a pass now.
func (r *Relay) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends, then makes a last pass so the outcomes of a graceful shutdown go out.
func (r *Relay) Run(ctx context.Context) error {
	failures := 0
	for {
		// A pass is never cut short by shutdown: an event published but not yet removed would go
		// out twice.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		n, err := r.Pass(pctx)
		cancel()
		switch {
		case err != nil:
			failures++
			r.failures.Inc()
			r.log.WarnContext(ctx, "relaying rtc events failed; they stay stored and are retried", "error", err)
		case n == r.batch:
			failures = 0
			continue // more waiting
		default:
			failures = 0
		}
		wait := r.every
		if failures > 0 {
			wait = min(100*time.Millisecond<<min(failures, 5), 3*time.Second)
		}
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := r.Flush(fctx); err != nil {
				r.log.ErrorContext(ctx, "rtc events left unpublished at shutdown; the node publishes them when it starts again", "error", err)
			}
			return nil
		case <-r.kick:
		case <-time.After(wait):
		}
	}
}

// Flush relays until the source is empty or ctx ends.
func (r *Relay) Flush(ctx context.Context) error {
	for {
		n, err := r.Pass(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if n == 0 {
			return nil
		}
	}
}

// Pass publishes one batch and returns how many events it published.
func (r *Relay) Pass(ctx context.Context) (int, error) {
	raw, err := r.src.Peek(ctx, r.batch)
	if err != nil || len(raw) == 0 {
		return 0, err
	}
	msgs := make([]amqp.Message, 0, len(raw))
	good := make([][]byte, 0, len(raw))
	for _, b := range raw {
		var ev event.Event
		if err := json.Unmarshal(b, &ev); err != nil || ev.EventID == "" || ev.CustomerID == "" {
			// Only this service writes the outbox, so this is corruption: set it aside for an
			// operator instead of blocking every event behind it or dropping it.
			r.log.ErrorContext(ctx, "unreadable entry in the rtc outbox; parked", "error", err, "entry", string(b[:min(len(b), 200)]))
			if err := r.src.Park(ctx, b); err != nil {
				return 0, err
			}
			continue
		}
		good = append(good, b)
		msgs = append(msgs, amqp.Message{Exchange: event.ExchangeRTC, Key: event.RoutingKey(ev.CustomerID, ev.EventType),
			Publishing: amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent,
				MessageId: ev.EventID, Type: ev.EventType, Timestamp: ev.Timestamp, Body: b}})
	}
	if len(msgs) == 0 {
		return len(raw), nil
	}
	if err := r.pub.PublishBatch(ctx, msgs); err != nil {
		return 0, err
	}
	if err := r.src.Remove(ctx, good); err != nil {
		return 0, err // published but kept: they go out again, and consumers drop the copies
	}
	r.published.Add(float64(len(good)))
	return len(raw), nil
}
