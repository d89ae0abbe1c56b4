package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/event"
)

// Delivery statuses.
const (
	DeliveryPending   = "pending"
	DeliverySucceeded = "succeeded"
	DeliveryFailed    = "failed"
)

// Delivery is one event to one webhook. Payload is the event envelope, the body of every attempt.
type Delivery struct {
	ID           string
	WebhookID    string
	CustomerID   string
	EventID      string
	EventType    string
	ResourceID   string
	Sequence     int64
	EventTime    time.Time
	Payload      []byte
	Status       string
	NextAttempt  time.Time // when Status is pending
	Attempts     []Attempt // oldest first; filled by the delivery log
	AttemptCount int
	TMCreate     time.Time
}

// Attempt is one try of a delivery, as the delivery log shows it.
type Attempt struct {
	At         time.Time
	HTTPStatus int // 0 when no HTTP answer came
	Latency    time.Duration
	Error      string
	Response   []byte // the first MaxResponseBytes of the answer
}

// FanoutStore is what Fanout needs of the database.
type FanoutStore interface {
	// EnabledWebhooks lists the enabled webhooks of a customer (none for an id that is not one).
	EnabledWebhooks(ctx context.Context, customerID string) ([]Webhook, error)
	// AddDeliveries inserts deliveries in one transaction, skipping any whose (webhook, event)
	// pair exists already, and returns how many it inserted.
	AddDeliveries(ctx context.Context, ds []Delivery) (int, error)
}

// Fanout turns an event into one delivery per webhook that wants it.
type Fanout struct {
	store FanoutStore
	kick  func()
	now   func() time.Time
}

// NewFanout makes a fan-out over store; kick (may be nil) is called after deliveries were added,
// so a dispatcher in this process sends them without waiting for its next poll.
func NewFanout(store FanoutStore, kick func()) *Fanout {
	return &Fanout{store: store, kick: kick, now: func() time.Time { return time.Now().UTC() }}
}

// Handle records a delivery of ev for each enabled webhook of its customer whose event types
// match. A nil error means they are durable: the event may be acked. A redelivered event adds
// nothing twice.
func (f *Fanout) Handle(ctx context.Context, ev event.Event) error {
	return f.HandleBatch(ctx, []event.Event{ev})
}

// HandleBatch is Handle for several events at once, all their deliveries written in one
// statement: one commit for the batch.
func (f *Fanout) HandleBatch(ctx context.Context, evs []event.Event) error {
	hooksOf := map[string][]Webhook{}
	var ds []Delivery
	now := f.now().Truncate(time.Microsecond)
	for _, ev := range evs {
		hooks, ok := hooksOf[ev.CustomerID]
		if !ok {
			var err error
			if hooks, err = f.store.EnabledWebhooks(ctx, ev.CustomerID); err != nil {
				return fmt.Errorf("webhooks of the event's customer: %w", err)
			}
			hooksOf[ev.CustomerID] = hooks
		}
		var payload []byte
		for _, w := range hooks {
			if !w.Wants(ev.EventType) {
				continue
			}
			if payload == nil {
				var err error
				if payload, err = json.Marshal(ev); err != nil {
					return fmt.Errorf("marshal event %s: %w", ev.EventID, err)
				}
			}
			// One microsecond apart, so the delivery log keeps the order the events came in.
			created := now.Add(time.Duration(len(ds)) * time.Microsecond)
			ds = append(ds, Delivery{ID: uuid.NewString(), WebhookID: w.ID, CustomerID: w.CustomerID, EventID: ev.EventID,
				EventType: ev.EventType, ResourceID: ev.ResourceID, Sequence: ev.Sequence, EventTime: ev.Timestamp,
				Payload: payload, Status: DeliveryPending, NextAttempt: created, TMCreate: created})
		}
	}
	if len(ds) == 0 {
		return nil
	}
	n, err := f.store.AddDeliveries(ctx, ds)
	if err != nil {
		return fmt.Errorf("add %d deliveries of %d events: %w", len(ds), len(evs), err)
	}
	if n > 0 && f.kick != nil {
		f.kick()
	}
	return nil
}
