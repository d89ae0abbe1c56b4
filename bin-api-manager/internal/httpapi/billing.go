package httpapi

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"

	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
)

// BillingManager is what the billing routes need of billingapi.Client.
type BillingManager interface {
	Accounts(ctx context.Context, customerID string) ([]billingapi.Account, error)
	Account(ctx context.Context, customerID, id string) (billingapi.Account, error)
	BalanceAdd(ctx context.Context, id string, amount int64) (billingapi.Account, error)
	Billings(ctx context.Context, customerID string, pageSize int, pageToken string) (billingapi.BillingList, error)
}

// billing serves /v1.0/billing_accounts and /v1.0/billings.
type billing struct {
	*api
	mgr BillingManager
}

func (b *billing) AccountRoutes() chi.Router {
	r := chi.NewRouter()
	r.Get("/", b.handle(b.accounts))
	r.Get("/{id}", b.handle(b.account))
	r.Post("/{id}/balance_add_force", b.handle(b.balanceAdd))
	return r
}

func (b *billing) BillingRoutes() chi.Router {
	r := chi.NewRouter()
	r.Get("/", b.handle(b.billings))
	return r
}

func errAccountNotFound() error {
	return apierr.New(apierr.NotFound, billingapi.ErrReasonAccountNotFound, "billing account not found")
}

// scope is the customer a billing read acts for; ok=false means "another customer's".
func (b *billing) scope(r *http.Request) (string, bool, error) {
	who := caller(r)
	if err := requireRead(who); err != nil {
		return "", false, err
	}
	requested, err := queryUUID(r, "customer_id")
	if err != nil {
		return "", false, err
	}
	scope, ok := who.Scope(requested)
	return scope, ok, nil
}

func (b *billing) accounts(w http.ResponseWriter, r *http.Request) error {
	scope, ok, err := b.scope(r)
	if err != nil {
		return err
	}
	out := []billingapi.Account{}
	if ok {
		if out, err = b.mgr.Accounts(r.Context(), scope); err != nil {
			return err
		}
		if out == nil {
			out = []billingapi.Account{}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"result": out})
	return nil
}

func (b *billing) account(w http.ResponseWriter, r *http.Request) error {
	scope, ok, err := b.scope(r)
	if err != nil {
		return err
	}
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	if !ok {
		return errAccountNotFound()
	}
	acc, err := b.mgr.Account(r.Context(), scope, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, acc)
	return nil
}

func (b *billing) billings(w http.ResponseWriter, r *http.Request) error {
	scope, ok, err := b.scope(r)
	if err != nil {
		return err
	}
	size, err := queryInt(r, "page_size", 1, 100)
	if err != nil {
		return err
	}
	token := r.URL.Query().Get("page_token")
	if len(token) > 512 {
		return apierr.Invalid("page_token", "is not a page token returned by this API")
	}
	if !ok {
		writeJSON(w, http.StatusOK, listJSON[billingapi.Billing]{Result: []billingapi.Billing{}})
		return nil
	}
	list, err := b.mgr.Billings(r.Context(), scope, size, token)
	if err != nil {
		return err
	}
	if list.Result == nil {
		list.Result = []billingapi.Billing{}
	}
	writeJSON(w, http.StatusOK, listJSON[billingapi.Billing]{Result: list.Result, NextPageToken: list.NextPageToken})
	return nil
}

// maxBalanceAdd bounds one top-up: 1 000 000 USD in micro-units.
const maxBalanceAdd = 1_000_000_000_000

type balanceAddBody struct {
	Amount int64 `json:"amount"`
}

func (b *billing) balanceAdd(w http.ResponseWriter, r *http.Request) error {
	if !caller(r).Superadmin() {
		return apierr.New(apierr.PermissionDenied, apierr.ReasonPermissionDenied, "only a superadmin may add balance")
	}
	id, err := pathID(r, "id")
	if err != nil {
		return err
	}
	var in balanceAddBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	if in.Amount <= 0 || in.Amount > maxBalanceAdd {
		return apierr.Invalid("amount", "must be a positive number of micro-units, at most 1000000000000")
	}
	acc, err := b.mgr.BalanceAdd(r.Context(), id, in.Amount)
	if err != nil {
		return err
	}
	b.log.InfoContext(r.Context(), "balance added", "account_id", id, "amount", in.Amount, "balance", acc.Balance)
	writeJSON(w, http.StatusOK, acc)
	return nil
}
