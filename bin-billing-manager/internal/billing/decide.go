package billing

import (
	"time"
)

// Policy is the commercial configuration.
type Policy struct {
	Currency string
	// InitialBalance is credited to a new account (as a balance_add ledger entry).
	InitialBalance int64
	// Rates are prices in micro-units per started minute, by destination type.
	Rates map[string]int64
	// ReserveMinutes is how many minutes at the destination's rate the gate holds per call.
	ReserveMinutes int
	// ReservationTTL is how long a reservation holds money without its call.ended: the longest
	// call plus a grace period.
	ReservationTTL time.Duration
}

// Price is the charge of a call of seconds at ratePerMinute, billed per started minute: any part
// of a minute costs the whole minute, so 1 s and 60 s cost one minute and 61 s two. A call of
// zero seconds (never answered) costs nothing.
func Price(ratePerMinute int64, seconds int) (billableSeconds int, amount int64) {
	if seconds <= 0 {
		return 0, 0
	}
	minutes := (seconds + 59) / 60
	return minutes * 60, int64(minutes) * ratePerMinute
}

// Required is what the gate reserves for one call at ratePerMinute.
func (p Policy) Required(ratePerMinute int64) int64 {
	return int64(p.ReserveMinutes) * ratePerMinute
}

// decideGate lets a call through if the account's available balance covers its reservation, and
// reserves it; a call that already holds an active reservation gets the same answer again.
func decideGate(l Locked, callID, destType string, rate, required int64, now, expire time.Time) (Change, Reservation, error) {
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
	r := Reservation{CallID: callID, AccountID: a.ID, DestinationType: destType, Amount: required,
		RatePerMinute: rate, TMCreate: now, TMExpire: expire}
	return Change{Reserve: &r}, r, nil
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
}

// decideCharge charges an ended call once: an entry already in the ledger makes it a duplicate;
// otherwise a call with a duration is priced at the rate its reservation recorded (or the current
// rate if it has none) and debited. Whatever the outcome, the call's reservation is released.
func decideCharge(l Locked, c CallEnded, rates map[string]int64, entryID string, now time.Time) (Change, ChargeResult, error) {
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
	rate, ok := rates[c.DestinationType]
	if r := l.Reservation; r != nil && r.AccountID != "" {
		rate, ok = r.RatePerMinute, true
	}
	if !ok {
		return Change{}, ChargeResult{}, invalid("destination.type", "no rate for destination type %q", c.DestinationType)
	}
	billable, amount := Price(rate, c.Duration)
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
	return ch, ChargeResult{Outcome: OutcomeCharged, Entry: e}, nil
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
