package billing

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestPricePerStartedMinute(t *testing.T) {
	tests := []struct {
		name         string
		rate         int64
		seconds      int
		wantBillable int
		wantAmount   int64
	}{
		{"never answered", 20_000, 0, 0, 0},
		{"negative is nothing", 20_000, -5, 0, 0},
		{"one second is a minute", 20_000, 1, 60, 20_000},
		{"59 s", 20_000, 59, 60, 20_000},
		{"exactly a minute", 20_000, 60, 60, 20_000},
		{"one second into the second minute", 20_000, 61, 120, 40_000},
		{"an hour", 20_000, 3600, 3600, 1_200_000},
		{"an hour and a second", 20_000, 3601, 3660, 1_220_000},
		{"free rate", 0, 125, 180, 0},
		{"a week at the highest rate fits", 1_000_000_000, MaxDuration, MaxDuration, 10_080 * 1_000_000_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotBillable, gotAmount := Policy{}.Price(tt.rate, tt.seconds)
			if gotBillable != tt.wantBillable || gotAmount != tt.wantAmount {
				t.Fatalf("Price(%d, %d) = %d s, %d; want %d s, %d", tt.rate, tt.seconds, gotBillable, gotAmount, tt.wantBillable, tt.wantAmount)
			}
		})
	}
}

func TestPricePerIncrement(t *testing.T) {
	tests := []struct {
		name         string
		increment    time.Duration
		rate         int64
		seconds      int
		wantBillable int
		wantAmount   int64
	}{
		{"per second", time.Second, 60_000, 7, 7, 7_000},
		{"per second, a fraction of a micro-unit rounds up", time.Second, 20_000, 1, 1, 334},
		{"per second, a minute is the rate", time.Second, 20_000, 60, 60, 20_000},
		{"six-second increments", 6 * time.Second, 60_000, 7, 12, 12_000},
		{"never answered", time.Second, 60_000, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotBillable, gotAmount := Policy{Increment: tt.increment}.Price(tt.rate, tt.seconds)
			if gotBillable != tt.wantBillable || gotAmount != tt.wantAmount {
				t.Fatalf("Price(%d, %d) = %d s, %d; want %d s, %d", tt.rate, tt.seconds, gotBillable, gotAmount, tt.wantBillable, tt.wantAmount)
			}
		})
	}
}

var (
	t0     = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	expire = t0.Add(70 * time.Minute)
)

func account(balance, reserved int64) Account {
	return Account{ID: "acc", CustomerID: "cus", Currency: "USD", Balance: balance, Reserved: reserved, Sequence: 4, TMCreate: t0, TMUpdate: t0}
}

func TestDecideGate(t *testing.T) {
	released := t0.Add(-time.Second)
	active := &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 100, Granted: 60, RatePerMinute: 100, TMCreate: t0, TMExpire: expire}
	tests := []struct {
		name       string
		locked     Locked
		wantChange Change
		wantRes    Reservation
		wantErr    error
	}{
		{name: "covers exactly the first slice", locked: Locked{Account: account(100, 0)},
			wantChange: Change{Reserve: active},
			wantRes:    *active},
		{name: "one micro-unit short", locked: Locked{Account: account(99, 0)},
			wantErr: &InsufficientBalanceError{Balance: 99, Reserved: 0, Required: 100}},
		{name: "reservations of calls in progress count", locked: Locked{Account: account(250, 200)},
			wantErr: &InsufficientBalanceError{Balance: 250, Reserved: 200, Required: 100}},
		{name: "negative balance", locked: Locked{Account: account(-10, 0)},
			wantErr: &InsufficientBalanceError{Balance: -10, Reserved: 0, Required: 100}},
		{name: "asked again: same answer, nothing written", locked: Locked{Account: account(100, 100), Reservation: active},
			wantRes: *active},
		{name: "after release: refused", locked: Locked{Account: account(1000, 0),
			Reservation: &Reservation{CallID: "call", AccountID: "acc", Amount: 100, TMExpire: expire, TMRelease: &released}},
			wantErr: ErrReservationReleased},
		{name: "after a tombstone: refused", locked: Locked{Account: account(1000, 0),
			Reservation: &Reservation{CallID: "call", TMExpire: t0, TMRelease: &released}},
			wantErr: ErrReservationReleased},
		{name: "after expiry: refused", locked: Locked{Account: account(1000, 0),
			Reservation: &Reservation{CallID: "call", AccountID: "acc", Amount: 100, TMExpire: t0}},
			wantErr: ErrReservationReleased},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotChange, gotRes, err := decideGate(tt.locked, "call", "tel", 100, 100, 60, t0, expire)
			if !reflect.DeepEqual(err, tt.wantErr) && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(gotChange, tt.wantChange) {
				t.Fatalf("change = %+v, want %+v", gotChange, tt.wantChange)
			}
			if !reflect.DeepEqual(gotRes, tt.wantRes) {
				t.Fatalf("reservation = %+v, want %+v", gotRes, tt.wantRes)
			}
		})
	}
}

