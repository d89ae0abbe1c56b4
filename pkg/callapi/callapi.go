// Package callapi is the contract of bin-call-manager (DESIGN §3, §4, §6): the Call and Address
// wire types, the routes of bin-manager.call.request with their request and reply bodies, the call
// event types, and a typed client used by every caller.
package callapi

import (
	"context"
	"net/url"
	"strconv"
	"time"

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
)

// CreateRequest is the body of POST /v1/calls. Each destination becomes one call.
type CreateRequest struct {
	CustomerID   string         `json:"customer_id"`
	Source       Address        `json:"source"`
	Destinations []Address      `json:"destinations"`
	Metadata     map[string]any `json:"metadata,omitempty"`
	// Timeout is the dial timeout in seconds (0: the default).
	Timeout int `json:"timeout,omitempty"`
}

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

// Create places one call per destination.
func (c *Client) Create(ctx context.Context, req CreateRequest) ([]Call, error) {
	var out CreateResponse
	if err := rpc.Do(ctx, c.rpc, Queue, "POST", "/v1/calls", req, &out); err != nil {
		return nil, err
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
