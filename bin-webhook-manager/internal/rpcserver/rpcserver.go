// Package rpcserver serves the webhook manager's routes of pkg/webhookapi on its RPC queue: it
// decodes requests, applies the ?customer_id= scope, calls the webhook service and maps its
// errors to typed API errors (the one place that does).
package rpcserver

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/pkg/apierr"
	"voipbin/pkg/rpc"
	"voipbin/pkg/webhookapi"
)

// Service is the webhook use cases the routes call.
type Service interface {
	Create(ctx context.Context, customerID string, spec webhook.Spec) (webhook.Webhook, error)
	Get(ctx context.Context, customerID, id string) (webhook.Webhook, error)
	List(ctx context.Context, customerID string) ([]webhook.Webhook, error)
	Update(ctx context.Context, customerID, id string, spec webhook.Spec) (webhook.Webhook, error)
	Delete(ctx context.Context, customerID, id string) (webhook.Webhook, error)
	RotateSecret(ctx context.Context, customerID, id string) (webhook.Webhook, error)
	Deliveries(ctx context.Context, customerID, id string, pageSize int, pageToken string) ([]webhook.Delivery, string, error)
	Retry(ctx context.Context, customerID, id, deliveryID string) (webhook.Delivery, error)
}

// Routes are the webhook routes over a service.
type Routes struct{ svc Service }

// New makes the routes.
func New(svc Service) *Routes { return &Routes{svc: svc} }

// Register adds every route of webhookapi to srv.
func (rt *Routes) Register(srv *rpc.Server) {
	srv.Handle(webhookapi.RouteCreate, rt.create)
	srv.Handle(webhookapi.RouteList, rt.list)
	srv.Handle(webhookapi.RouteGet, rt.get)
	srv.Handle(webhookapi.RouteUpdate, rt.update)
	srv.Handle(webhookapi.RouteDelete, rt.delete)
	srv.Handle(webhookapi.RouteRotate, rt.rotate)
	srv.Handle(webhookapi.RouteDeliveries, rt.deliveries)
	srv.Handle(webhookapi.RouteRetry, rt.retry)
}

// scope is the ?customer_id= of the request: "" means any customer (superadmin).
func scope(r *rpc.Request) (string, error) {
	c := r.Query().Get("customer_id")
	if c == "" {
		return "", nil
	}
	if _, err := uuid.Parse(c); err != nil {
		return "", apierr.Invalid("customer_id", "must be a UUID")
	}
	return c, nil
}

func specOf(w webhookapi.WriteRequest) webhook.Spec {
	return webhook.Spec{Name: w.Name, URI: w.URI, Method: w.Method, EventTypes: w.EventTypes, Status: w.Status}
}

func (rt *Routes) create(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	customer, err := scope(r)
	if err != nil {
		return nil, err
	}
	var in webhookapi.WriteRequest
	if err := r.Decode(&in); err != nil {
		return nil, err
	}
	switch {
	case in.CustomerID == "":
		in.CustomerID = customer
	case customer != "" && in.CustomerID != customer:
		return nil, apierr.Invalid("customer_id", "differs from the customer the request is scoped to")
	}
	if in.CustomerID != "" {
		if _, err := uuid.Parse(in.CustomerID); err != nil {
			return nil, apierr.Invalid("customer_id", "must be a UUID")
		}
	}
	w, err := rt.svc.Create(ctx, in.CustomerID, specOf(in))
	if err != nil {
		return nil, toAPI(err)
	}
	return rpc.JSON(http.StatusCreated, wire(w, true))
}

func (rt *Routes) list(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	customer, err := scope(r)
	if err != nil {
		return nil, err
	}
	ws, err := rt.svc.List(ctx, customer)
	if err != nil {
		return nil, toAPI(err)
	}
	out := webhookapi.WebhookList{Result: make([]webhookapi.Webhook, len(ws))}
	for i, w := range ws {
		out.Result[i] = wire(w, false)
	}
	return rpc.JSON(http.StatusOK, out)
}

// one serves the routes that answer one webhook.
func (rt *Routes) one(status int, showSecret bool, do func(ctx context.Context, customer string, r *rpc.Request) (webhook.Webhook, error)) rpc.HandlerFunc {
	return func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
		customer, err := scope(r)
		if err != nil {
			return nil, err
		}
		w, err := do(ctx, customer, r)
		if err != nil {
			return nil, toAPI(err)
		}
		return rpc.JSON(status, wire(w, showSecret))
	}
}

func (rt *Routes) get(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	return rt.one(http.StatusOK, false, func(ctx context.Context, customer string, r *rpc.Request) (webhook.Webhook, error) {
		return rt.svc.Get(ctx, customer, r.Param("id"))
	})(ctx, r)
}

