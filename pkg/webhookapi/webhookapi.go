// Package webhookapi is the contract of bin-webhook-manager (DESIGN §8): webhooks, their delivery
// log, and the routes of bin-manager.webhook.request the API gateway forwards to.
package webhookapi

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"voipbin/pkg/rpc"
)

// Queue is the webhook manager's request queue.
const Queue = "bin-manager.webhook.request"

// Webhook statuses.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"
)

// Webhook is a customer's endpoint. Secret is set only in the replies of create and rotate.
type Webhook struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	Name       string    `json:"name"`
	URI        string    `json:"uri"`
	Method     string    `json:"method"`
	EventTypes []string  `json:"event_types"`
	Status     string    `json:"status"`
	Secret     string    `json:"secret,omitempty"`
	TMCreate   time.Time `json:"tm_create"`
	TMUpdate   time.Time `json:"tm_update"`
}

// WriteRequest is the body of create and update (PUT replaces; Status may enable or disable).
type WriteRequest struct {
	CustomerID string   `json:"customer_id"`
	Name       string   `json:"name"`
	URI        string   `json:"uri"`
	Method     string   `json:"method,omitempty"`
	EventTypes []string `json:"event_types"`
	Status     string   `json:"status,omitempty"`
}

// Delivery statuses.
const (
	DeliveryPending   = "pending"
	DeliverySucceeded = "succeeded"
	DeliveryFailed    = "failed"
)

// Attempt is one try of a delivery.
type Attempt struct {
	At         time.Time `json:"at"`
	HTTPStatus int       `json:"http_status,omitempty"`
	LatencyMS  int64     `json:"latency_ms"`
	Error      string    `json:"error,omitempty"`
	Response   string    `json:"response,omitempty"` // the first 1 KiB of the answer
}

// Delivery is one event to one webhook.
type Delivery struct {
	ID          string     `json:"id"`
	WebhookID   string     `json:"webhook_id"`
	EventID     string     `json:"event_id"`
	EventType   string     `json:"event_type"`
	Status      string     `json:"status"`
	Attempts    []Attempt  `json:"attempts"`
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
	TMCreate    time.Time  `json:"tm_create"`
}

// List replies.
type (
	WebhookList struct {
		Result []Webhook `json:"result"`
	}
	DeliveryList struct {
		Result        []Delivery `json:"result"`
		NextPageToken string     `json:"next_page_token,omitempty"`
	}
)

// Routes on Queue; ?customer_id= scopes each (empty: any customer, for superadmin).
const (
	RouteCreate     = "POST /v1/webhooks"
	RouteList       = "GET /v1/webhooks"
	RouteGet        = "GET /v1/webhooks/{id}"
	RouteUpdate     = "PUT /v1/webhooks/{id}"
	RouteDelete     = "DELETE /v1/webhooks/{id}"
	RouteRotate     = "POST /v1/webhooks/{id}/rotate_secret"
	RouteDeliveries = "GET /v1/webhooks/{id}/deliveries"
	RouteRetry      = "POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry"
)

// Error reasons.
const (
	ErrReasonWebhookNotFound  = "WEBHOOK_NOT_FOUND"
	ErrReasonDeliveryNotFound = "DELIVERY_NOT_FOUND"
	ErrReasonTargetForbidden  = "WEBHOOK_TARGET_FORBIDDEN"
	ErrReasonWebhookDisabled  = "WEBHOOK_DISABLED" // a retry asked of a disabled webhook (409)
)

// Client is the typed client of the webhook manager.
type Client struct{ rpc rpc.Caller }

// NewClient makes a client over an RPC caller.
func NewClient(c rpc.Caller) *Client { return &Client{rpc: c} }

func scoped(path, customerID string, extra url.Values) string {
	v := url.Values{}
	for k, vs := range extra {
		v[k] = vs
	}
	if customerID != "" {
		v.Set("customer_id", customerID)
	}
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}

func path(id string, rest ...string) string {
	p := "/v1/webhooks/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// Create makes a webhook; the reply carries its secret.
func (c *Client) Create(ctx context.Context, req WriteRequest) (Webhook, error) {
	var out Webhook
	err := rpc.Do(ctx, c.rpc, Queue, "POST", "/v1/webhooks", req, &out)
	return out, err
}

// List lists a customer's webhooks.
func (c *Client) List(ctx context.Context, customerID string) ([]Webhook, error) {
	var out WebhookList
	err := rpc.Do(ctx, c.rpc, Queue, "GET", scoped("/v1/webhooks", customerID, nil), nil, &out)
	return out.Result, err
}

// Get reads a webhook.
func (c *Client) Get(ctx context.Context, customerID, id string) (Webhook, error) {
	var out Webhook
	err := rpc.Do(ctx, c.rpc, Queue, "GET", scoped(path(id), customerID, nil), nil, &out)
	return out, err
}

// Update replaces a webhook's settings.
func (c *Client) Update(ctx context.Context, customerID, id string, req WriteRequest) (Webhook, error) {
	var out Webhook
	err := rpc.Do(ctx, c.rpc, Queue, "PUT", scoped(path(id), customerID, nil), req, &out)
	return out, err
}

// Delete removes a webhook.
func (c *Client) Delete(ctx context.Context, customerID, id string) (Webhook, error) {
	var out Webhook
	err := rpc.Do(ctx, c.rpc, Queue, "DELETE", scoped(path(id), customerID, nil), nil, &out)
	return out, err
}

// RotateSecret replaces the secret; the reply carries the new one.
func (c *Client) RotateSecret(ctx context.Context, customerID, id string) (Webhook, error) {
	var out Webhook
	err := rpc.Do(ctx, c.rpc, Queue, "POST", scoped(path(id, "rotate_secret"), customerID, nil), nil, &out)
	return out, err
}

// Deliveries lists a webhook's deliveries, newest first.
func (c *Client) Deliveries(ctx context.Context, customerID, id string, pageSize int, pageToken string) (DeliveryList, error) {
	v := url.Values{}
	if pageSize > 0 {
		v.Set("page_size", strconv.Itoa(pageSize))
	}
	if pageToken != "" {
		v.Set("page_token", pageToken)
	}
	var out DeliveryList
	err := rpc.Do(ctx, c.rpc, Queue, "GET", scoped(path(id, "deliveries"), customerID, v), nil, &out)
	return out, err
}

// Retry sends a delivery again now.
func (c *Client) Retry(ctx context.Context, customerID, id, deliveryID string) (Delivery, error) {
	var out Delivery
	err := rpc.Do(ctx, c.rpc, Queue, "POST", scoped(path(id, "deliveries", url.PathEscape(deliveryID), "retry"), customerID, nil), nil, &out)
	return out, err
}
