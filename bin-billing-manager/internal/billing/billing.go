// Package billing owns the money of the platform: one account per customer with its balance in
// integer micro-units, the ledger of every balance change, the balance gate that holds a
// reservation for each call in progress, and the charge of an ended call. It is plain Go: the
// decisions are pure functions over an account read under its row lock (Locked) that return what
// to write (Change); a Store runs them inside one transaction.
package billing

import (
	"errors"
	"fmt"
	"time"
)

// Destination types, as in a call's destination address.
const (
	DestinationTel = "tel"
	DestinationSIP = "sip"
)

// Ledger entry kinds.
const (
	KindCall       = "call"
	KindBalanceAdd = "balance_add"
)

// Event types the billing manager publishes.
const (
	EventAccountUpdated = "billing.account_updated"
	EventCharged        = "billing.charged"
)

// Why a reservation stopped holding money.
const (
	ReleaseCharged  = "charged"  // the call's call.ended was handled (whatever its duration)
	ReleaseReleased = "released" // the call manager gave the call up before placing it
	ReleaseExpired  = "expired"  // no call.ended came within the reservation's lifetime
)

// MaxAmount bounds a single top-up and a single charge, so sums stay far from int64 overflow
// (10^12 micro-units is one million units of the currency).
const MaxAmount = 1_000_000_000_000

// MaxDuration bounds the duration of a call that is charged (seven days, in seconds); a larger
// value is a corrupt event, not a call.
const MaxDuration = 7 * 24 * 3600

// Account is a customer's billing account.
type Account struct {
	ID         string
	CustomerID string
	Currency   string
	// Balance is in micro-units of Currency.
	Balance int64
	// Reserved is what active reservations hold; it is derived when the account is read.
	Reserved int64
	// Sequence is the sequence number of the account's last event.
	Sequence int64
	TMCreate time.Time
	TMUpdate time.Time
}

// Available is what the gate may still reserve.
func (a Account) Available() int64 { return a.Balance - a.Reserved }

// Entry is one row of the ledger.
type Entry struct {
	ID         string
	CustomerID string
	AccountID  string
	Kind       string
	CallID     string
	// Amount changes the balance: negative for a charge, positive for a top-up.
	Amount          int64
	BalanceAfter    int64
	DestinationType string
	BillableSeconds int
	RatePerMinute   int64
	TMCreate        time.Time
}

// Reservation is what the gate holds for one call until its call.ended is charged: the price of
// the quota (talk time from the answer) granted to the call so far.
type Reservation struct {
	CallID string
	// AccountID is empty for a tombstone: a release that found no reservation.
	AccountID       string
	DestinationType string
	Amount          int64
	// Granted is the quota in seconds of talk from the answer: the first slice at the gate, one
	// more slice per extension. The call is charged for no more than this (0: not recorded).
	Granted int
	// RatePerMinute is the rate when the call was let through; the charge uses it, so a rate
	// change does not reprice calls in progress.
	RatePerMinute int64
	TMCreate      time.Time
	TMExpire      time.Time
	TMRelease     *time.Time
	ReleaseReason string
}

// Active reports whether the reservation still holds money at now.
func (r Reservation) Active(now time.Time) bool {
	return r.AccountID != "" && r.TMRelease == nil && now.Before(r.TMExpire)
}

// Event is a billing event to publish in the same transaction as the change it reports. Every
// event is about the account (resource_type "billing_account"), numbered by the account's
// Sequence; Entry is set for billing.charged.
type Event struct {
	Type     string
	Sequence int64
	Account  Account
	Entry    *Entry
}

// Ref names the account an operation works on: by ID, or by CustomerID when ID is empty.
type Ref struct {
	ID         string
	CustomerID string
}

// Locked is an account read under its row lock, with what a decision about one call needs.
type Locked struct {
	// Account has Reserved set to the sum of its active reservations.
	Account Account
	// Reservation is the row of the call (active, released or a tombstone), nil if none.
	Reservation *Reservation
	// Charged reports whether the ledger already has an entry for the call.
	Charged bool
}

// Change is what a decision writes, in the same transaction as the lock it was made under.
type Change struct {
	// Account, when set, is stored: its balance, sequence and tm_update.
	Account *Account
	// Reserve, when set, is inserted.
	Reserve *Reservation
	// Extend, when set, is the call's active reservation with its new amount, quota and expiry.
	Extend *Reservation
	// Release, when set, is the reason to mark the call's reservation released at At (a
	// tombstone is written if the call has none).
	Release string
	At      time.Time
	Entries []Entry
	Events  []Event
}

// Errors of the domain; adapters translate driver errors to them and edges map them to statuses.
var (
	ErrAccountNotFound = errors.New("billing account not found")
	// ErrReservationReleased answers a gate request for a call whose reservation was already
	// released, charged or expired: the call manager has given that call up.
	ErrReservationReleased = errors.New("the call's reservation was already released")
	// ErrInvalidPageToken is a page token this service did not make.
	ErrInvalidPageToken = errors.New("invalid page token")
)

// InvalidError is a bad input field.
type InvalidError struct {
	Field       string
	Description string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Description }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Description: fmt.Sprintf(format, args...)}
}

// InsufficientBalanceError is the gate's no: what is available does not cover what the call
// needs reserved.
type InsufficientBalanceError struct {
	Balance  int64
	Reserved int64
	Required int64
	// NoAccount is set when the customer has no account at all.
	NoAccount bool
}

func (e *InsufficientBalanceError) Error() string {
	if e.NoAccount {
		return "the customer has no billing account"
	}
	return fmt.Sprintf("insufficient balance: balance %d, reserved %d, required %d", e.Balance, e.Reserved, e.Required)
}
