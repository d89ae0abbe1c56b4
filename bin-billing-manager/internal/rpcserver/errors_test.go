package rpcserver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
)

// The domain's errors must map to what callers branch on.
func TestAPIErrorMapping(t *testing.T) {
	tests := []struct {
		err        error
		wantStatus apierr.Status
		wantReason string
	}{
		{&billing.InvalidError{Field: "f", Description: "d"}, apierr.InvalidArgument, apierr.ReasonInvalidArgument},
		{fmt.Errorf("wrapped: %w", &billing.InsufficientBalanceError{Required: 1}), apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance},
		{billing.ErrAccountNotFound, apierr.NotFound, billingapi.ErrReasonAccountNotFound},
		{billing.ErrReservationReleased, apierr.FailedPrecondition, billingapi.ErrReasonReservationReleased},
		{billing.ErrInvalidPageToken, apierr.InvalidArgument, apierr.ReasonInvalidArgument},
		{errors.New("disk on fire"), apierr.Internal, apierr.ReasonInternal},
		{context.DeadlineExceeded, apierr.Unavailable, apierr.ReasonRequestTimeout},
	}
	for _, tt := range tests {
		got := apierr.From(apiError(tt.err))
		if got.Status != tt.wantStatus || got.Reason != tt.wantReason {
			t.Errorf("APIError(%v) = %s/%s, want %s/%s", tt.err, got.Status, got.Reason, tt.wantStatus, tt.wantReason)
		}
	}
}
