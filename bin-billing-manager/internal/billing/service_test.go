package billing

import (
	"context"
	"errors"
	"testing"
	"time"
)

// recordingStore records which operations reached it; it answers none of them, because bad
// input must be refused before any.
type recordingStore struct{ calls []string }

func (r *recordingStore) Create(context.Context, Account, []Entry, []Event) (bool, error) {
	r.calls = append(r.calls, "Create")
	return false, errors.New("not reached")
}

func (r *recordingStore) Update(context.Context, Ref, string, time.Time, func(Locked) (Change, error)) error {
	r.calls = append(r.calls, "Update")
	return errors.New("not reached")
}

func (r *recordingStore) Release(context.Context, string, string, time.Time) error {
	r.calls = append(r.calls, "Release")
	return errors.New("not reached")
}

func (r *recordingStore) Account(context.Context, string, time.Time) (Account, error) {
	r.calls = append(r.calls, "Account")
	return Account{}, errors.New("not reached")
}

func (r *recordingStore) Accounts(context.Context, Query, time.Time) (Page[Account], error) {
	r.calls = append(r.calls, "Accounts")
	return Page[Account]{}, errors.New("not reached")
}

func (r *recordingStore) Entries(context.Context, Query) (Page[Entry], error) {
	r.calls = append(r.calls, "Entries")
	return Page[Entry]{}, errors.New("not reached")
}

func TestBadInputNeverReachesTheStore(t *testing.T) {
	const good = "5e4a0000-0000-4000-8000-000000000001"
	tests := []struct {
		name      string
		do        func(s *Service) error
		wantField string // "" means ErrAccountNotFound
	}{
		{"open: empty customer", func(s *Service) error { _, err := s.OpenAccount(context.Background(), ""); return err }, "customer_id"},
		{"open: bad customer", func(s *Service) error { _, err := s.OpenAccount(context.Background(), "bob"); return err }, "customer_id"},
		{"gate: bad customer", func(s *Service) error {
			_, err := s.Gate(context.Background(), GateRequest{CustomerID: "x", CallID: good, DestinationType: "tel"})
			return err
		}, "customer_id"},
		{"gate: bad call", func(s *Service) error {
			_, err := s.Gate(context.Background(), GateRequest{CustomerID: good, CallID: "x", DestinationType: "tel"})
			return err
		}, "call_id"},
		{"gate: unknown destination", func(s *Service) error {
			_, err := s.Gate(context.Background(), GateRequest{CustomerID: good, CallID: good, DestinationType: "TEL"})
			return err
		}, "destination_type"},
		{"release: bad call", func(s *Service) error { return s.Release(context.Background(), "x") }, "call_id"},
		{"charge: bad call", func(s *Service) error {
			_, err := s.ChargeCall(context.Background(), CallEnded{CallID: "", CustomerID: good, Duration: 1})
			return err
		}, "call_id"},
		{"charge: bad customer", func(s *Service) error {
			_, err := s.ChargeCall(context.Background(), CallEnded{CallID: good, CustomerID: "x", Duration: 1})
			return err
		}, "customer_id"},
		{"charge: negative duration", func(s *Service) error {
			_, err := s.ChargeCall(context.Background(), CallEnded{CallID: good, CustomerID: good, Duration: -1})
			return err
		}, "duration"},
		{"charge: absurd duration", func(s *Service) error {
			_, err := s.ChargeCall(context.Background(), CallEnded{CallID: good, CustomerID: good, Duration: MaxDuration + 1})
			return err
		}, "duration"},
		{"balance add: zero", func(s *Service) error { _, err := s.BalanceAdd(context.Background(), good, 0); return err }, "amount"},
		{"balance add: bad id", func(s *Service) error { _, err := s.BalanceAdd(context.Background(), "x", 5); return err }, ""},
		{"account: bad id", func(s *Service) error { _, err := s.Account(context.Background(), good, "x"); return err }, ""},
		{"account: bad customer", func(s *Service) error { _, err := s.Account(context.Background(), "x", good); return err }, "customer_id"},
		{"accounts: page size", func(s *Service) error { _, err := s.Accounts(context.Background(), Query{PageSize: 101}); return err }, "page_size"},
		{"entries: bad customer", func(s *Service) error { _, err := s.Entries(context.Background(), Query{CustomerID: "x"}); return err }, "customer_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &recordingStore{}
			s := NewService(Deps{Store: store, Reader: store, Policy: Policy{Rates: map[string]int64{"tel": 1}}})
			err := tt.do(s)
			if tt.wantField == "" {
				if !errors.Is(err, ErrAccountNotFound) {
					t.Fatalf("err = %v, want ErrAccountNotFound", err)
				}
			} else {
				var inv *InvalidError
				if !errors.As(err, &inv) || inv.Field != tt.wantField {
					t.Fatalf("err = %v, want an InvalidError on %s", err, tt.wantField)
				}
			}
			if len(store.calls) != 0 {
				t.Fatalf("the store was asked %v", store.calls)
			}
		})
	}
}
