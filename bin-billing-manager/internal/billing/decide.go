package billing

import (
	"time"
)

// Policy is the commercial configuration.
type Policy struct {
	Currency string
	// InitialBalance is credited to a new account (as a balance_add ledger entry).
	InitialBalance int64
	// Rates are prices in micro-units per minute, by destination type.
	Rates map[string]int64
	// Increment is the billing increment: a call is billed per started increment, whole seconds
	// (0 means 60 s: per started minute).
	Increment time.Duration
	// Slice is the talk time one grant of quota covers, whole seconds (0 means 60 s): the gate
	// grants the first slice with the call, each extension one more.
	Slice time.Duration
	// ReservationTTL is how long a reservation holds money past its last grant without its
	// call.ended (a backstop for a lost call.ended: the longest dial plus a grace period).
	ReservationTTL time.Duration
}

func wholeSeconds(d time.Duration) int {
	if d < time.Second {
		return 60
	}
	return int(d / time.Second)
}

// SliceSeconds is the length of one slice of quota in seconds.
func (p Policy) SliceSeconds() int { return wholeSeconds(p.Slice) }

// Price is the charge of seconds of talk at ratePerMinute, billed per started increment: any part
// of an increment costs the whole increment (with the default 60 s, 1 s and 60 s cost one minute
// and 61 s two), and a fraction of a micro-unit is rounded up. Zero seconds (a call never
// answered) cost nothing.
func (p Policy) Price(ratePerMinute int64, seconds int) (billableSeconds int, amount int64) {
	if seconds <= 0 {
		return 0, 0
	}
	inc := wholeSeconds(p.Increment)
	billable := (seconds + inc - 1) / inc * inc
	return billable, (int64(billable)*ratePerMinute + 59) / 60
}

// Required is what the gate reserves for one call at ratePerMinute: the price of its first slice.
func (p Policy) Required(ratePerMinute int64) int64 {
	_, amount := p.Price(ratePerMinute, p.SliceSeconds())
	return amount
}

// decideGate lets a call through if the account's available balance covers its first slice of
// quota, and reserves that slice; a call that already holds an active reservation gets the same
// answer again.
func decideGate(l Locked, callID, destType string, rate, required int64, slice int, now, expire time.Time) (Change, Reservation, error) {
	if r := l.Reservation; r != nil {
		if r.Active(now) {
			return Change{}, *r, nil
		}
		return Change{}, Reservation{}, ErrReservationReleased
	}
	a := l.Account
	if a.Available() < required {
		return Change{}, Reservation{}, &InsufficientBalanceError{Balance: a.Balance, Reserved: a.Reserved, Required: required}
	}
	r := Reservation{CallID: callID, AccountID: a.ID, DestinationType: destType, Amount: required, Granted: slice,
		RatePerMinute: rate, TMCreate: now, TMExpire: expire}
	return Change{Reserve: &r}, r, nil
}

// decideExtend grants a call's next slice of quota (credit control's next unit): the call holds
// quota seconds of talk from its answer, and asks for quota+slice. The reservation grows to the
// price of the new total, if the account's available balance covers the difference; otherwise
// *InsufficientBalanceError and the call keeps what it has. quota is what the caller holds: one
// below what the reservation grants is a retry of a request already granted and gets the same
// answer again, so a lost reply never reserves twice. A call whose reservation is released,
// charged or expired is ErrReservationReleased.
func decideExtend(l Locked, p Policy, quota int, now, expire time.Time) (Change, Reservation, error) {
	r := l.Reservation
	if r == nil || !r.Active(now) {
		return Change{}, Reservation{}, ErrReservationReleased
	}
	switch {
	case quota > r.Granted:
		return Change{}, Reservation{}, invalid("quota", "%d s is more than the %d s granted", quota, r.Granted)
	case quota < r.Granted:
		return Change{}, *r, nil
	case r.Granted >= MaxDuration:
		return Change{}, Reservation{}, invalid("quota", "a call may not be granted more than %d s", MaxDuration)
	}
	n := *r
	n.Granted = min(r.Granted+p.SliceSeconds(), MaxDuration)
	_, amount := p.Price(r.RatePerMinute, n.Granted)
	if extra := amount - r.Amount; extra > 0 {
		if a := l.Account; a.Available() < extra {
			return Change{}, Reservation{}, &InsufficientBalanceError{Balance: a.Balance, Reserved: a.Reserved, Required: extra}
		}
		n.Amount = amount
	}
	if expire.After(n.TMExpire) {
		n.TMExpire = expire
	}
	return Change{Extend: &n}, n, nil
}

// Outcomes of a charge.
const (
	OutcomeCharged   = "charged"   // a ledger entry was written
	OutcomeFree      = "free"      // the call lasted 0 s: nothing to charge, reservation released
	OutcomeDuplicate = "duplicate" // the call was charged before: nothing written
)

