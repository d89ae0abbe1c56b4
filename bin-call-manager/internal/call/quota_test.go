package call

import (
	"errors"
	"testing"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
)

func TestRenewAt(t *testing.T) {
	answered := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name         string
		quota, grant int
		lead         time.Duration
		want         time.Duration // after the answer
	}{
		{"the first slice, 10 s lead", 60, 60, 10 * time.Second, 50 * time.Second},
		{"after two grants", 120, 60, 10 * time.Second, 110 * time.Second},
		{"a lead longer than half a slice is cut to half", 3, 3, 10 * time.Second, 1500 * time.Millisecond},
		{"short slices, short lead", 4, 2, time.Second, 3 * time.Second},
		{"no lead: at the end", 60, 60, 0, 60 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RenewAt(answered, tt.quota, tt.grant, tt.lead); !got.Equal(answered.Add(tt.want)) {
				t.Fatalf("RenewAt = %s after the answer, want %s", got.Sub(answered), tt.want)
			}
		})
	}
}

func TestDecideRenewal(t *testing.T) {
	end := time.Date(2026, 12, 6, 10, 1, 0, 0, time.UTC)
	refused := apierr.New(apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance, "no")
	unreachable := apierr.New(apierr.Unavailable, apierr.ReasonRequestTimeout, "no answer")
	released := apierr.New(apierr.FailedPrecondition, billingapi.ErrReasonReservationReleased, "ended")
	tests := []struct {
		name string
		err  error
		now  time.Time
		want Renewal
	}{
		{"granted", nil, end.Add(-10 * time.Second), RenewExtend},
		{"granted late: the node decides", nil, end.Add(5 * time.Second), RenewExtend},
		{"refused with quota left: ask again (a top-up may come)", refused, end.Add(-5 * time.Second), RenewRetry},
		{"billing unreachable with quota left: ask again", unreachable, end.Add(-5 * time.Second), RenewRetry},
		{"any error, not yet past the grace", errors.New("broken"), end.Add(QuotaGrace / 2), RenewRetry},
		{"refused and the quota ran out: end the call", refused, end.Add(QuotaGrace), RenewHangup},
		{"unreachable and the quota ran out: end the call", unreachable, end.Add(time.Minute), RenewHangup},
		{"the call ended: stop", released, end.Add(-30 * time.Second), RenewStop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DecideRenewal(tt.err, end, tt.now); got != tt.want {
				t.Fatalf("DecideRenewal = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestAnswerEndsRenewals(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	c := New(NewParams{ID: "id", CustomerID: "cus", Deadline: now.Add(time.Hour), FirstCheck: now.Add(time.Minute)}, now)
	c.Quota = 60
	renew := now.Add(time.Minute)
	c.TMRenew = &renew
	c.Answer(now, now)
	if got := c.QuotaEnd(); !got.Equal(now.Add(time.Minute)) {
		t.Fatalf("QuotaEnd = %s, want the answer + 60 s", got)
	}
	c.End(Ending{Reason: "balance_exhausted"}, now.Add(time.Minute))
	if c.TMRenew != nil || c.TMCheck != nil {
		t.Fatalf("an ended call keeps renew %v, check %v", c.TMRenew, c.TMCheck)
	}
}
