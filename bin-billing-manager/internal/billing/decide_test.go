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
			gotBillable, gotAmount := Price(tt.rate, tt.seconds)
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
	active := &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 100, RatePerMinute: 100, TMCreate: t0, TMExpire: expire}
	tests := []struct {
		name       string
		locked     Locked
		wantChange Change
		wantRes    Reservation
		wantErr    error
	}{
		{name: "covers exactly one minute", locked: Locked{Account: account(100, 0)},
			wantChange: Change{Reserve: &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 100, RatePerMinute: 100, TMCreate: t0, TMExpire: expire}},
			wantRes:    Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 100, RatePerMinute: 100, TMCreate: t0, TMExpire: expire}},
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
			gotChange, gotRes, err := decideGate(tt.locked, "call", "tel", 100, 100, t0, expire)
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
	rates := map[string]int64{"tel": 100, "sip": 10}
	active := &Reservation{CallID: "call", AccountID: "acc", DestinationType: "tel", Amount: 100, RatePerMinute: 80, TMCreate: t0, TMExpire: expire}
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
		wantErr      bool
	}{
		{name: "charged at the reserved rate, reservation released", locked: Locked{Account: account(1000, 300), Reservation: active},
			call: ended("tel", 61), wantOutcome: OutcomeCharged, wantAmount: -160, wantBalance: 840, wantReserved: 200},
		{name: "no reservation: the current rate", locked: Locked{Account: account(1000, 0)},
			call: ended("sip", 150), wantOutcome: OutcomeCharged, wantAmount: -30, wantBalance: 970},
		{name: "after a release tombstone: the current rate", locked: Locked{Account: account(1000, 0), Reservation: tombstone},
			call: ended("tel", 1), wantOutcome: OutcomeCharged, wantAmount: -100, wantBalance: 900},
		{name: "may overdraw: the call happened", locked: Locked{Account: account(50, 0)},
			call: ended("tel", 600), wantOutcome: OutcomeCharged, wantAmount: -1000, wantBalance: -950},
		{name: "never answered: free", locked: Locked{Account: account(1000, 100), Reservation: active},
			call: ended("tel", 0), wantOutcome: OutcomeFree, wantBalance: 1000},
		{name: "charged before: duplicate", locked: Locked{Account: account(900, 0), Charged: true},
			call: ended("tel", 61), wantOutcome: OutcomeDuplicate, wantBalance: 900},
		{name: "no rate for the destination", locked: Locked{Account: account(1000, 0)},
			call: ended("fax", 10), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, res, err := decideCharge(tt.locked, tt.call, rates, "entry", t0)
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
			if res.Outcome != tt.wantOutcome {
				t.Fatalf("outcome = %s, want %s", res.Outcome, tt.wantOutcome)
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
