// Package event is the platform's event bus (DESIGN §4): the envelope every event travels in, a
// transactional outbox that makes a state change and its event one MySQL commit, the relay that
// moves outbox rows to RabbitMQ, and the Subscriber that consumes them with ack-after-work, retries,
// a dead-letter queue and dedupe by event_id.
//
// Delivery is at-least-once. The relay claims pending rows with SELECT … FOR UPDATE SKIP LOCKED
// inside a transaction, publishes them with publisher confirms, marks them sent and commits. Two
// relays running at once claim disjoint rows, so neither blocks nor double-publishes the other's
// rows (events of one resource may then be published out of order; consumers order by sequence).
// A relay that dies between publish and mark leaves its transaction uncommitted: the rows stay
// pending and are published again by the next pass or the next relay. Consumers therefore see an
// event more than once only in that window, and drop the copy by event_id.
package event

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Exchanges, one per producing service (DESIGN §4).
const (
	ExchangeCall     = "call.events"
	ExchangeBilling  = "billing.events"
	ExchangeWebhook  = "webhook.events"
	ExchangeCustomer = "customer.events"
	ExchangeRTC      = "rtc.events"
)

// Event is the envelope, the same on RabbitMQ, on the WebSocket and in webhook bodies.
type Event struct {
	EventID      string          `json:"event_id"`
	EventType    string          `json:"event_type"`
	Timestamp    time.Time       `json:"timestamp"`
	CustomerID   string          `json:"customer_id"`
	ResourceType string          `json:"resource_type"`
	ResourceID   string          `json:"resource_id"`
	Sequence     int64           `json:"sequence"`
	Data         json.RawMessage `json:"data"`
}

// New makes an event with a fresh id and the current time (UTC, microseconds).
func New(eventType, customerID, resourceType, resourceID string, sequence int64, data any) (Event, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("marshal %s data: %w", eventType, err)
	}
	return Event{EventID: uuid.NewString(), EventType: eventType, Timestamp: time.Now().UTC().Truncate(time.Microsecond),
		CustomerID: customerID, ResourceType: resourceType, ResourceID: resourceID, Sequence: sequence, Data: b}, nil
}

// RoutingKey is "customer_id.<customer_id>.<event_type>".
func RoutingKey(customerID, eventType string) string {
	return "customer_id." + customerID + "." + eventType
}

// CustomerKey binds every event of one customer: "customer_id.<id>.#".
func CustomerKey(customerID string) string { return "customer_id." + customerID + ".#" }

// TypeKey binds one event type of every customer: "customer_id.*.<event_type>" (dots in the
// type are routing-key words, so "call.*" binds every call event).
func TypeKey(eventType string) string { return "customer_id.*." + eventType }

// MatchType reports whether eventType matches a pattern: exact, "*" for all, or "prefix.*".
func MatchType(pattern, eventType string) bool {
	if pattern == "*" || pattern == eventType {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, ".*"); ok {
		return strings.HasPrefix(eventType, p+".")
	}
	return false
}