// CallEnded is what a charge needs from a call.ended event.
type CallEnded struct {
	CallID          string
	CustomerID      string
	DestinationType string
	// Duration is in whole seconds from answer to hangup.
	Duration int
}

// ChargeResult says what a charge did.
type ChargeResult struct {
	Outcome string
	// Entry is the ledger entry written (OutcomeCharged only).
	Entry Entry
	// Unbilled is the talk time past the quota granted to the call, which is not charged.
	Unbilled int
	// Uncollected is what the call cost beyond what the balance could pay without going below
	// what other calls hold (a reservation that expired before its call.ended): not charged.
	Uncollected int64
}

// decideCharge charges an ended call once: an entry already in the ledger makes it a duplicate;
// otherwise a call with a duration is priced at the rate its reservation recorded (or the current
// rate if it has none) and debited. The charge is what the call used, capped by the quota it was
// granted, and never more than its own reservation plus what is available: the balance never
// goes below what the account's other reservations hold, so never below zero. Whatever the
// outcome, the call's reservation is released.
func decideCharge(l Locked, c CallEnded, p Policy, entryID string, now time.Time) (Change, ChargeResult, error) {
	a := l.Account
	released := int64(0)
	if r := l.Reservation; r != nil && r.Active(now) {
		released = r.Amount
	}
	// Release the reservation in any case; if the row is already released this writes nothing.
	ch := Change{Release: ReleaseCharged, At: now}
	if l.Charged {
		return ch, ChargeResult{Outcome: OutcomeDuplicate}, nil
	}
	if c.Duration <= 0 {
		return ch, ChargeResult{Outcome: OutcomeFree}, nil
	}
	rate, ok := p.Rates[c.DestinationType]
	seconds := c.Duration
	var res ChargeResult
	if r := l.Reservation; r != nil && r.AccountID != "" {
		rate, ok = r.RatePerMinute, true
		if r.Granted > 0 && seconds > r.Granted {
			res.Unbilled, seconds = seconds-r.Granted, r.Granted
		}
	}
	if !ok {
		return Change{}, ChargeResult{}, invalid("destination.type", "no rate for destination type %q", c.DestinationType)
	}
	billable, amount := p.Price(rate, seconds)
	if limit := max(a.Available()+released, 0); amount > limit {
		res.Uncollected, amount = amount-limit, limit
	}
	a.Balance -= amount
	a.Reserved -= released
	a.TMUpdate = now
	e := Entry{ID: entryID, CustomerID: a.CustomerID, AccountID: a.ID, Kind: KindCall, CallID: c.CallID,
		Amount: -amount, BalanceAfter: a.Balance, DestinationType: c.DestinationType, BillableSeconds: billable,
		RatePerMinute: rate, TMCreate: now}
	ch.Entries = []Entry{e}
	a.Sequence++
	charged := Event{Type: EventCharged, Sequence: a.Sequence, Account: a, Entry: &e}
	a.Sequence++
	updated := Event{Type: EventAccountUpdated, Sequence: a.Sequence, Account: a}
	ch.Events = []Event{charged, updated}
	ch.Account = &a
	res.Outcome, res.Entry = OutcomeCharged, e
	return ch, res, nil
}

// decideBalanceAdd credits amount to the account.
func decideBalanceAdd(l Locked, amount int64, entryID string, now time.Time) (Change, Account) {
	a := l.Account
	a.Balance += amount
	a.TMUpdate = now
	a.Sequence++
	e := Entry{ID: entryID, CustomerID: a.CustomerID, AccountID: a.ID, Kind: KindBalanceAdd,
		Amount: amount, BalanceAfter: a.Balance, TMCreate: now}
	return Change{Account: &a, Entries: []Entry{e},
		Events: []Event{{Type: EventAccountUpdated, Sequence: a.Sequence, Account: a}}}, a
}

// openAccount is a new account for customerID with the initial balance credited by a ledger
// entry (so the ledger always sums to the balance) and its first billing.account_updated.
func openAccount(p Policy, id, customerID, entryID string, now time.Time) (Account, []Entry, []Event) {
	a := Account{ID: id, CustomerID: customerID, Currency: p.Currency, Balance: p.InitialBalance,
		Sequence: 1, TMCreate: now, TMUpdate: now}
	var entries []Entry
	if p.InitialBalance != 0 {
		entries = []Entry{{ID: entryID, CustomerID: customerID, AccountID: id, Kind: KindBalanceAdd,
			Amount: p.InitialBalance, BalanceAfter: p.InitialBalance, TMCreate: now}}
	}
	return a, entries, []Event{{Type: EventAccountUpdated, Sequence: 1, Account: a}}
}
