package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
	"voipbin/pkg/telemetry"
	"voipbin/pkg/webhookapi"
)

// The stand-in managers below serve the real routes of their contract packages on real RabbitMQ
// queues, keep their resources in memory, scope every look-up by ?customer_id= as the contracts
// say, and record what they receive.

// Targets with a fixed behaviour in fakeCalls.
const (
	targetPoor   = "+15550000402" // 402 INSUFFICIENT_BALANCE
	targetSilent = "+15550000504" // never answers: the gateway's RPC deadline passes
	targetPanic  = "+15550000500" // the handler panics: INTERNAL
	targetSlow   = "+15550000508" // answers once fakeCalls.slow is closed
)

type seen struct {
	route      string
	requestID  string
	customerID string // the customer_id header
}

type fakeCalls struct {
	mu      sync.Mutex
	calls   []callapi.Call // oldest first
	creates []callapi.CreateRequest
	seen    []seen
	// keys are the idempotency keys met, per customer and key, as the call manager keeps them.
	keys map[string]*fakeKey
	slow chan struct{}
}

type fakeKey struct {
	body    string // the request without the key
	pending bool
	calls   []callapi.Call
}

func (f *fakeCalls) record(ctx context.Context, r *rpc.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, seen{route: r.Method + " " + r.Route, requestID: telemetry.RequestID(ctx), customerID: r.Headers[rpc.HeaderCustomerID]})
}

func (f *fakeCalls) requestIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, s := range f.seen {
		out = append(out, s.requestID)
	}
	return out
}

func (f *fakeCalls) createCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.creates)
}

func (f *fakeCalls) routes() map[string]rpc.HandlerFunc {
	return map[string]rpc.HandlerFunc{
		callapi.RouteCreate: f.create,
		callapi.RouteList:   f.list,
		callapi.RouteGet: func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			return f.one(ctx, r, nil)
		},
		callapi.RouteHangup: func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			return f.one(ctx, r, func(c *callapi.Call) error {
				if c.Status == callapi.StatusHangup {
					return apierr.New(apierr.FailedPrecondition, callapi.ErrReasonCallStateInvalid, "the call has ended")
				}
				c.Status, c.HangupBy, c.HangupReason = callapi.StatusTerminating, callapi.HangupByLocal, callapi.ReasonNormal
				return nil
			})
		},
		callapi.RouteDelete: func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
			resp, err := f.one(ctx, r, func(c *callapi.Call) error { c.Status = callapi.StatusHangup; return nil })
			if err == nil {
				f.mu.Lock()
				f.calls = slices.DeleteFunc(f.calls, func(c callapi.Call) bool { return c.ID == r.Param("id") })
				f.mu.Unlock()
			}
			return resp, err
		},
	}
}

