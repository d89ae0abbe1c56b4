package rpcserver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rpc"
)

func TestToAPI(t *testing.T) {
	payment := apierr.New(apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance, "balance too low")
	tests := []struct {
		name       string
		err        error
		wantStatus apierr.Status
		wantReason string
	}{
		{"invalid field", &call.InvalidError{Field: "destinations[0].target", Description: "bad"}, apierr.InvalidArgument, apierr.ReasonInvalidArgument},
		{"not found", call.ErrNotFound, apierr.NotFound, callapi.ErrReasonCallNotFound},
		{"wrapped not found", fmt.Errorf("get: %w", call.ErrNotFound), apierr.NotFound, callapi.ErrReasonCallNotFound},
		{"ended", call.ErrStateInvalid, apierr.FailedPrecondition, callapi.ErrReasonCallStateInvalid},
		{"billing's 402 passes", fmt.Errorf("billing gate: %w", payment), apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance},
		{"anything else is internal", errors.New("mysql: connection refused"), apierr.Internal, apierr.ReasonInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := apierr.From(toAPI(tt.err))
			if got.Status != tt.wantStatus || got.Reason != tt.wantReason {
				t.Fatalf("toAPI(%v) = %s/%s, want %s/%s", tt.err, got.Status, got.Reason, tt.wantStatus, tt.wantReason)
			}
		})
	}
	e := apierr.From(toAPI(&call.InvalidError{Field: "timeout", Description: "too long"}))
	if len(e.Details) != 1 || e.Details[0]["field"] != "timeout" {
		t.Fatalf("details = %v, want the field", e.Details)
	}
}

// recorder is a Service that records the create requests it gets.
type recorder struct {
	Service
	got []callapi.CreateRequest
}

func (r *recorder) Create(_ context.Context, req callapi.CreateRequest) ([]callapi.Call, error) {
	r.got = append(r.got, req)
	return nil, nil
}

type routes map[string]rpc.HandlerFunc

func (r routes) Handle(pattern string, h rpc.HandlerFunc) { r[pattern] = h }

// A create without a key gets its RPC message id as the key, so a request redelivered after the
// call manager died mid-way (same message) is not placed twice; a caller's own key is kept.
func TestCreateWithoutAKeyIsKeyedByItsMessageID(t *testing.T) {
	svc := &recorder{}
	r := routes{}
	Register(r, svc)
	for _, body := range []string{
		`{"customer_id":"5e4a0000-0000-4000-8000-000000000001","source":{"type":"tel","target":"+15550000001"},"destinations":[{"type":"tel","target":"+15550000002"}]}`,
		`{"customer_id":"5e4a0000-0000-4000-8000-000000000001","source":{"type":"tel","target":"+15550000001"},"destinations":[{"type":"tel","target":"+15550000002"}],"idempotency_key":"customer:x:order-17"}`,
	} {
		if _, err := r[callapi.RouteCreate](context.Background(), &rpc.Request{MessageID: "m-1", Method: "POST", Route: "/v1/calls", Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	if len(svc.got) != 2 || svc.got[0].IdempotencyKey != "rpc-message:m-1" || svc.got[1].IdempotencyKey != "customer:x:order-17" {
		t.Fatalf("keys = %+v", svc.got)
	}
}
