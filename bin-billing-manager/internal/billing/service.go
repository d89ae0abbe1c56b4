package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Store writes accounts, reservations and the ledger, each operation in one transaction.
type Store interface {
	// Create inserts a new account with its entries and events. created is false, and nothing is
	// written, when the customer already has an account.
	Create(ctx context.Context, a Account, entries []Entry, events []Event) (created bool, err error)
	// Update locks the account (SELECT … FOR UPDATE), reads what decide needs about callID (none
	// if callID is empty), and writes decide's Change in the same transaction. decide's error
	// rolls everything back and is returned as is. No account: ErrAccountNotFound.
	Update(ctx context.Context, ref Ref, callID string, now time.Time, decide func(Locked) (Change, error)) error
	// Release marks the call's reservation released at now for reason, or writes a tombstone if
	// it has none; a reservation already released stays as it was.
	Release(ctx context.Context, callID, reason string, now time.Time) error
}

// Reader reads accounts and the ledger.
type Reader interface {
	// Account reads one account with its active reservations summed at now.
	Account(ctx context.Context, id string, now time.Time) (Account, error)
	// Accounts lists accounts in id order.
	Accounts(ctx context.Context, q Query, now time.Time) (Page[Account], error)
	// Entries lists ledger entries, newest first.
	Entries(ctx context.Context, q Query) (Page[Entry], error)
}

// Query selects a page of a list. CustomerID empty means every customer.
type Query struct {
	CustomerID string
	PageSize   int
	PageToken  string
}

// Page is one page of a list; NextPageToken is empty on the last page.
type Page[T any] struct {
	Items         []T
	NextPageToken string
}

// Page sizes of lists.
const (
	DefaultPageSize = 50
	MaxPageSize     = 100
)

// Service runs the billing use cases.
type Service struct {
	store  Store
	reader Reader
	policy Policy
	now    func() time.Time
}

