// Package rpcserver serves the billing manager's routes on bin-manager.billing.request
// (pkg/billingapi): the balance gate and the release of a reservation, account reads, the superadmin
// top-up and the ledger. It decodes and encodes the wire form, maps domain errors to typed API
// errors in one place (apiError), and counts the gate's decisions.
package rpcserver

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/bin-billing-manager/internal/contract"
	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/telemetry"
)

// Gatekeeper decides whether calls may start.
type Gatekeeper interface {
	Gate(ctx context.Context, req billing.GateRequest) (billing.Reservation, error)
	Extend(ctx context.Context, req billing.ExtendRequest) (billing.Reservation, error)
	Release(ctx context.Context, callID string) error
}

// Accounts reads and tops up accounts and reads the ledger.
type Accounts interface {
	Account(ctx context.Context, customerID, id string) (billing.Account, error)
	Accounts(ctx context.Context, q billing.Query) (billing.Page[billing.Account], error)
	BalanceAdd(ctx context.Context, id string, amount int64) (billing.Account, error)
	Entries(ctx context.Context, q billing.Query) (billing.Page[billing.Entry], error)
}

// Router is where routes are registered (*rpc.Server).
type Router interface {
	Handle(pattern string, h rpc.HandlerFunc)
}

// Deps is what the handlers need.
type Deps struct {
	Gate       Gatekeeper
	Accounts   Accounts
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Handlers serve the billing routes.
type Handlers struct {
	gate      Gatekeeper
	accounts  Accounts
	log       *slog.Logger
	decisions *prometheus.CounterVec
	extends   *prometheus.CounterVec
}

// New makes the handlers; Register adds them to a router.
func New(d Deps) *Handlers {
	h := &Handlers{gate: d.Gate, accounts: d.Accounts, log: d.Log,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_gate_decisions_total",
			Help: "Balance gate decisions by result (allowed, refused, invalid, error)."}, []string{"result"})}
	h.extends = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "billing_quota_extensions_total",
		Help: "Requests for a call's next slice of quota by result (granted, refused, ended, invalid, error)."}, []string{"result"})
	for _, r := range []string{"allowed", "refused", "invalid", "error"} {
		h.decisions.WithLabelValues(r) // export zeros, so rates work from the start
	}
	for _, r := range []string{"granted", "refused", "ended", "invalid", "error"} {
		h.extends.WithLabelValues(r)
	}
	if d.Registerer != nil {
		d.Registerer.MustRegister(h.decisions, h.extends)
	}
	return h
}

// Register adds every route of billingapi to r.
func (h *Handlers) Register(r Router) {
	r.Handle(billingapi.RouteGate, h.handleGate)
	r.Handle(billingapi.RouteRelease, h.handleRelease)
	r.Handle(billingapi.RouteExtend, h.handleExtend)
	r.Handle(billingapi.RouteAccounts, h.handleAccounts)
	r.Handle(billingapi.RouteAccount, h.handleAccount)
	r.Handle(billingapi.RouteBalanceAdd, h.handleBalanceAdd)
	r.Handle(billingapi.RouteBillings, h.handleBillings)
}

// apiError maps a domain error to the typed error callers see; anything unknown passes through
// (the RPC server reports it as INTERNAL and logs it).
func apiError(err error) error {
	var inv *billing.InvalidError
	var low *billing.InsufficientBalanceError
	switch {
	case errors.As(err, &inv):
		return apierr.Invalid(inv.Field, inv.Description)
	case errors.As(err, &low):
		return apierr.New(apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance, low.Error()).
			WithDetails(apierr.Detail{"balance": low.Balance, "reserved": low.Reserved, "required": low.Required})
	case errors.Is(err, billing.ErrAccountNotFound):
		return apierr.New(apierr.NotFound, billingapi.ErrReasonAccountNotFound, "billing account not found")
	case errors.Is(err, billing.ErrReservationReleased):
		return apierr.New(apierr.FailedPrecondition, billingapi.ErrReasonReservationReleased, err.Error())
	case errors.Is(err, billing.ErrInvalidPageToken):
		return apierr.Invalid("page_token", "is not a token this list returned")
	}
	return err
}

