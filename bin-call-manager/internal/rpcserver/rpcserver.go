// Package rpcserver serves the call manager's routes of pkg/callapi on its RPC request queue: it
// decodes requests, calls the call service and maps domain errors to typed errors, in one place.
package rpcserver

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
)

// Service is what the routes need of the call service.
type Service interface {
	Create(ctx context.Context, req callapi.CreateRequest) ([]callapi.Call, error)
	List(ctx context.Context, q callapi.ListQuery) (callapi.ListResponse, error)
	Get(ctx context.Context, customerID, id string) (callapi.Call, error)
	Hangup(ctx context.Context, customerID, id string) (callapi.Call, error)
	Delete(ctx context.Context, customerID, id string) (callapi.Call, error)
}

// Router is where routes are registered (*rpc.Server).
type Router interface {
	Handle(pattern string, h rpc.HandlerFunc)
}

// Register adds every callapi route to r.
func Register(r Router, svc Service) {
	h := handlers{svc: svc}
	r.Handle(callapi.RouteCreate, h.create)
	r.Handle(callapi.RouteList, h.list)
	r.Handle(callapi.RouteGet, h.single(svc.Get))
	r.Handle(callapi.RouteHangup, h.single(svc.Hangup))
	r.Handle(callapi.RouteDelete, h.single(svc.Delete))
}

type handlers struct{ svc Service }

func (h handlers) create(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var req callapi.CreateRequest
	if err := r.Decode(&req); err != nil {
		return nil, err
	}
	if req.IdempotencyKey == "" && r.MessageID != "" {
		// A request redelivered after a crash (same message id) must not place its calls twice.
		req.IdempotencyKey = "rpc-message:" + r.MessageID
	}
	calls, err := h.svc.Create(ctx, req)
	if err != nil {
		return nil, toAPI(err)
	}
	return rpc.JSON(http.StatusCreated, callapi.CreateResponse{Calls: calls})
}

func (h handlers) list(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	v := r.Query()
	q := callapi.ListQuery{CustomerID: v.Get("customer_id"), PageToken: v.Get("page_token"),
		Status: v.Get("status"), Direction: v.Get("direction")}
	for name, dst := range map[string]*int{"page_size": &q.PageSize, "limit": &q.Limit, "offset": &q.Offset} {
		s := v.Get(name)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, apierr.Invalid(name, "must be an integer")
		}
		*dst = n
	}
	resp, err := h.svc.List(ctx, q)
	if err != nil {
		return nil, toAPI(err)
	}
	return rpc.JSON(http.StatusOK, resp)
}

// single serves a route on one call, scoped by ?customer_id=.
func (h handlers) single(op func(ctx context.Context, customerID, id string) (callapi.Call, error)) rpc.HandlerFunc {
	return func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
		c, err := op(ctx, r.Query().Get("customer_id"), r.Param("id"))
		if err != nil {
			return nil, toAPI(err)
		}
		return rpc.JSON(http.StatusOK, c)
	}
}

// toAPI maps the call domain's errors to typed errors; typed errors (billing's 402, an
// unavailable dependency) pass as they are, anything else becomes INTERNAL in the rpc server.
func toAPI(err error) error {
	var inv *call.InvalidError
	switch {
	case errors.As(err, &inv):
		return apierr.Invalid(inv.Field, inv.Description)
	case errors.Is(err, call.ErrNotFound):
		return apierr.New(apierr.NotFound, callapi.ErrReasonCallNotFound, "call not found")
	case errors.Is(err, call.ErrStateInvalid):
		return apierr.New(apierr.FailedPrecondition, callapi.ErrReasonCallStateInvalid, "the call has already ended")
	}
	return err
}
