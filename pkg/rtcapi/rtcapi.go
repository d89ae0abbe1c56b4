// Package rtcapi is the contract of bin-rtc-manager (DESIGN §3, §10): dialling on the shared queue,
// hanging up on the owning node's own queue, and the rtc.events the call manager consumes.
package rtcapi

import (
	"context"
	"net/url"
	"time"

	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
)

// Queue is the shared request queue: any node may take a dial.
const Queue = "bin-manager.rtc.request"

// NodeQueue is the queue of one node, which owns the dialogs it dialled.
func NodeQueue(nodeID string) string { return Queue + "." + nodeID }

// DialRequest is the body of POST /v1/dials.
type DialRequest struct {
	CallID      string          `json:"call_id"`
	CustomerID  string          `json:"customer_id"`
	Source      callapi.Address `json:"source"`
	Destination callapi.Address `json:"destination"`
	// DialTimeout and MaxDuration are in seconds; 0 means the node's default.
	DialTimeout int `json:"dial_timeout,omitempty"`
	MaxDuration int `json:"max_duration,omitempty"`
}

// DialResponse is the reply: the node that owns the dialog and the SIP Call-ID.
type DialResponse struct {
	NodeID    string `json:"node_id"`
	SIPCallID string `json:"sip_call_id"`
}

// Dialog is the reply of GET /v1/dialogs/{call_id} on a node queue.
type Dialog struct {
	CallID    string `json:"call_id"`
	NodeID    string `json:"node_id"`
	SIPCallID string `json:"sip_call_id"`
	State     string `json:"state"` // calling, ringing, answered, ended
}

// Routes.
const (
	RouteDial      = "POST /v1/dials"                    // on Queue
	RouteHangup    = "POST /v1/dialogs/{call_id}/hangup" // on NodeQueue, or Queue for a dead node's dialog
	RouteGetDialog = "GET /v1/dialogs/{call_id}"         // on NodeQueue: does the node still own it?
)

// Error reasons.
const (
	ErrReasonDialogNotFound = "DIALOG_NOT_FOUND"
	ErrReasonDialFailed     = "DIAL_FAILED"
)

// rtc.events types, routed as customer_id.<id>.<type> on the rtc.events exchange.
const (
	EventRinging  = "rtc.ringing"
	EventAnswered = "rtc.answered"
	EventEnded    = "rtc.ended"
)

// Event is the data of an rtc event.
type Event struct {
	CallID  string    `json:"call_id"`
	NodeID  string    `json:"node_id"`
	At      time.Time `json:"at"`
	SIPCode int       `json:"sip_code,omitempty"` // final or provisional SIP status
	// For rtc.ended: the Q.850 cause, who ended it, and the reason the node knows
	// (callapi.ReasonNoanswer on dial timeout, ReasonTimeout on max duration; otherwise empty
	// and the call manager derives it from the codes).
	Cause  int    `json:"cause,omitempty"`
	By     string `json:"by,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Client is the typed client of the rtc manager.
type Client struct{ rpc rpc.Caller }

// NewClient makes a client over an RPC caller.
func NewClient(c rpc.Caller) *Client { return &Client{rpc: c} }

// Dial starts an outbound call; the reply comes once the INVITE is sent.
func (c *Client) Dial(ctx context.Context, req DialRequest) (DialResponse, error) {
	var out DialResponse
	err := rpc.Do(ctx, c.rpc, Queue, "POST", "/v1/dials", req, &out)
	return out, err
}

// Hangup ends a dialog: CANCEL before the answer, BYE after. nodeID empty sends it to any node,
// which ends the dialog from its persisted state.
func (c *Client) Hangup(ctx context.Context, nodeID, callID string) error {
	q := Queue
	if nodeID != "" {
		q = NodeQueue(nodeID)
	}
	return rpc.Do(ctx, c.rpc, q, "POST", "/v1/dialogs/"+url.PathEscape(callID)+"/hangup", nil, nil)
}

// GetDialog asks the owning node about a dialog.
func (c *Client) GetDialog(ctx context.Context, nodeID, callID string) (Dialog, error) {
	var out Dialog
	err := rpc.Do(ctx, c.rpc, NodeQueue(nodeID), "GET", "/v1/dialogs/"+url.PathEscape(callID), nil, &out)
	return out, err
}
