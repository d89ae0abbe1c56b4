package contract

import (
	"encoding/json"
	"testing"
	"time"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/billingapi"
)

// The domain's names must be the contract's: a drift would publish events nobody subscribes to.
func TestDomainNamesAreTheContracts(t *testing.T) {
	pairs := []struct{ name, got, want string }{
		{"charged", billing.EventCharged, billingapi.EventCharged},
		{"account updated", billing.EventAccountUpdated, billingapi.EventAccountUpdated},
		{"kind call", billing.KindCall, billingapi.KindCall},
		{"kind balance add", billing.KindBalanceAdd, billingapi.KindBalanceAdd},
	}
	for _, p := range pairs {
		if p.got != p.want {
			t.Errorf("%s: domain %q, contract %q", p.name, p.got, p.want)
		}
	}
}

func TestEnvelope(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	acc := billing.Account{ID: "a1", CustomerID: "c1", Currency: "USD", Balance: 900, Reserved: 100, Sequence: 7, TMCreate: now, TMUpdate: now}
	entry := billing.Entry{ID: "e1", CustomerID: "c1", AccountID: "a1", Kind: billing.KindCall, CallID: "call1",
		Amount: -100, BalanceAfter: 900, DestinationType: "tel", BillableSeconds: 60, RatePerMinute: 100, TMCreate: now}
	tests := []struct {
		name     string
		ev       billing.Event
		wantData any
	}{
		{"charged carries the billing", billing.Event{Type: billing.EventCharged, Sequence: 6, Account: acc, Entry: &entry}, Billing(entry)},
		{"account_updated carries the account", billing.Event{Type: billing.EventAccountUpdated, Sequence: 7, Account: acc}, Account(acc)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Envelope(tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			if got.EventType != tt.ev.Type || got.CustomerID != "c1" || got.ResourceType != "billing_account" ||
				got.ResourceID != "a1" || got.Sequence != tt.ev.Sequence || got.EventID == "" {
				t.Fatalf("envelope = %+v", got)
			}
			want, _ := json.Marshal(tt.wantData)
			if string(got.Data) != string(want) {
				t.Fatalf("data = %s, want %s", got.Data, want)
			}
		})
	}
	if a := Account(acc); a.Available != 800 {
		t.Fatalf("Available = %d, want balance - reserved = 800", a.Available)
	}
}
