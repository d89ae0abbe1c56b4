// Package callapi is the contract of bin-call-manager (DESIGN §3, §4, §6): the Call and Address
// wire types, the routes of bin-manager.call.request with their request and reply bodies, the call
// event types, and a typed client used by every caller.
package callapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/rpc"
)

// Queue is the call manager's request queue.
const Queue = "bin-manager.call.request"

// Address types.
const (
	AddressTel = "tel"
	AddressSIP = "sip"
)

// Address is a party of a call.
type Address struct {
	Type       string `json:"type"`
	Target     string `json:"target"`
	TargetName string `json:"target_name,omitempty"`
	Name       string `json:"name,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

// Status of a call; it only moves forward (DESIGN §6).
type Status string

// The statuses.
const (
	StatusDialing     Status = "dialing"
	StatusRinging     Status = "ringing"
	StatusProgressing Status = "progressing"
	StatusTerminating Status = "terminating"
	StatusCanceling   Status = "canceling"
	StatusHangup      Status = "hangup"
)

// Directions.
const (
	DirectionOutgoing = "outgoing"
	DirectionIncoming = "incoming"
)

// Hangup reasons.
const (
	ReasonNormal   = "normal"
	ReasonFailed   = "failed"
	ReasonBusy     = "busy"
	ReasonCancel   = "cancel"
	ReasonTimeout  = "timeout"
	ReasonNoanswer = "noanswer"
	ReasonDialout  = "dialout"
	// ReasonBalanceExhausted: the answered call used up the talk time its balance paid for and
	// no more was granted (billing refused, or could not be asked in time).
	ReasonBalanceExhausted = "balance_exhausted"
)

// Hangup sides.
const (
	HangupByLocal  = "local"
	HangupByRemote = "remote"
)

// Call is the public call record (DESIGN §6). Unset timestamps are absent.
type Call struct {
	ID            string         `json:"id"`
	CustomerID    string         `json:"customer_id"`
	Source        Address        `json:"source"`
	Destination   Address        `json:"destination"`
	Status        Status         `json:"status"`
	Direction     string         `json:"direction"`
	HangupBy      string         `json:"hangup_by,omitempty"`
	HangupReason  string         `json:"hangup_reason,omitempty"`
	HangupCause   int            `json:"hangup_cause,omitempty"`
	SIPCode       int            `json:"sip_code,omitempty"`
	Duration      int            `json:"duration"`
	Metadata      map[string]any `json:"metadata,omitempty"`
	TMCreate      time.Time      `json:"tm_create"`
	TMUpdate      time.Time      `json:"tm_update"`
	TMRinging     *time.Time     `json:"tm_ringing,omitempty"`
	TMProgressing *time.Time     `json:"tm_progressing,omitempty"`
	TMHangup      *time.Time     `json:"tm_hangup,omitempty"`
}

// EventData is the data of a call event: the Call plus call_id (equal to id).
type EventData struct {
	Call
	CallID string `json:"call_id"`
}

// Call event types (DESIGN §4).
const (
	EventCreated  = "call.created"
	EventRinging  = "call.ringing"
	EventAnswered = "call.answered"
	EventUpdated  = "call.updated"
	EventEnded    = "call.ended"
)

// EventTypes lists every call event type.
var EventTypes = []string{EventCreated, EventRinging, EventAnswered, EventUpdated, EventEnded}

// Error reasons of the call manager.
const (
	ErrReasonCallNotFound        = "CALL_NOT_FOUND"
	ErrReasonCallStateInvalid    = "CALL_STATE_INVALID"
	ErrReasonInsufficientBalance = "INSUFFICIENT_BALANCE"
	// ErrReasonIdempotencyKeyReused (409 ALREADY_EXISTS): the key was first used with another
	// request body.
	ErrReasonIdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED"
	// ErrReasonIdempotencyKeyInUse (409 FAILED_PRECONDITION): a create with this key is still
	// running; ask again later (details carry "retry_after_ms").
	ErrReasonIdempotencyKeyInUse = "IDEMPOTENCY_KEY_IN_USE"
	// ErrReasonDeadlineTooShort (503 UNAVAILABLE): the caller's deadline leaves less time than
	// the gate and the dial need; nothing was started.
	ErrReasonDeadlineTooShort = "DEADLINE_TOO_SHORT"
	// ErrReasonOutcomeUnknown (500 INTERNAL): the call manager could not tell whether the calls
	// were committed; a retry with the same idempotency key tells.
	ErrReasonOutcomeUnknown = "CREATE_OUTCOME_UNKNOWN"
)

// Time budgets of POST /v1/calls (they nest: each caller waits longer than its callee's whole
// budget, and each callee gives up before its caller).
const (
	// MaxCreateBudget is the longest a call manager may be configured to spend on one create
	// (CALL_CREATE_BUDGET is validated against it). A caller waits at least this plus
	// CreateReplyMargin.
	MaxCreateBudget = 10 * time.Second
	// CreateReplyMargin is the time a create's reply needs to travel back: the call manager
	// finishes this long before the caller's deadline, and callers wait this much longer than
	// MaxCreateBudget.
	CreateReplyMargin = time.Second
	// CreateTimeout is the shortest a caller of Create should wait, and what Client.Create waits
	// when ctx has no deadline.
	CreateTimeout = MaxCreateBudget + CreateReplyMargin
)

// ErrOutcomeUnknown marks a Create error after which the calls may or may not exist: no reply
// came (a timeout, a lost connection), or the call manager said it could not tell. Every other
// Create error is the call manager's answer and means no call was created. Retrying with the same
// IdempotencyKey never places a second set of calls and tells which it was.
var ErrOutcomeUnknown = errors.New("outcome of the create is unknown")

// CreatedNothing reports whether a Create error proves that no call was created: a typed answer
// of the call manager that is neither INTERNAL nor marked ErrOutcomeUnknown.
func CreatedNothing(err error) bool {
	if err == nil || errors.Is(err, ErrOutcomeUnknown) {
		return false
	}
	e, ok := apierr.As(err)
	return ok && e.Status != apierr.Internal
}

// CreateRequest is the body of POST /v1/calls. Each destination becomes one call.
type CreateRequest struct {
	CustomerID   string         `json:"customer_id"`
	Source       Address        `json:"source"`
	Destinations []Address      `json:"destinations"`
	Metadata     map[string]any `json:"metadata,omitempty"`
	// Timeout is the dial timeout in seconds (0: the default).
	Timeout int `json:"timeout,omitempty"`
	// IdempotencyKey, when set, makes the create idempotent for the customer: the call manager
	// keeps it unique per customer, and a second create with it returns the calls of the first
	// (same body) without dialling again, or IDEMPOTENCY_KEY_REUSED (other body), or
	// IDEMPOTENCY_KEY_IN_USE while the first is still running. At most 512 bytes. The body's
	// other fields are what "same body" compares.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// MaxIdempotencyKey is the longest IdempotencyKey accepted, in bytes.
const MaxIdempotencyKey = 512

// CreateResponse is the reply of POST /v1/calls.
type CreateResponse struct {
	Calls []Call `json:"calls"`
}

// ListQuery is the query of GET /v1/calls. CustomerID empty means every customer (superadmin).
// Use PageToken/PageSize (cursor) or Offset/Limit.
type ListQuery struct {
	CustomerID string
	PageSize   int
	PageToken  string
	Limit      int
	Offset     int
	Status     string
	Direction  string
}

// Values encodes the query.
func (q ListQuery) Values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	seti := func(k string, n int) {
		if n != 0 {
			v.Set(k, strconv.Itoa(n))
		}
	}
	set("customer_id", q.CustomerID)
	seti("page_size", q.PageSize)
	set("page_token", q.PageToken)
	seti("limit", q.Limit)
	seti("offset", q.Offset)
	set("status", q.Status)
	set("direction", q.Direction)
	return v
}

// ListResponse is the reply of GET /v1/calls, newest first.
type ListResponse struct {
	Result        []Call `json:"result"`
	NextPageToken string `json:"next_page_token,omitempty"`
}

// Routes served on Queue. Single-call routes take ?customer_id= to scope the look-up: empty means
// any customer (superadmin); another customer's call is answered as CALL_NOT_FOUND.
const (
	RouteCreate = "POST /v1/calls"
	RouteList   = "GET /v1/calls"
	RouteGet    = "GET /v1/calls/{id}"
	RouteHangup = "POST /v1/calls/{id}/hangup"
	RouteDelete = "DELETE /v1/calls/{id}"
)

// ListTimeout is the RPC deadline for lists (DESIGN §3).
const ListTimeout = 30 * time.Second

// Client is the typed client of the call manager.
type Client struct{ rpc rpc.Caller }

// NewClient makes a client over an RPC caller.
func NewClient(c rpc.Caller) *Client { return &Client{rpc: c} }

// Create places one call per destination. An error wraps ErrOutcomeUnknown unless it is the
// call manager's answer that nothing was created (see CreatedNothing).
func (c *Client) Create(ctx context.Context, req CreateRequest) ([]Call, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, CreateTimeout)
		defer cancel()
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("marshal request: %w", err)
	}
	resp, err := c.rpc.Call(ctx, Queue, rpc.Request{Method: "POST", Route: "/v1/calls", Body: b})
	if err != nil {
		if resp == nil || !CreatedNothing(err) {
			return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		return nil, err
	}
	var out CreateResponse
	if err := json.Unmarshal(resp.Body, &out); err != nil {
		return nil, fmt.Errorf("%w: decode POST /v1/calls reply: %w", ErrOutcomeUnknown, err)
	}
	return out.Calls, nil
}

// List lists calls, newest first.
func (c *Client) List(ctx context.Context, q ListQuery) (ListResponse, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ListTimeout)
		defer cancel()
	}
	var out ListResponse
	route := "/v1/calls"
	if v := q.Values().Encode(); v != "" {
		route += "?" + v
	}
	err := rpc.Do(ctx, c.rpc, Queue, "GET", route, nil, &out)
	return out, err
}

func scoped(path, customerID string) string {
	if customerID == "" {
		return path
	}
	return path + "?customer_id=" + url.QueryEscape(customerID)
}

// Get reads one call.
func (c *Client) Get(ctx context.Context, customerID, id string) (Call, error) {
	var out Call
	err := rpc.Do(ctx, c.rpc, Queue, "GET", scoped("/v1/calls/"+url.PathEscape(id), customerID), nil, &out)
	return out, err
}

// Hangup asks for a live call to be hung up and returns it as it is then.
func (c *Client) Hangup(ctx context.Context, customerID, id string) (Call, error) {
	var out Call
	err := rpc.Do(ctx, c.rpc, Queue, "POST", scoped("/v1/calls/"+url.PathEscape(id)+"/hangup", customerID), nil, &out)
	return out, err
}

// Delete hangs a call up if it is live, then soft-deletes it.
func (c *Client) Delete(ctx context.Context, customerID, id string) (Call, error) {
	var out Call
	err := rpc.Do(ctx, c.rpc, Queue, "DELETE", scoped("/v1/calls/"+url.PathEscape(id), customerID), nil, &out)
	return out, err
}