func (f *fakeCalls) create(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	f.record(ctx, r)
	var in callapi.CreateRequest
	if err := r.Decode(&in); err != nil {
		return nil, err
	}
	switch in.Destinations[0].Target {
	case targetPoor:
		return nil, apierr.New(apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance, "balance too low").
			WithDetails(apierr.Detail{"balance": 0, "required": 600000})
	case targetSilent:
		<-ctx.Done()
		return nil, ctx.Err()
	case targetPanic:
		panic("fake call manager: boom")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var key *fakeKey
	if in.IdempotencyKey != "" {
		// The call manager's contract: one set of calls per customer and key.
		scoped, body := in.CustomerID+"/"+in.IdempotencyKey, in
		body.IdempotencyKey = ""
		b, _ := json.Marshal(body)
		if f.keys == nil {
			f.keys = map[string]*fakeKey{}
		}
		if k := f.keys[scoped]; k != nil {
			switch {
			case k.body != string(b):
				return nil, apierr.New(apierr.AlreadyExists, callapi.ErrReasonIdempotencyKeyReused, "key reused")
			case k.pending:
				return nil, apierr.New(apierr.FailedPrecondition, callapi.ErrReasonIdempotencyKeyInUse, "in use").
					WithDetails(apierr.Detail{"retry_after_ms": 1500})
			}
			return rpc.JSON(201, callapi.CreateResponse{Calls: k.calls})
		}
		key = &fakeKey{body: string(b), pending: true}
		f.keys[scoped] = key
	}
	if in.Destinations[0].Target == targetSlow {
		slow := f.slow
		f.mu.Unlock()
		<-slow
		f.mu.Lock()
	}
	f.creates = append(f.creates, in)
	out := callapi.CreateResponse{}
	for _, d := range in.Destinations {
		now := time.Now().UTC()
		c := callapi.Call{ID: uuid.NewString(), CustomerID: in.CustomerID, Source: in.Source, Destination: d,
			Status: callapi.StatusDialing, Direction: callapi.DirectionOutgoing, Metadata: in.Metadata, TMCreate: now, TMUpdate: now}
		f.calls = append(f.calls, c)
		out.Calls = append(out.Calls, c)
	}
	if key != nil {
		key.pending, key.calls = false, out.Calls
	}
	return rpc.JSON(201, out)
}

func (f *fakeCalls) list(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	f.record(ctx, r)
	q := r.Query()
	f.mu.Lock()
	var match []callapi.Call
	for i := len(f.calls) - 1; i >= 0; i-- { // newest first
		c := f.calls[i]
		if (q.Get("customer_id") == "" || c.CustomerID == q.Get("customer_id")) &&
			(q.Get("status") == "" || string(c.Status) == q.Get("status")) &&
			(q.Get("direction") == "" || c.Direction == q.Get("direction")) {
			match = append(match, c)
		}
	}
	f.mu.Unlock()
	start, size := 0, 100
	if n, err := strconv.Atoi(q.Get("page_token")); err == nil {
		start = n
	}
	if n, err := strconv.Atoi(q.Get("offset")); err == nil {
		start = n
	}
	if n, err := strconv.Atoi(q.Get("page_size")); err == nil {
		size = n
	}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil {
		size = n
	}
	out := callapi.ListResponse{Result: []callapi.Call{}}
	for i := start; i < len(match) && len(out.Result) < size; i++ {
		out.Result = append(out.Result, match[i])
	}
	if next := start + len(out.Result); next < len(match) && q.Get("limit") == "" {
		out.NextPageToken = strconv.Itoa(next)
	}
	return rpc.JSON(200, out)
}

// one finds the call of r (scoped by ?customer_id=), applies change (if any), and answers the call.
func (f *fakeCalls) one(ctx context.Context, r *rpc.Request, change func(*callapi.Call) error) (*rpc.Response, error) {
	f.record(ctx, r)
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.calls {
		c := &f.calls[i]
		if c.ID != r.Param("id") {
			continue
		}
		if cid := r.Query().Get("customer_id"); cid != "" && cid != c.CustomerID {
			break
		}
		if change != nil {
			if err := change(c); err != nil {
				return nil, err
			}
			c.TMUpdate = time.Now().UTC()
		}
		return rpc.JSON(200, *c)
	}
	return nil, apierr.New(apierr.NotFound, callapi.ErrReasonCallNotFound, "call not found")
}

type fakeBilling struct {
	mu       sync.Mutex
	accounts map[string]*billingapi.Account
	ledger   []billingapi.Billing
}

func newFakeBilling() *fakeBilling { return &fakeBilling{accounts: map[string]*billingapi.Account{}} }

// open makes a customer's account, as the billing manager does on customer.created.
func (f *fakeBilling) open(customerID string) billingapi.Account {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now().UTC()
	a := &billingapi.Account{ID: uuid.NewString(), CustomerID: customerID, Currency: "USD", Balance: 10_000_000,
		Available: 10_000_000, TMCreate: now, TMUpdate: now}
	f.accounts[a.ID] = a
	f.ledger = append(f.ledger, billingapi.Billing{ID: uuid.NewString(), CustomerID: customerID, AccountID: a.ID,
		Kind: billingapi.KindBalanceAdd, Amount: a.Balance, BalanceAfter: a.Balance, TMCreate: now})
	return *a
}

func (f *fakeBilling) routes() map[string]rpc.HandlerFunc {
	notFound := apierr.New(apierr.NotFound, billingapi.ErrReasonAccountNotFound, "billing account not found")
	find := func(r *rpc.Request) (*billingapi.Account, error) {
		a, ok := f.accounts[r.Param("id")]
		if !ok || (r.Query().Get("customer_id") != "" && r.Query().Get("customer_id") != a.CustomerID) {
			return nil, notFound
		}
		return a, nil
	}
	return map[string]rpc.HandlerFunc{
		billingapi.RouteAccounts: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			out := billingapi.AccountList{Result: []billingapi.Account{}}
			for _, a := range f.accounts {
				if cid := r.Query().Get("customer_id"); cid == "" || cid == a.CustomerID {
					out.Result = append(out.Result, *a)
				}
			}
			return rpc.JSON(200, out)
		},
		billingapi.RouteAccount: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			a, err := find(r)
			if err != nil {
				return nil, err
			}
			return rpc.JSON(200, *a)
		},
		billingapi.RouteBalanceAdd: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			var in billingapi.BalanceAddRequest
			if err := r.Decode(&in); err != nil {
				return nil, err
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			a, err := find(r)
			if err != nil {
				return nil, err
			}
			a.Balance += in.Amount
			a.Available += in.Amount
			f.ledger = append(f.ledger, billingapi.Billing{ID: uuid.NewString(), CustomerID: a.CustomerID, AccountID: a.ID,
				Kind: billingapi.KindBalanceAdd, Amount: in.Amount, BalanceAfter: a.Balance, TMCreate: time.Now().UTC()})
			return rpc.JSON(200, *a)
		},
		billingapi.RouteBillings: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			out := billingapi.BillingList{Result: []billingapi.Billing{}}
			for i := len(f.ledger) - 1; i >= 0; i-- {
				if cid := r.Query().Get("customer_id"); cid == "" || cid == f.ledger[i].CustomerID {
					out.Result = append(out.Result, f.ledger[i])
				}
			}
			return rpc.JSON(200, out)
		},
	}
}

