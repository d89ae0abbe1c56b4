// Package billingapi is the contract of bin-billing-manager: accounts and balances in integer
// micro-units (1 USD = 1 000 000), the ledger, the balance gate a call must pass before it is
// dialled, and the billing events.
package billingapi

import (
	"context"
	"net/url"
	"strconv"
	"time"

	"voipbin/pkg/rpc"
)

// Queue is the billing manager's request queue.
const Queue = "bin-manager.billing.request"

// Account is a customer's billing account.
type Account struct {
	ID         string `json:"id"`
	CustomerID string `json:"customer_id"`
	Currency   string `json:"currency"`
	// Balance is in micro-units of Currency.
	Balance int64 `json:"balance"`
	// Reserved is held by calls in progress (see the gate); Available = Balance - Reserved.
	Reserved  int64     `json:"reserved"`
	Available int64     `json:"available"`
	TMCreate  time.Time `json:"tm_create"`
	TMUpdate  time.Time `json:"tm_update"`
}

// Billing is one ledger entry.
type Billing struct {
	ID         string `json:"id"`
	CustomerID string `json:"customer_id"`
	AccountID  string `json:"account_id"`
	Kind       string `json:"kind"` // "call" or "balance_add"
	CallID     string `json:"call_id,omitempty"`
	// Amount changes the balance: negative for a charge, positive for a top-up.
	Amount          int64     `json:"amount"`
	BalanceAfter    int64     `json:"balance_after"`
	DestinationType string    `json:"destination_type,omitempty"`
	BillableSeconds int       `json:"billable_seconds,omitempty"`
	RatePerMinute   int64     `json:"rate_per_minute,omitempty"`
	TMCreate        time.Time `json:"tm_create"`
}

// Ledger entry kinds.
const (
	KindCall       = "call"
	KindBalanceAdd = "balance_add"
)

// GateRequest asks whether a customer may start a call to a destination type; on yes the billing
// manager holds a reservation for the call until its call.ended is charged (or it is released).
// The reservation is the price of the call's first slice of quota (BILLING_QUOTA_SLICE, default
// 60 s of talk from the answer) at the destination's rate, and the answer is yes only if the
// account's balance minus the reservations of its calls in progress covers it, so a balance
// covering one slice lets one call through however many ask at once. Asking again
// for the same call_id gives the same answer without reserving twice; asking for a call whose
// reservation was released or charged is 409 FAILED_PRECONDITION/RESERVATION_RELEASED. A customer
// without an account is 402 like one without money. Bad input is 400 INVALID_ARGUMENT with the
// field in details.
type GateRequest struct {
	CustomerID      string `json:"customer_id"`
	CallID          string `json:"call_id"`
	DestinationType string `json:"destination_type"`
}

// GateResponse is the yes; a no is 402 PAYMENT_REQUIRED/INSUFFICIENT_BALANCE with one detail
// {"balance","reserved","required"} in micro-units.
type GateResponse struct {
	Allowed  bool  `json:"allowed"`
	Reserved int64 `json:"reserved"`
	// Quota is the talk time granted to the call, in seconds from its answer (0: no quota is
	// enforced). Before it is used up the call manager asks for more (Extend); the rtc node ends
	// the call when it runs out.
	Quota int `json:"quota,omitempty"`
}

// ExtendRequest asks for a call's next slice of quota (credit control's next unit): Quota is the
// quota in seconds the caller holds now. The answer is the new total; a retry of a request already
// granted (Quota one grant behind) gets the same answer without reserving again. The reservation
// grows to the price of the new total only if the account's available balance covers the
// difference: otherwise 402 PAYMENT_REQUIRED/INSUFFICIENT_BALANCE, and the call keeps only what it
// was granted. A call whose reservation was released or charged (it ended) is 409
// FAILED_PRECONDITION/RESERVATION_RELEASED.
type ExtendRequest struct {
	CustomerID string `json:"customer_id"`
	Quota      int    `json:"quota"`
}

// ExtendResponse is the yes: the call's quota in seconds from its answer, and what its
// reservation now holds.
type ExtendResponse struct {
	Quota    int   `json:"quota"`
	Reserved int64 `json:"reserved"`
}

// BalanceAddRequest is the body of the superadmin top-up: 0 < amount ≤ 10^12 micro-units.
type BalanceAddRequest struct {
	Amount int64 `json:"amount"`
}

// AccountList is the reply of GET /v1/accounts, in id order. The route takes page_size (≤ 100,
// default 50) and page_token; NextPageToken is empty on the last page.
type AccountList struct {
	Result        []Account `json:"result"`
	NextPageToken string    `json:"next_page_token,omitempty"`
}

// BillingList is the reply of GET /v1/billings, newest first. The route takes customer_id,
// page_size (≤ 100, default 50) and page_token.
type BillingList struct {
	Result        []Billing `json:"result"`
	NextPageToken string    `json:"next_page_token,omitempty"`
}