func (h *Handlers) handleGate(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var in billingapi.GateRequest
	if err := r.Decode(&in); err != nil {
		h.decisions.WithLabelValues("invalid").Inc()
		return nil, err
	}
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, in.CustomerID), in.CallID)
	res, err := h.gate.Gate(ctx, billing.GateRequest{CustomerID: in.CustomerID, CallID: in.CallID, DestinationType: in.DestinationType})
	var inv *billing.InvalidError
	var low *billing.InsufficientBalanceError
	switch {
	case err == nil:
		h.decisions.WithLabelValues("allowed").Inc()
		h.log.InfoContext(ctx, "balance gate: call allowed", "destination_type", in.DestinationType, "reserved", res.Amount)
		return rpc.JSON(http.StatusOK, billingapi.GateResponse{Allowed: true, Reserved: res.Amount, Quota: res.Granted})
	case errors.As(err, &low) || errors.Is(err, billing.ErrReservationReleased):
		h.decisions.WithLabelValues("refused").Inc()
		h.log.InfoContext(ctx, "balance gate: call refused", "destination_type", in.DestinationType, "reason", err.Error())
	case errors.As(err, &inv):
		h.decisions.WithLabelValues("invalid").Inc()
	default:
		h.decisions.WithLabelValues("error").Inc()
	}
	return nil, apiError(err)
}

func (h *Handlers) handleExtend(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var in billingapi.ExtendRequest
	if err := r.Decode(&in); err != nil {
		h.extends.WithLabelValues("invalid").Inc()
		return nil, err
	}
	callID := r.Param("call_id")
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, in.CustomerID), callID)
	res, err := h.gate.Extend(ctx, billing.ExtendRequest{CustomerID: in.CustomerID, CallID: callID, Quota: in.Quota})
	var inv *billing.InvalidError
	var low *billing.InsufficientBalanceError
	switch {
	case err == nil:
		h.extends.WithLabelValues("granted").Inc()
		h.log.DebugContext(ctx, "quota extended", "quota", res.Granted, "reserved", res.Amount)
		return rpc.JSON(http.StatusOK, billingapi.ExtendResponse{Quota: res.Granted, Reserved: res.Amount})
	case errors.As(err, &low):
		h.extends.WithLabelValues("refused").Inc()
		h.log.InfoContext(ctx, "quota refused: balance exhausted", "quota", in.Quota, "reason", err.Error())
	case errors.Is(err, billing.ErrReservationReleased):
		h.extends.WithLabelValues("ended").Inc()
	case errors.As(err, &inv):
		h.extends.WithLabelValues("invalid").Inc()
	default:
		h.extends.WithLabelValues("error").Inc()
	}
	return nil, apiError(err)
}

func (h *Handlers) handleRelease(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	callID := r.Param("call_id")
	ctx = telemetry.WithCallID(ctx, callID)
	if err := h.gate.Release(ctx, callID); err != nil {
		return nil, apiError(err)
	}
	h.log.InfoContext(ctx, "reservation released")
	return &rpc.Response{StatusCode: http.StatusNoContent}, nil
}

// query reads customer_id, page_size and page_token.
func query(r *rpc.Request) (billing.Query, error) {
	v := r.Query()
	q := billing.Query{CustomerID: v.Get("customer_id"), PageToken: v.Get("page_token")}
	if s := v.Get("page_size"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return billing.Query{}, apierr.Invalid("page_size", "must be an integer")
		}
		q.PageSize = n
	}
	return q, nil
}

func (h *Handlers) handleAccounts(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	q, err := query(r)
	if err != nil {
		return nil, err
	}
	page, err := h.accounts.Accounts(ctx, q)
	if err != nil {
		return nil, apiError(err)
	}
	out := billingapi.AccountList{Result: make([]billingapi.Account, 0, len(page.Items)), NextPageToken: page.NextPageToken}
	for _, a := range page.Items {
		out.Result = append(out.Result, contract.Account(a))
	}
	return rpc.JSON(http.StatusOK, out)
}

func (h *Handlers) handleAccount(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	a, err := h.accounts.Account(ctx, r.Query().Get("customer_id"), r.Param("id"))
	if err != nil {
		return nil, apiError(err)
	}
	return rpc.JSON(http.StatusOK, contract.Account(a))
}

func (h *Handlers) handleBalanceAdd(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var in billingapi.BalanceAddRequest
	if err := r.Decode(&in); err != nil {
		return nil, err
	}
	a, err := h.accounts.BalanceAdd(ctx, r.Param("id"), in.Amount)
	if err != nil {
		return nil, apiError(err)
	}
	ctx = telemetry.WithCustomerID(ctx, a.CustomerID)
	h.log.InfoContext(ctx, "balance added", "account_id", a.ID, "amount", in.Amount, "balance", a.Balance)
	return rpc.JSON(http.StatusOK, contract.Account(a))
}

func (h *Handlers) handleBillings(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	q, err := query(r)
	if err != nil {
		return nil, err
	}
	page, err := h.accounts.Entries(ctx, q)
	if err != nil {
		return nil, apiError(err)
	}
	out := billingapi.BillingList{Result: make([]billingapi.Billing, 0, len(page.Items)), NextPageToken: page.NextPageToken}
	for _, e := range page.Items {
		out.Result = append(out.Result, contract.Billing(e))
	}
	return rpc.JSON(http.StatusOK, out)
}