type fakeWebhooks struct {
	mu         sync.Mutex
	hooks      map[string]*webhookapi.Webhook
	deliveries map[string][]webhookapi.Delivery
}

func newFakeWebhooks() *fakeWebhooks {
	return &fakeWebhooks{hooks: map[string]*webhookapi.Webhook{}, deliveries: map[string][]webhookapi.Delivery{}}
}

func (f *fakeWebhooks) routes() map[string]rpc.HandlerFunc {
	notFound := apierr.New(apierr.NotFound, webhookapi.ErrReasonWebhookNotFound, "webhook not found")
	// with finds the webhook of r under the lock and runs do on it.
	with := func(r *rpc.Request, do func(h *webhookapi.Webhook) (any, error)) (*rpc.Response, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		h, ok := f.hooks[r.Param("id")]
		if !ok || (r.Query().Get("customer_id") != "" && r.Query().Get("customer_id") != h.CustomerID) {
			return nil, notFound
		}
		out, err := do(h)
		if err != nil {
			return nil, err
		}
		return rpc.JSON(200, out)
	}
	public := func(h webhookapi.Webhook) webhookapi.Webhook { h.Secret = ""; return h }
	return map[string]rpc.HandlerFunc{
		webhookapi.RouteCreate: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			var in webhookapi.WriteRequest
			if err := r.Decode(&in); err != nil {
				return nil, err
			}
			now := time.Now().UTC()
			h := &webhookapi.Webhook{ID: uuid.NewString(), CustomerID: in.CustomerID, Name: in.Name, URI: in.URI,
				Method: cmpOr(in.Method, "POST"), EventTypes: in.EventTypes, Status: cmpOr(in.Status, webhookapi.StatusEnabled),
				Secret: "whsec_" + uuid.NewString(), TMCreate: now, TMUpdate: now}
			f.mu.Lock()
			f.hooks[h.ID] = h
			d := webhookapi.Delivery{ID: uuid.NewString(), WebhookID: h.ID, EventID: uuid.NewString(), EventType: "call.created",
				Status: webhookapi.DeliveryFailed, Attempts: []webhookapi.Attempt{{At: now, HTTPStatus: 500, LatencyMS: 12}}, TMCreate: now}
			f.deliveries[h.ID] = append(f.deliveries[h.ID], d)
			f.mu.Unlock()
			return rpc.JSON(201, *h)
		},
		webhookapi.RouteList: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			out := webhookapi.WebhookList{Result: []webhookapi.Webhook{}}
			for _, h := range f.hooks {
				if cid := r.Query().Get("customer_id"); cid == "" || cid == h.CustomerID {
					out.Result = append(out.Result, public(*h))
				}
			}
			return rpc.JSON(200, out)
		},
		webhookapi.RouteGet: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return with(r, func(h *webhookapi.Webhook) (any, error) { return public(*h), nil })
		},
		webhookapi.RouteUpdate: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			var in webhookapi.WriteRequest
			if err := r.Decode(&in); err != nil {
				return nil, err
			}
			return with(r, func(h *webhookapi.Webhook) (any, error) {
				h.Name, h.URI, h.Method, h.EventTypes = in.Name, in.URI, cmpOr(in.Method, "POST"), in.EventTypes
				h.Status = cmpOr(in.Status, h.Status)
				h.TMUpdate = time.Now().UTC()
				return public(*h), nil
			})
		},
		webhookapi.RouteDelete: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return with(r, func(h *webhookapi.Webhook) (any, error) { delete(f.hooks, h.ID); return public(*h), nil })
		},
		webhookapi.RouteRotate: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return with(r, func(h *webhookapi.Webhook) (any, error) { h.Secret = "whsec_" + uuid.NewString(); return *h, nil })
		},
		webhookapi.RouteDeliveries: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return with(r, func(h *webhookapi.Webhook) (any, error) {
				return webhookapi.DeliveryList{Result: append([]webhookapi.Delivery{}, f.deliveries[h.ID]...)}, nil
			})
		},
		webhookapi.RouteRetry: func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return with(r, func(h *webhookapi.Webhook) (any, error) {
				for i, d := range f.deliveries[h.ID] {
					if d.ID == r.Param("delivery_id") {
						d.Status = webhookapi.DeliveryPending
						f.deliveries[h.ID][i] = d
						return d, nil
					}
				}
				return nil, apierr.New(apierr.NotFound, webhookapi.ErrReasonDeliveryNotFound, "delivery not found")
			})
		},
	}
}

func (f *fakeWebhooks) firstDelivery(webhookID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ds := f.deliveries[webhookID]
	if len(ds) == 0 {
		panic(fmt.Sprintf("no delivery for %s", webhookID))
	}
	return ds[0].ID
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
