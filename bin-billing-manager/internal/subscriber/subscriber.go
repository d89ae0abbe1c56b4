// Package subscriber turns the events the billing manager listens to into its use cases:
// customer.created opens the customer's account, call.ended charges the call and releases its
// reservation. Every handler is idempotent (the database decides, not a dedupe cache) and returns
// its error so pkg/event retries and, in the end, dead-letters the event: nothing is dropped.
package subscriber

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/callapi"
	"voipbin/pkg/customerapi"
	"voipbin/pkg/event"
	"voipbin/pkg/telemetry"
)

// Queue is the billing manager's durable event queue.
const Queue = "bin-manager.billing.event"

// Bindings are what Queue is bound to: customer.created and call.ended of every customer.
func Bindings() []event.Binding {
	return []event.Binding{
		{Exchange: event.ExchangeCustomer, Key: event.TypeKey(customerapi.EventCreated)},
		{Exchange: event.ExchangeCall, Key: event.TypeKey(callapi.EventEnded)},
	}
}

// Opener opens accounts.
type Opener interface {
	OpenAccount(ctx context.Context, customerID string) (created bool, err error)
}

// Charger charges ended calls.
type Charger interface {
	ChargeCall(ctx context.Context, c billing.CallEnded) (billing.ChargeResult, error)
}

// Deps is what the handler needs.
type Deps struct {
	Opener     Opener
	Charger    Charger
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Handler handles the billing manager's events.
type Handler struct {
	opener  Opener
	charger Charger
	log     *slog.Logger
	charges *prometheus.CounterVec
	amount  *prometheus.CounterVec
	opened  prometheus.Counter
}

// New makes the handler.
func New(d Deps) *Handler {
	h := &Handler{opener: d.Opener, charger: d.Charger, log: d.Log,
		charges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_charges_total",
			Help: "call.ended events handled, by destination type and outcome (charged, free, duplicate)."},
			[]string{"destination_type", "outcome"}),
		amount: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_charged_amount_micros_total",
			Help: "Amount charged for calls, in micro-units of the currency, by destination type."}, []string{"destination_type"}),
		opened: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_accounts_opened_total",
			Help: "Accounts opened from customer.created."}),
	}
	if d.Registerer != nil {
		d.Registerer.MustRegister(h.charges, h.amount, h.opened)
	}
	return h
}

// Handle is the event.Handler.
func (h *Handler) Handle(ctx context.Context, ev event.Event) error {
	switch ev.EventType {
	case customerapi.EventCreated:
		return h.customerCreated(ctx, ev)
	case callapi.EventEnded:
		return h.callEnded(ctx, ev)
	}
	return fmt.Errorf("unexpected event type %q on the billing queue", ev.EventType)
}

func (h *Handler) customerCreated(ctx context.Context, ev event.Event) error {
	var c customerapi.Customer
	if err := json.Unmarshal(ev.Data, &c); err != nil {
		return fmt.Errorf("customer.created %s: bad data: %w", ev.EventID, err)
	}
	if c.ID == "" {
		c.ID = ev.CustomerID
	}
	ctx = telemetry.WithCustomerID(ctx, c.ID)
	h.log.InfoContext(ctx, "opening billing account for new customer", "event_id", ev.EventID)
	created, err := h.opener.OpenAccount(ctx, c.ID)
	if err != nil {
		return fmt.Errorf("open account for customer.created %s: %w", ev.EventID, err)
	}
	if created {
		h.opened.Inc()
		h.log.InfoContext(ctx, "billing account opened")
	} else {
		h.log.InfoContext(ctx, "customer already has a billing account; nothing to do")
	}
	return nil
}

func (h *Handler) callEnded(ctx context.Context, ev event.Event) error {
	var d callapi.EventData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		return fmt.Errorf("call.ended %s: bad data: %w", ev.EventID, err)
	}
	c := billing.CallEnded{CallID: d.CallID, CustomerID: d.CustomerID, DestinationType: d.Destination.Type, Duration: d.Duration}
	if c.CallID == "" {
		c.CallID = d.ID
	}
	if c.CustomerID == "" {
		c.CustomerID = ev.CustomerID
	}
	if ev.CustomerID != "" && c.CustomerID != ev.CustomerID {
		return fmt.Errorf("call.ended %s: data customer_id %q differs from the envelope's %q", ev.EventID, c.CustomerID, ev.CustomerID)
	}
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, c.CustomerID), c.CallID)
	res, err := h.charger.ChargeCall(ctx, c)
	if err != nil {
		return fmt.Errorf("call.ended %s: %w", ev.EventID, err)
	}
	h.charges.WithLabelValues(c.DestinationType, res.Outcome).Inc()
	switch res.Outcome {
	case billing.OutcomeCharged:
		h.amount.WithLabelValues(c.DestinationType).Add(float64(-res.Entry.Amount))
		h.log.InfoContext(ctx, "call charged", "amount", -res.Entry.Amount, "billable_seconds", res.Entry.BillableSeconds,
			"duration", c.Duration, "rate_per_minute", res.Entry.RatePerMinute, "balance_after", res.Entry.BalanceAfter)
		if res.Unbilled > 0 || res.Uncollected > 0 {
			// Talk past the granted quota (the BYE's delay) or a reservation that expired before
			// its call.ended: the balance never goes below zero, so this is not charged.
			h.log.WarnContext(ctx, "call not charged in full", "unbilled_seconds", res.Unbilled, "uncollected", res.Uncollected)
		}
	case billing.OutcomeFree:
		h.log.InfoContext(ctx, "call ended unanswered: nothing charged, reservation released")
	case billing.OutcomeDuplicate:
		h.log.InfoContext(ctx, "call already charged: duplicate call.ended ignored", "event_id", ev.EventID)
	}
	return nil
}
