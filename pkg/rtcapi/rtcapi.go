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
	// Quota is the talk time paid for, in seconds from the answer (0: none, only MaxDuration).
	// The node ends the call (BYE, reason balance_exhausted) when it runs out, unless Extend
	// raised it in time: a call manager or billing that cannot be reached never lets it run on.
	Quota int `json:"quota,omitempty"`
}

// QuotaRequest is the body of POST /v1/dialogs/{call_id}/quota on the owning node's queue: the
// call's new quota in seconds from its answer. A quota at or below the current one changes
// nothing, so a retry is harmless.
type QuotaRequest struct {
	Quota int `json:"quota"`
}

// HangupRequest is the optional body of a hang-up: Reason is empty or callapi.ReasonBalanceExhausted,
// which the node reports in rtc.ended.
type HangupRequest struct {
	Reason string `json:"reason,omitempty"`
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
	// Quota is the talk time the node lets the call have, in seconds from its answer (0: none).
	Quota int `json:"quota,omitempty"`
}

// Routes.
const (
	RouteDial      = "POST /v1/dials"                    // on Queue
	RouteHangup    = "POST /v1/dialogs/{call_id}/hangup" // on NodeQueue, or Queue for a dead node's dialog
	RouteGetDialog = "GET /v1/dialogs/{call_id}"         // on NodeQueue: does the node still own it?
	RouteQuota     = "POST /v1/dialogs/{call_id}/quota"  // on NodeQueue: extend the call's quota
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
	// (callapi.ReasonNoanswer on dial timeout, ReasonTimeout on max duration,
	// ReasonBalanceExhausted when its quota ran out; otherwise empty and the call manager derives
	// it from the codes).
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
	return c.HangupReason(ctx, nodeID, callID, "")
}

// HangupReason is Hangup with the reason the node reports in rtc.ended (see HangupRequest).
func (c *Client) HangupReason(ctx context.Context, nodeID, callID, reason string) error {
	q := Queue
	if nodeID != "" {
		q = NodeQueue(nodeID)
	}
	var body any
	if reason != "" {
		body = HangupRequest{Reason: reason}
	}
	return rpc.Do(ctx, c.rpc, q, "POST", "/v1/dialogs/"+url.PathEscape(callID)+"/hangup", body, nil)
}

// Extend raises the quota of a call on the node that owns its dialog (see QuotaRequest). A
// dialog that has ended is DIALOG_NOT_FOUND.
func (c *Client) Extend(ctx context.Context, nodeID, callID string, quota int) error {
	return rpc.Do(ctx, c.rpc, NodeQueue(nodeID), "POST", "/v1/dialogs/"+url.PathEscape(callID)+"/quota", QuotaRequest{Quota: quota}, nil)
}

// GetDialog asks the owning node about a dialog.
func (c *Client) GetDialog(ctx context.Context, nodeID, callID string) (Dialog, error) {
	var out Dialog
	err := rpc.Do(ctx, c.rpc, NodeQueue(nodeID), "GET", "/v1/dialogs/"+url.PathEscape(callID), nil, &out)
	return out, err
}