// Deps is what a Service needs.
type Deps struct {
	Store  Store
	Reader Reader
	Policy Policy
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// NewService makes the service.
func NewService(d Deps) *Service {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	return &Service{store: d.Store, reader: d.Reader, policy: d.Policy, now: d.Clock}
}

func (s *Service) clock() time.Time { return s.now().UTC().Truncate(time.Microsecond) }

// canonicalID parses a UUID in any of its usual forms and returns its canonical text.
func canonicalID(field, s string) (string, error) {
	if s == "" {
		return "", invalid(field, "is required")
	}
	u, err := uuid.Parse(s)
	if err != nil {
		return "", invalid(field, "must be a UUID")
	}
	return u.String(), nil
}

// OpenAccount opens the customer's account with the initial balance. It is idempotent: a
// customer who has an account keeps it, and created is false.
func (s *Service) OpenAccount(ctx context.Context, customerID string) (created bool, err error) {
	customerID, err = canonicalID("customer_id", customerID)
	if err != nil {
		return false, err
	}
	now := s.clock()
	a, entries, events := openAccount(s.policy, uuid.NewString(), customerID, uuid.NewString(), now)
	return s.store.Create(ctx, a, entries, events)
}

// callRef checks and canonicalises the ids that name a customer's call.
func callRef(customerID, callID string) (string, string, error) {
	customerID, err := canonicalID("customer_id", customerID)
	if err != nil {
		return "", "", err
	}
	callID, err = canonicalID("call_id", callID)
	if err != nil {
		return "", "", err
	}
	return customerID, callID, nil
}

// GateRequest asks to let a call start.
type GateRequest struct {
	CustomerID      string
	CallID          string
	DestinationType string
}

// Gate lets a call through if the customer's available balance (balance minus the reservations
// of calls in progress) covers the first slice of quota at the destination's rate, and reserves
// that much for the call until its call.ended is charged; the reservation's Granted is the quota. The check and the reservation happen under the
// account's row lock, so concurrent calls cannot overdraw it. A call asked about again gets the
// same answer. No: *InsufficientBalanceError.
func (s *Service) Gate(ctx context.Context, req GateRequest) (Reservation, error) {
	customerID, callID, err := callRef(req.CustomerID, req.CallID)
	if err != nil {
		return Reservation{}, err
	}
	rate, ok := s.policy.Rates[req.DestinationType]
	if !ok {
		return Reservation{}, invalid("destination_type", "must be one of tel, sip; got %q", req.DestinationType)
	}
	required := s.policy.Required(rate)
	now := s.clock()
	var res Reservation
	err = s.store.Update(ctx, Ref{CustomerID: customerID}, callID, now, func(l Locked) (Change, error) {
		ch, r, err := decideGate(l, callID, req.DestinationType, rate, required, s.policy.SliceSeconds(), now, now.Add(s.policy.ReservationTTL))
		res = r
		return ch, err
	})
	if errors.Is(err, ErrAccountNotFound) {
		return Reservation{}, &InsufficientBalanceError{Required: required, NoAccount: true}
	}
	return res, err
}

// ExtendRequest asks for a call's next slice of quota.
type ExtendRequest struct {
	CustomerID string
	CallID     string
	// Quota is the quota in seconds the caller holds now.
	Quota int
}

// Extend grants the call one more slice of quota, reserving its price under the account's row
// lock, so concurrent requests of a customer's calls never reserve more than its balance. No:
// *InsufficientBalanceError; a call already ended: ErrReservationReleased. A retry of a request
// already granted gets the same answer.
func (s *Service) Extend(ctx context.Context, req ExtendRequest) (Reservation, error) {
	customerID, callID, err := callRef(req.CustomerID, req.CallID)
	if err != nil {
		return Reservation{}, err
	}
	if req.Quota <= 0 || req.Quota > MaxDuration {
		return Reservation{}, invalid("quota", "must be within [1, %d] seconds, got %d", MaxDuration, req.Quota)
	}
	now := s.clock()
	expire := now.Add(time.Duration(s.policy.SliceSeconds())*time.Second + s.policy.ReservationTTL)
	var res Reservation
	err = s.store.Update(ctx, Ref{CustomerID: customerID}, callID, now, func(l Locked) (Change, error) {
		ch, r, err := decideExtend(l, s.policy, req.Quota, now, expire)
		res = r
		return ch, err
	})
	if errors.Is(err, ErrAccountNotFound) {
		return Reservation{}, ErrReservationReleased
	}
	return res, err
}

// Release drops the reservation of a call that will not be placed. It is idempotent, and a
// release that comes before the gate request it cancels keeps that request from reserving.
func (s *Service) Release(ctx context.Context, callID string) error {
	callID, err := canonicalID("call_id", callID)
	if err != nil {
		return err
	}
	return s.store.Release(ctx, callID, ReleaseReleased, s.clock())
}

// ChargeCall charges an ended call once and releases its reservation, in one transaction.
func (s *Service) ChargeCall(ctx context.Context, c CallEnded) (ChargeResult, error) {
	var err error
	if c.CallID, err = canonicalID("call_id", c.CallID); err != nil {
		return ChargeResult{}, err
	}
	if c.CustomerID, err = canonicalID("customer_id", c.CustomerID); err != nil {
		return ChargeResult{}, err
	}
	if c.Duration < 0 || c.Duration > MaxDuration {
		return ChargeResult{}, invalid("duration", "must be within [0, %d], got %d", MaxDuration, c.Duration)
	}
	now := s.clock()
	var res ChargeResult
	err = s.store.Update(ctx, Ref{CustomerID: c.CustomerID}, c.CallID, now, func(l Locked) (Change, error) {
		ch, r, err := decideCharge(l, c, s.policy, uuid.NewString(), now)
		res = r
		return ch, err
	})
	if errors.Is(err, ErrAccountNotFound) && c.Duration == 0 {
		// Nothing to charge and nobody to charge it to; still make sure nothing stays reserved.
		return ChargeResult{Outcome: OutcomeFree}, s.store.Release(ctx, c.CallID, ReleaseCharged, now)
	}
	if err != nil {
		return ChargeResult{}, fmt.Errorf("charge call %s: %w", c.CallID, err)
	}
	return res, nil
}

// BalanceAdd credits amount (0 < amount ≤ MaxAmount) to an account.
func (s *Service) BalanceAdd(ctx context.Context, accountID string, amount int64) (Account, error) {
	accountID, err := canonicalID("id", accountID)
	if err != nil {
		return Account{}, ErrAccountNotFound
	}
	if amount <= 0 || amount > MaxAmount {
		return Account{}, invalid("amount", "must be within [1, %d] micro-units, got %d", int64(MaxAmount), amount)
	}
	now := s.clock()
	var out Account
	err = s.store.Update(ctx, Ref{ID: accountID}, "", now, func(l Locked) (Change, error) {
		ch, a := decideBalanceAdd(l, amount, uuid.NewString(), now)
		out = a
		return ch, nil
	})
	return out, err
}

// Account reads one account; customerID, if set, must own it, else it does not exist.
func (s *Service) Account(ctx context.Context, customerID, id string) (Account, error) {
	id, err := canonicalID("id", id)
	if err != nil {
		return Account{}, ErrAccountNotFound
	}
	if customerID != "" {
		if customerID, err = canonicalID("customer_id", customerID); err != nil {
			return Account{}, err
		}
	}
	a, err := s.reader.Account(ctx, id, s.clock())
	if err != nil {
		return Account{}, err
	}
	if customerID != "" && a.CustomerID != customerID {
		return Account{}, ErrAccountNotFound
	}
	return a, nil
}

func (s *Service) query(q Query) (Query, error) {
	if q.CustomerID != "" {
		id, err := canonicalID("customer_id", q.CustomerID)
		if err != nil {
			return Query{}, err
		}
		q.CustomerID = id
	}
	switch {
	case q.PageSize == 0:
		q.PageSize = DefaultPageSize
	case q.PageSize < 0 || q.PageSize > MaxPageSize:
		return Query{}, invalid("page_size", "must be within [1, %d]", MaxPageSize)
	}
	return q, nil
}

// Accounts lists accounts (of one customer, or all).
func (s *Service) Accounts(ctx context.Context, q Query) (Page[Account], error) {
	q, err := s.query(q)
	if err != nil {
		return Page[Account]{}, err
	}
	return s.reader.Accounts(ctx, q, s.clock())
}

// Entries lists ledger entries, newest first.
func (s *Service) Entries(ctx context.Context, q Query) (Page[Entry], error) {
	q, err := s.query(q)
	if err != nil {
		return Page[Entry]{}, err
	}
	return s.reader.Entries(ctx, q)
}
