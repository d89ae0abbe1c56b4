package rpcserver

import (
	"errors"
	"fmt"
	"testing"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
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
