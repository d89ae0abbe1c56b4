// Package subscriber feeds rtc.events (ringing, answered, ended) into the call state machine,
// through a durable queue with ack-after-work, retries and a dead-letter queue (pkg/event).
package subscriber

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/rtcapi"
)

// Queue is the call manager's durable queue of rtc events.
const Queue = "bin-manager.call.rtc-events"

// AllRTCEvents binds every rtc event of every customer.
var AllRTCEvents = event.Binding{Exchange: event.ExchangeRTC, Key: event.TypeKey("rtc.*")}

// Handler applies one rtc event; an error means "try again".
type Handler interface {
	OnRTCEvent(ctx context.Context, typ string, ev rtcapi.Event) error
}

// Options tune the subscriber.
type Options struct {
	// Queue to consume (default Queue).
	Queue string
	// Bindings (default AllRTCEvents).
	Bindings []event.Binding
	// MaxAttempts before an event is dead-lettered (default 8: about 20 s of retries, enough to
	// ride out a short MySQL outage; the reaper ends any call whose ended event was lost).
	MaxAttempts int
	Registerer  prometheus.Registerer
}

// New makes the subscriber; Run it. One worker keeps the events of a call in the order rtc
// published them.
func New(conn *amqp.Conn, log *slog.Logger, h Handler, opts Options) *event.Subscriber {
	if opts.Queue == "" {
		opts.Queue = Queue
	}
	if len(opts.Bindings) == 0 {
		opts.Bindings = []event.Binding{AllRTCEvents}
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	return event.NewSubscriber(conn, log, event.SubscriberOptions{Queue: opts.Queue, Bindings: opts.Bindings,
		MaxAttempts: opts.MaxAttempts, Backoff: 200 * time.Millisecond, Workers: 1, Registerer: opts.Registerer},
		func(ctx context.Context, ev event.Event) error {
			var data rtcapi.Event
			if err := json.Unmarshal(ev.Data, &data); err != nil {
				return fmt.Errorf("rtc event %s (%s) has unreadable data: %w", ev.EventID, ev.EventType, err)
			}
			if data.CallID == "" {
				data.CallID = ev.ResourceID
			}
			return h.OnRTCEvent(ctx, ev.EventType, data)
		})
}