// Routes served on Queue. ?customer_id= scopes reads (empty: every customer, for superadmin).
const (
	RouteGate       = "POST /v1/gate"
	RouteRelease    = "DELETE /v1/reservations/{call_id}"
	RouteExtend     = "POST /v1/reservations/{call_id}/extend"
	RouteAccounts   = "GET /v1/accounts"
	RouteAccount    = "GET /v1/accounts/{id}"
	RouteBalanceAdd = "POST /v1/accounts/{id}/balance_add"
	RouteBillings   = "GET /v1/billings"
)

// Error reasons.
const (
	ErrReasonInsufficientBalance = "INSUFFICIENT_BALANCE"
	ErrReasonAccountNotFound     = "BILLING_ACCOUNT_NOT_FOUND"
	// ErrReasonReservationReleased (409 FAILED_PRECONDITION) answers a gate request for a call
	// whose reservation was already released, charged or expired: that call was given up.
	ErrReasonReservationReleased = "RESERVATION_RELEASED"
)

// Events on billing.events.
const (
	EventAccountUpdated = "billing.account_updated"
	EventCharged        = "billing.charged"
)

// Client is the typed client of the billing manager.
type Client struct{ rpc rpc.Caller }

// NewClient makes a client over an RPC caller.
func NewClient(c rpc.Caller) *Client { return &Client{rpc: c} }

// Gate asks for permission (and a reservation) to start a call.
func (c *Client) Gate(ctx context.Context, req GateRequest) (GateResponse, error) {
	var out GateResponse
	err := rpc.Do(ctx, c.rpc, Queue, "POST", "/v1/gate", req, &out)
	return out, err
}

// Extend asks for the call's next slice of quota (see ExtendRequest).
func (c *Client) Extend(ctx context.Context, callID string, req ExtendRequest) (ExtendResponse, error) {
	var out ExtendResponse
	err := rpc.Do(ctx, c.rpc, Queue, "POST", "/v1/reservations/"+url.PathEscape(callID)+"/extend", req, &out)
	return out, err
}

// Release drops the reservation of a call that was never placed. It is idempotent, and a gate
// request for the call that arrives after it is refused (RESERVATION_RELEASED).
func (c *Client) Release(ctx context.Context, callID string) error {
	return rpc.Do(ctx, c.rpc, Queue, "DELETE", "/v1/reservations/"+url.PathEscape(callID), nil, nil)
}

func scoped(path, customerID string) string {
	if customerID == "" {
		return path
	}
	return path + "?customer_id=" + url.QueryEscape(customerID)
}

// Accounts lists accounts (customerID empty: all); only the first page, see AccountsPage.
func (c *Client) Accounts(ctx context.Context, customerID string) ([]Account, error) {
	var out AccountList
	err := rpc.Do(ctx, c.rpc, Queue, "GET", scoped("/v1/accounts", customerID), nil, &out)
	return out.Result, err
}

// AccountsPage lists one page of accounts (customerID empty: all) in id order.
func (c *Client) AccountsPage(ctx context.Context, customerID string, pageSize int, pageToken string) (AccountList, error) {
	var out AccountList
	err := rpc.Do(ctx, c.rpc, Queue, "GET", pageRoute("/v1/accounts", customerID, pageSize, pageToken), nil, &out)
	return out, err
}

func pageRoute(path, customerID string, pageSize int, pageToken string) string {
	v := url.Values{}
	if customerID != "" {
		v.Set("customer_id", customerID)
	}
	if pageSize > 0 {
		v.Set("page_size", strconv.Itoa(pageSize))
	}
	if pageToken != "" {
		v.Set("page_token", pageToken)
	}
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	return path
}

// Account reads one account.
func (c *Client) Account(ctx context.Context, customerID, id string) (Account, error) {
	var out Account
	err := rpc.Do(ctx, c.rpc, Queue, "GET", scoped("/v1/accounts/"+url.PathEscape(id), customerID), nil, &out)
	return out, err
}

// BalanceAdd adds amount micro-units to an account (superadmin).
func (c *Client) BalanceAdd(ctx context.Context, id string, amount int64) (Account, error) {
	var out Account
	err := rpc.Do(ctx, c.rpc, Queue, "POST", "/v1/accounts/"+url.PathEscape(id)+"/balance_add", BalanceAddRequest{Amount: amount}, &out)
	return out, err
}

// Billings lists ledger entries, newest first.
func (c *Client) Billings(ctx context.Context, customerID string, pageSize int, pageToken string) (BillingList, error) {
	var out BillingList
	err := rpc.Do(ctx, c.rpc, Queue, "GET", pageRoute("/v1/billings", customerID, pageSize, pageToken), nil, &out)
	return out, err
}
