// Package contract maps the billing domain to its wire form in pkg/billingapi: the bodies of RPC
// replies and the envelopes of billing events. The RPC server and the outbox writer both use it,
// so a reply and an event never disagree about what an account looks like.
package contract

import (
	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/event"
)

// ResourceType of every billing event: events are about the account, numbered by its sequence.
const ResourceType = "billing_account"

// Account is the wire form of an account.
func Account(a billing.Account) billingapi.Account {
	return billingapi.Account{ID: a.ID, CustomerID: a.CustomerID, Currency: a.Currency, Balance: a.Balance,
		Reserved: a.Reserved, Available: a.Available(), TMCreate: a.TMCreate, TMUpdate: a.TMUpdate}
}

// Billing is the wire form of a ledger entry.
func Billing(e billing.Entry) billingapi.Billing {
	return billingapi.Billing{ID: e.ID, CustomerID: e.CustomerID, AccountID: e.AccountID, Kind: e.Kind,
		CallID: e.CallID, Amount: e.Amount, BalanceAfter: e.BalanceAfter, DestinationType: e.DestinationType,
		BillableSeconds: e.BillableSeconds, RatePerMinute: e.RatePerMinute, TMCreate: e.TMCreate}
}

// Envelope is the event envelope of a billing event: billing.charged carries the Billing,
// billing.account_updated the Account.
func Envelope(ev billing.Event) (event.Event, error) {
	var data any = Account(ev.Account)
	if ev.Entry != nil {
		data = Billing(*ev.Entry)
	}
	return event.New(ev.Type, ev.Account.CustomerID, ResourceType, ev.Account.ID, ev.Sequence, data)
}
