package apierr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestStatusHTTPRoundTrip(t *testing.T) {
	tests := []struct {
		status Status
		code   int
	}{
		{InvalidArgument, 400}, {Unauthenticated, 401}, {PaymentRequired, 402}, {PermissionDenied, 403},
		{NotFound, 404}, {MethodNotAllowed, 405}, {AlreadyExists, 409}, {PayloadTooLarge, 413},
		{ResourceExhausted, 429}, {Unavailable, 503}, {Internal, 500},
	}
	for _, tt := range tests {
		t.Run(string(tt.status), func(t *testing.T) {
			if got := tt.status.HTTPStatus(); got != tt.code {
				t.Fatalf("HTTPStatus() = %d, want %d", got, tt.code)
			}
			if got := StatusFromHTTP(tt.code); got != tt.status {
				t.Fatalf("StatusFromHTTP(%d) = %s, want %s", tt.code, got, tt.status)
			}
		})
	}
	if got := FailedPrecondition.HTTPStatus(); got != http.StatusConflict {
		t.Fatalf("FAILED_PRECONDITION = %d, want 409", got)
	}
	if got := Status("BOGUS").HTTPStatus(); got != 500 {
		t.Fatalf("unknown status = %d, want 500", got)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := New(PaymentRequired, "INSUFFICIENT_BALANCE", "balance too low").WithDetails(Detail{"balance": 5.0})
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Error
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.Status != in.Status || out.Reason != in.Reason || out.Message != in.Message || out.Details[0]["balance"] != 5.0 {
		t.Fatalf("round trip = %+v, want %+v", out, in)
	}
}

func TestFrom(t *testing.T) {
	typed := New(NotFound, "CALL_NOT_FOUND", "no such call")
	tests := []struct {
		name       string
		err        error
		wantReason string
	}{
		{"typed wrapped", fmt.Errorf("get: %w", typed), "CALL_NOT_FOUND"},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), ReasonRequestTimeout},
		{"plain", errors.New("db exploded"), ReasonInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := From(tt.err).Reason; got != tt.wantReason {
				t.Fatalf("From().Reason = %s, want %s", got, tt.wantReason)
			}
		})
	}
	if From(errors.New("secret dsn root:pw")).Message != "internal error" {
		t.Fatal("internal error leaked its cause")
	}
	if !HasReason(fmt.Errorf("w: %w", typed), "CALL_NOT_FOUND") {
		t.Fatal("HasReason did not find the reason")
	}
}