func (rt *Routes) update(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	return rt.one(http.StatusOK, false, func(ctx context.Context, customer string, r *rpc.Request) (webhook.Webhook, error) {
		var in webhookapi.WriteRequest
		if err := r.Decode(&in); err != nil {
			return webhook.Webhook{}, err
		}
		// customer_id in the body is ignored: a webhook never changes customer.
		return rt.svc.Update(ctx, customer, r.Param("id"), specOf(in))
	})(ctx, r)
}

func (rt *Routes) delete(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	return rt.one(http.StatusOK, false, func(ctx context.Context, customer string, r *rpc.Request) (webhook.Webhook, error) {
		return rt.svc.Delete(ctx, customer, r.Param("id"))
	})(ctx, r)
}

func (rt *Routes) rotate(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	return rt.one(http.StatusOK, true, func(ctx context.Context, customer string, r *rpc.Request) (webhook.Webhook, error) {
		return rt.svc.RotateSecret(ctx, customer, r.Param("id"))
	})(ctx, r)
}

func (rt *Routes) deliveries(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	customer, err := scope(r)
	if err != nil {
		return nil, err
	}
	size := 0
	if v := r.Query().Get("page_size"); v != "" {
		if size, err = strconv.Atoi(v); err != nil || size < 1 {
			return nil, apierr.Invalid("page_size", "must be a positive integer")
		}
	}
	ds, next, err := rt.svc.Deliveries(ctx, customer, r.Param("id"), size, r.Query().Get("page_token"))
	if err != nil {
		return nil, toAPI(err)
	}
	out := webhookapi.DeliveryList{Result: make([]webhookapi.Delivery, len(ds)), NextPageToken: next}
	for i, d := range ds {
		out.Result[i] = wireDelivery(d)
	}
	return rpc.JSON(http.StatusOK, out)
}

func (rt *Routes) retry(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	customer, err := scope(r)
	if err != nil {
		return nil, err
	}
	d, err := rt.svc.Retry(ctx, customer, r.Param("id"), r.Param("delivery_id"))
	if err != nil {
		return nil, toAPI(err)
	}
	return rpc.JSON(http.StatusAccepted, wireDelivery(d))
}

// toAPI maps the domain's errors to typed API errors; anything else passes through to become a
// logged INTERNAL error.
func toAPI(err error) error {
	var fe *webhook.FieldError
	switch {
	case errors.As(err, &fe):
		return apierr.Invalid(fe.Field, fe.Description)
	case errors.Is(err, webhook.ErrTargetForbidden):
		return apierr.New(apierr.InvalidArgument, webhookapi.ErrReasonTargetForbidden, "uri: "+err.Error()).
			WithDetails(apierr.Detail{"field": "uri", "description": err.Error()})
	case errors.Is(err, webhook.ErrNotFound):
		return apierr.New(apierr.NotFound, webhookapi.ErrReasonWebhookNotFound, "webhook not found")
	case errors.Is(err, webhook.ErrDeliveryNotFound):
		return apierr.New(apierr.NotFound, webhookapi.ErrReasonDeliveryNotFound, "delivery not found")
	case errors.Is(err, webhook.ErrDisabled):
		return apierr.New(apierr.FailedPrecondition, webhookapi.ErrReasonWebhookDisabled, "the webhook is disabled; enable it first")
	}
	return err
}

func wire(w webhook.Webhook, showSecret bool) webhookapi.Webhook {
	out := webhookapi.Webhook{ID: w.ID, CustomerID: w.CustomerID, Name: w.Name, URI: w.URI, Method: w.Method,
		EventTypes: w.EventTypes, Status: w.Status, TMCreate: w.TMCreate, TMUpdate: w.TMUpdate}
	if out.EventTypes == nil {
		out.EventTypes = []string{}
	}
	if showSecret {
		out.Secret = w.Secret.Reveal()
	}
	return out
}

func wireDelivery(d webhook.Delivery) webhookapi.Delivery {
	out := webhookapi.Delivery{ID: d.ID, WebhookID: d.WebhookID, EventID: d.EventID, EventType: d.EventType,
		Status: d.Status, Attempts: make([]webhookapi.Attempt, len(d.Attempts)), TMCreate: d.TMCreate}
	for i, a := range d.Attempts {
		out.Attempts[i] = webhookapi.Attempt{At: a.At, HTTPStatus: a.HTTPStatus, LatencyMS: a.Latency.Milliseconds(),
			Error: a.Error, Response: string(a.Response)}
	}
	if d.Status == webhook.DeliveryPending {
		next := d.NextAttempt
		out.NextAttempt = &next
	}
	return out
}