func TestDecideCharge(t *testing.T) {
	policy := Policy{Rates: map[string]int64{"tel": 100, "sip": 10}}
	active := &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 200, Granted: 120, RatePerMinute: 80, TMCreate: t0, TMExpire: expire}
	granted := func(g int, amount int64) *Reservation { r := *active; r.Granted, r.Amount = g, amount; return &r }
	expired := &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 100, Granted: 60, RatePerMinute: 100, TMCreate: t0, TMExpire: t0}
	tombstone := &Reservation{CallID: "call", TMExpire: t0, TMRelease: &t0}
	ended := func(dest string, d int) CallEnded {
		return CallEnded{CallID: "call", CustomerID: "cus", DestinationType: dest, Duration: d}
	}
	tests := []struct {
		name         string
		locked       Locked
		call         CallEnded
		wantOutcome  string
		wantAmount   int64 // the ledger entry's amount (negative)
		wantBalance  int64
		wantReserved int64 // in the events' account
		wantUnbilled int
		wantErr      bool
	}{
		{name: "charged at the reserved rate, reservation released", locked: Locked{Account: account(1000, 300), Reservation: active},
			call: ended("tel", 61), wantOutcome: OutcomeCharged, wantAmount: -160, wantBalance: 840, wantReserved: 100},
		{name: "talk past the quota is not charged", locked: Locked{Account: account(1000, 300), Reservation: granted(60, 80)},
			call: ended("tel", 62), wantOutcome: OutcomeCharged, wantAmount: -80, wantBalance: 920, wantReserved: 220, wantUnbilled: 2},
		{name: "a reservation without a recorded quota: what was used", locked: Locked{Account: account(1000, 300), Reservation: granted(0, 80)},
			call: ended("tel", 62), wantOutcome: OutcomeCharged, wantAmount: -160, wantBalance: 840, wantReserved: 220},
		{name: "no reservation: the current rate", locked: Locked{Account: account(1000, 0)},
			call: ended("sip", 150), wantOutcome: OutcomeCharged, wantAmount: -30, wantBalance: 970},
		{name: "after a release tombstone: the current rate", locked: Locked{Account: account(1000, 0), Reservation: tombstone},
			call: ended("tel", 1), wantOutcome: OutcomeCharged, wantAmount: -100, wantBalance: 900},
		{name: "never below zero: what the balance cannot pay is not charged", locked: Locked{Account: account(50, 0)},
			call: ended("tel", 600), wantOutcome: OutcomeCharged, wantAmount: -50, wantBalance: 0},
		{name: "an expired reservation: what other calls hold stays covered", locked: Locked{Account: account(150, 100), Reservation: expired},
			call: ended("tel", 60), wantOutcome: OutcomeCharged, wantAmount: -50, wantBalance: 100, wantReserved: 100},
		{name: "never answered: free", locked: Locked{Account: account(1000, 100), Reservation: active},
			call: ended("tel", 0), wantOutcome: OutcomeFree, wantBalance: 1000},
		{name: "charged before: duplicate", locked: Locked{Account: account(900, 0), Charged: true},
			call: ended("tel", 61), wantOutcome: OutcomeDuplicate, wantBalance: 900},
		{name: "no rate for the destination", locked: Locked{Account: account(1000, 0)},
			call: ended("fax", 10), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, res, err := decideCharge(tt.locked, tt.call, policy, "entry", t0)
			if tt.wantErr {
				var inv *InvalidError
				if !errors.As(err, &inv) {
					t.Fatalf("err = %v, want an InvalidError", err)
				}
				if !reflect.DeepEqual(ch, Change{}) {
					t.Fatalf("a refused charge writes %+v", ch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Outcome != tt.wantOutcome || res.Unbilled != tt.wantUnbilled {
				t.Fatalf("outcome = %s, unbilled %d s; want %s, %d s", res.Outcome, res.Unbilled, tt.wantOutcome, tt.wantUnbilled)
			}
			if ch.Release != ReleaseCharged || !ch.At.Equal(t0) {
				t.Fatalf("change does not release the reservation: %+v", ch)
			}
			if tt.wantOutcome != OutcomeCharged {
				if ch.Account != nil || len(ch.Entries) != 0 || len(ch.Events) != 0 {
					t.Fatalf("%s wrote %+v", tt.wantOutcome, ch)
				}
				return
			}
			if len(ch.Entries) != 1 || ch.Entries[0] != res.Entry {
				t.Fatalf("entries = %+v, result entry %+v", ch.Entries, res.Entry)
			}
			e := res.Entry
			if e.Amount != tt.wantAmount || e.BalanceAfter != tt.wantBalance || e.Kind != KindCall || e.CallID != "call" || e.ID != "entry" {
				t.Fatalf("entry = %+v, want amount %d balance %d", e, tt.wantAmount, tt.wantBalance)
			}
			if ch.Account == nil || ch.Account.Balance != tt.wantBalance || ch.Account.Sequence != 6 {
				t.Fatalf("account = %+v, want balance %d, sequence 4+2", ch.Account, tt.wantBalance)
			}
			if len(ch.Events) != 2 || ch.Events[0].Type != EventCharged || ch.Events[0].Sequence != 5 || ch.Events[0].Entry == nil ||
				ch.Events[1].Type != EventAccountUpdated || ch.Events[1].Sequence != 6 || ch.Events[1].Entry != nil {
				t.Fatalf("events = %+v, want charged #5 then account_updated #6", ch.Events)
			}
			if got := ch.Events[1].Account; got.Balance != tt.wantBalance || got.Reserved != tt.wantReserved {
				t.Fatalf("account_updated carries balance %d reserved %d, want %d %d", got.Balance, got.Reserved, tt.wantBalance, tt.wantReserved)
			}
		})
	}
}

func TestDecideExtend(t *testing.T) {
	// Per-second billing at 6 000 a minute (100 a second), 10 s slices.
	policy := Policy{Rates: map[string]int64{"tel": 6_000}, Increment: time.Second, Slice: 10 * time.Second}
	later := expire.Add(time.Hour)
	released := t0.Add(-time.Second)
	held := &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 1_000, Granted: 10, RatePerMinute: 6_000, TMCreate: t0, TMExpire: expire}
	grown := *held
	grown.Amount, grown.Granted, grown.TMExpire = 2_000, 20, later
	tests := []struct {
		name       string
		locked     Locked
		quota      int
		wantChange Change
		wantRes    Reservation
		wantErr    error
	}{
		{name: "the next slice, covered exactly", locked: Locked{Account: account(2_000, 1_000), Reservation: held}, quota: 10,
			wantChange: Change{Extend: &grown}, wantRes: grown},
		{name: "one micro-unit short: refused, nothing written", locked: Locked{Account: account(1_999, 1_000), Reservation: held}, quota: 10,
			wantErr: &InsufficientBalanceError{Balance: 1_999, Reserved: 1_000, Required: 1_000}},
		{name: "other calls' reservations count", locked: Locked{Account: account(5_000, 4_500), Reservation: held}, quota: 10,
			wantErr: &InsufficientBalanceError{Balance: 5_000, Reserved: 4_500, Required: 1_000}},
		{name: "a retry of a granted request: same answer, nothing written", locked: Locked{Account: account(2_000, 2_000), Reservation: &grown}, quota: 10,
			wantRes: grown},
		{name: "more than was granted", locked: Locked{Account: account(9_000, 1_000), Reservation: held}, quota: 30,
			wantErr: &InvalidError{Field: "quota", Description: "30 s is more than the 10 s granted"}},
		{name: "the call ended: released", locked: Locked{Account: account(9_000, 0),
			Reservation: &Reservation{CallID: "call", AccountID: "acc", Amount: 1_000, Granted: 10, TMExpire: expire, TMRelease: &released}}, quota: 10,
			wantErr: ErrReservationReleased},
		{name: "expired", locked: Locked{Account: account(9_000, 0),
			Reservation: &Reservation{CallID: "call", AccountID: "acc", Amount: 1_000, Granted: 10, TMExpire: t0}}, quota: 10,
			wantErr: ErrReservationReleased},
		{name: "no reservation", locked: Locked{Account: account(9_000, 0)}, quota: 10, wantErr: ErrReservationReleased},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotChange, gotRes, err := decideExtend(tt.locked, policy, tt.quota, t0, later)
			if !reflect.DeepEqual(err, tt.wantErr) && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(gotChange, tt.wantChange) {
				t.Fatalf("change = %+v, want %+v", gotChange, tt.wantChange)
			}
			if !reflect.DeepEqual(gotRes, tt.wantRes) {
				t.Fatalf("reservation = %+v, want %+v", gotRes, tt.wantRes)
			}
		})
	}

	// Per started minute, a slice that stays inside the minute already paid reserves nothing more.
	minute := Policy{Rates: map[string]int64{"tel": 6_000}, Slice: 20 * time.Second}
	r := &Reservation{CallID: "call", AccountID: "acc", Amount: 6_000, Granted: 20, RatePerMinute: 6_000, TMExpire: expire}
	_, got, err := decideExtend(Locked{Account: account(6_000, 6_000), Reservation: r}, minute, 20, t0, later)
	if err != nil || got.Granted != 40 || got.Amount != 6_000 {
		t.Fatalf("extend within the paid minute = %+v, %v; want 40 s for 6000", got, err)
	}
}

