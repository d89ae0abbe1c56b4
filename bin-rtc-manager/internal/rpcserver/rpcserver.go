// Package rpcserver serves the rtc manager's RPC routes (pkg/rtcapi) on the shared queue
// bin-manager.rtc.request (dials, and hang-ups of a dead node's dialogs) and on the node's own
// exclusive queue bin-manager.rtc.request.<node_id> (hang-ups and look-ups of its dialogs).
package rpcserver

import (
	"context"
	"net/http"

	"voipbin/pkg/apierr"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
)

// Dialogs is what the routes need from the dialog service.
type Dialogs interface {
	Dial(ctx context.Context, req rtcapi.DialRequest) (rtcapi.DialResponse, error)
	Hangup(ctx context.Context, callID, reason string, viaNodeQueue bool) error
	Extend(ctx context.Context, callID string, quota int) error
	Get(ctx context.Context, callID string) (rtcapi.Dialog, error)
}

// Routes registers handlers on servers for the shared and the node queue.
type Routes struct{ d Dialogs }

// New makes the routes.
func New(d Dialogs) *Routes { return &Routes{d: d} }

// Shared registers the shared queue's routes.
func (rt *Routes) Shared(s *rpc.Server) {
	s.Handle(rtcapi.RouteDial, rt.dial)
	s.Handle(rtcapi.RouteHangup, rt.hangup(false))
	s.Handle(rtcapi.RouteGetDialog, rt.get)
}

// Node registers the node queue's routes.
func (rt *Routes) Node(s *rpc.Server) {
	s.Handle(rtcapi.RouteHangup, rt.hangup(true))
	s.Handle(rtcapi.RouteGetDialog, rt.get)
	s.Handle(rtcapi.RouteQuota, rt.quota)
}

func (rt *Routes) dial(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var req rtcapi.DialRequest
	if err := r.Decode(&req); err != nil {
		return nil, err
	}
	out, err := rt.d.Dial(ctx, req)
	if err != nil {
		return nil, err
	}
	return rpc.JSON(http.StatusCreated, out)
}

func (rt *Routes) hangup(viaNodeQueue bool) rpc.HandlerFunc {
	return func(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
		id := r.Param("call_id")
		if id == "" {
			return nil, apierr.Invalid("call_id", "is required")
		}
		var req rtcapi.HangupRequest
		if len(r.Body) > 0 {
			if err := r.Decode(&req); err != nil {
				return nil, err
			}
		}
		if err := rt.d.Hangup(ctx, id, req.Reason, viaNodeQueue); err != nil {
			return nil, err
		}
		return &rpc.Response{StatusCode: http.StatusNoContent}, nil
	}
}

func (rt *Routes) quota(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	var req rtcapi.QuotaRequest
	if err := r.Decode(&req); err != nil {
		return nil, err
	}
	if err := rt.d.Extend(ctx, r.Param("call_id"), req.Quota); err != nil {
		return nil, err
	}
	return &rpc.Response{StatusCode: http.StatusNoContent}, nil
}

func (rt *Routes) get(ctx context.Context, r *rpc.Request) (*rpc.Response, error) {
	out, err := rt.d.Get(ctx, r.Param("call_id"))
	if err != nil {
		return nil, err
	}
	return rpc.JSON(http.StatusOK, out)
}