func TestDecideBalanceAdd(t *testing.T) {
	ch, a := decideBalanceAdd(Locked{Account: account(-50, 20)}, 1000, "entry", t0.Add(time.Minute))
	if a.Balance != 950 || a.Sequence != 5 || !a.TMUpdate.Equal(t0.Add(time.Minute)) {
		t.Fatalf("account = %+v", a)
	}
	want := Entry{ID: "entry", CustomerID: "cus", AccountID: "acc", Kind: KindBalanceAdd, Amount: 1000, BalanceAfter: 950, TMCreate: t0.Add(time.Minute)}
	if len(ch.Entries) != 1 || ch.Entries[0] != want {
		t.Fatalf("entries = %+v, want %+v", ch.Entries, want)
	}
	if len(ch.Events) != 1 || ch.Events[0].Type != EventAccountUpdated || ch.Events[0].Sequence != 5 || ch.Events[0].Account != a {
		t.Fatalf("events = %+v", ch.Events)
	}
}

func TestOpenAccount(t *testing.T) {
	tests := []struct {
		name        string
		initial     int64
		wantEntries int
	}{
		{"initial balance is credited through the ledger", 10_000_000, 1},
		{"no initial balance, no entry", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, entries, events := openAccount(Policy{Currency: "USD", InitialBalance: tt.initial}, "acc", "cus", "entry", t0)
			if a.Balance != tt.initial || a.Sequence != 1 || a.Currency != "USD" {
				t.Fatalf("account = %+v", a)
			}
			if len(entries) != tt.wantEntries {
				t.Fatalf("entries = %+v", entries)
			}
			for _, e := range entries {
				if e.Kind != KindBalanceAdd || e.Amount != tt.initial || e.BalanceAfter != tt.initial {
					t.Fatalf("entry = %+v", e)
				}
			}
			if len(events) != 1 || events[0].Type != EventAccountUpdated || events[0].Sequence != 1 {
				t.Fatalf("events = %+v", events)
			}
		})
	}
}
