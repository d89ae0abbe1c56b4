package call

import (
	"context"
	"sync"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

// Credit control with quota, as prepaid telecom billing does it: billing's gate grants an
// answered call a first slice of talk time (its quota, counted from the answer) and reserves its
// price; the rtc node that owns the dialog holds the hard deadline answer + quota and ends the call
// itself (BYE, reason balance_exhausted) when it passes. The renewer asks billing for the next
// slice QuotaLead before the quota runs out and, when granted, moves the node's deadline on. When
// billing refuses, or cannot be reached, the call keeps what it was granted and ends at its
// deadline; nothing here has to work for a call to stop when its money does.

// Credit is billing's credit control: the next slice of a call's quota.
type Credit interface {
	Extend(ctx context.Context, callID string, req billingapi.ExtendRequest) (billingapi.ExtendResponse, error)
}

// Enforcer reaches the rtc node that enforces a call's quota.
type Enforcer interface {
	Extend(ctx context.Context, nodeID, callID string, quota int) error
	HangupReason(ctx context.Context, nodeID, callID, reason string) error
}

// RenewalStore hands the renewer the calls whose quota is due for renewal.
type RenewalStore interface {
	// ClaimRenewals claims up to limit live calls whose renewal time has come and moves it to
	// lease, in one transaction that skips rows another instance holds, so two renewers never
	// work on one call and a renewer that dies mid-way is replaced at lease.
	ClaimRenewals(ctx context.Context, now, lease time.Time, limit int) ([]*Call, error)
	// SetRenewal sets the call's next renewal (nil: none) unless it has ended.
	SetRenewal(ctx context.Context, id string, at *time.Time) error
}

// QuotaGrace is how long past a call's quota end the call manager waits for the rtc node to end
// the call before asking it to (a node that misses its own deadline).
const QuotaGrace = time.Second

const (
	renewBatch   = 100
	renewWorkers = 16
)

// RenewAt is when the next slice of a call's quota is asked for: lead before the quota (seconds
// from answered) runs out, but never earlier than half-way through the last grant (grant
// seconds), so a lead longer than the slices cannot make a call reserve ahead without end.
func RenewAt(answered time.Time, quota, grant int, lead time.Duration) time.Time {
	lead = min(lead, time.Duration(grant)*time.Second/2)
	return stamp(answered.Add(time.Duration(quota)*time.Second - lead))
}

// QuotaEnd is when the call's quota runs out (zero if it has none or was not answered).
func (c *Call) QuotaEnd() time.Time {
	if c.Quota <= 0 || c.TMProgressing == nil {
		return time.Time{}
	}
	return c.TMProgressing.Add(time.Duration(c.Quota) * time.Second)
}

// Renewal is what the renewer does next for a call, decided from what billing answered.
type Renewal int

// The renewer's decisions.
const (
	RenewExtend Renewal = iota // granted: move the node's deadline to the new quota
	RenewRetry                 // refused or unreachable while quota is left: ask again later
	RenewHangup                // the quota ran out and the call still runs: ask the node to end it
	RenewStop                  // the call ended (its reservation is released): nothing more to do
)

// DecideRenewal is the renewer's decision once billing answered err (nil: granted) at now.
// A refusal and an unreachable billing are treated alike: the call keeps the quota it has, and is
// asked about again until its quota end; then (plus QuotaGrace, for the node's own deadline) it
// is ended with balance_exhausted. A top-up made before the quota end lets it go on.
func DecideRenewal(err error, quotaEnd, now time.Time) Renewal {
	switch {
	case err == nil:
		return RenewExtend
	case apierr.HasReason(err, billingapi.ErrReasonReservationReleased):
		return RenewStop
	case now.Before(quotaEnd.Add(QuotaGrace)):
		return RenewRetry
	}
	return RenewHangup
}

// RunRenewer runs a renewer pass every interval until ctx ends.
func (s *Service) RunRenewer(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := s.Renew(ctx); err != nil && ctx.Err() == nil {
			s.Log.WarnContext(ctx, "renewer pass failed; retrying at the next one", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Renew makes one pass over the calls whose quota renewal is due.
func (s *Service) Renew(ctx context.Context) error {
	for {
		now := s.now()
		// Long enough for the RPCs of one renewal, and short enough that a renewer that dies is
		// replaced before the quota runs out. An attempt that outlives its lease and runs beside
		// the next one is harmless: billing answers the same quota with the same grant, and the
		// node and the row only ever take a higher quota.
		lease := now.Add(min(2*s.Settings.RPCTimeout+time.Second, max(s.Settings.QuotaLead/2, s.Settings.QuotaInterval)))
		due, err := s.Renewals.ClaimRenewals(ctx, now, lease, renewBatch)
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, renewWorkers)
		for _, c := range due {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				s.renewOne(ctx, c)
			}()
		}
		wg.Wait()
		if len(due) < renewBatch || ctx.Err() != nil {
			return nil
		}
	}
}

func (s *Service) renewOne(ctx context.Context, c *Call) {
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, c.CustomerID), c.ID)
	end := c.QuotaEnd()
	if !c.Live() || end.IsZero() || c.NodeID == "" {
		s.setRenewal(ctx, c.ID, nil)
		return
	}
	var resp billingapi.ExtendResponse
	var err error
	if now := s.now(); now.Before(end.Add(QuotaGrace)) {
		rctx, cancel := s.rpcCtx(ctx)
		resp, err = s.Credit.Extend(rctx, c.ID, billingapi.ExtendRequest{CustomerID: c.CustomerID, Quota: c.Quota})
		cancel()
	} else {
		err = errQuotaOver
	}
	switch DecideRenewal(err, end, s.now()) {
	case RenewExtend:
		s.extend(ctx, c, resp.Quota)
	case RenewStop:
		s.Metrics.renewal("ended")
		s.setRenewal(ctx, c.ID, nil)
	case RenewRetry:
		if apierr.HasReason(err, billingapi.ErrReasonInsufficientBalance) {
			s.Metrics.renewal("refused")
			s.Log.InfoContext(ctx, "billing granted no more quota; the call ends when its quota does unless the balance is topped up",
				"quota", c.Quota, "quota_end", end)
		} else {
			s.Metrics.renewal("unavailable")
			s.Log.WarnContext(ctx, "asking billing for more quota failed; retrying until the quota ends", "quota", c.Quota, "quota_end", end, "error", err)
		}
		next := s.now().Add(s.Settings.QuotaInterval)
		if last := end.Add(QuotaGrace); next.After(last) {
			next = last
		}
		s.setRenewal(ctx, c.ID, &next)
	case RenewHangup:
		s.Metrics.renewal("exhausted")
		s.Log.WarnContext(ctx, "the call outlived its quota; asking its rtc node to end it", "quota", c.Quota, "quota_end", end, "node_id", c.NodeID)
		hctx, cancel := s.rpcCtx(ctx)
		herr := s.Enforcer.HangupReason(hctx, c.NodeID, c.ID, callapi.ReasonBalanceExhausted)
		cancel()
		if herr == nil || apierr.HasReason(herr, rtcapi.ErrReasonDialogNotFound) {
			s.setRenewal(ctx, c.ID, nil) // rtc.ended ends it; a dead node is the reaper's
			return
		}
		s.Log.WarnContext(ctx, "asking the rtc node to end a call past its quota failed; retrying", "error", herr)
		next := s.now().Add(s.Settings.QuotaInterval)
		s.setRenewal(ctx, c.ID, &next)
	}
}

var errQuotaOver = apierr.New(apierr.FailedPrecondition, "QUOTA_OVER", "the call's quota has run out")

// extend moves the rtc node's deadline to the quota billing granted, then records it: the call's
// quota is only ever what its node enforces. If the node cannot be told, the renewal is retried
// (billing answers the retry with the same grant).
func (s *Service) extend(ctx context.Context, c *Call, quota int) {
	if quota <= c.Quota {
		s.Log.WarnContext(ctx, "billing granted no more than the call has; retrying", "quota", c.Quota, "granted", quota)
		next := s.now().Add(s.Settings.QuotaInterval)
		s.setRenewal(ctx, c.ID, &next)
		return
	}
	ectx, cancel := s.rpcCtx(ctx)
	err := s.Enforcer.Extend(ectx, c.NodeID, c.ID, quota)
	cancel()
	switch {
	case apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound):
		s.Metrics.renewal("ended")
		s.setRenewal(ctx, c.ID, nil) // the dialog ended: its rtc.ended is on its way
		return
	case err != nil:
		s.Metrics.renewal("rtc_unavailable")
		s.Log.WarnContext(ctx, "telling the rtc node about the new quota failed; retrying", "node_id", c.NodeID, "quota", quota, "error", err)
		next := s.now().Add(s.Settings.QuotaInterval)
		s.setRenewal(ctx, c.ID, &next)
		return
	}
	grant := quota - c.Quota
	_, uerr := s.update(ctx, c.ID, func(cur *Call) error {
		if !cur.Live() || cur.Quota >= quota || cur.TMProgressing == nil {
			return ErrUnchanged
		}
		cur.Quota = quota
		at := RenewAt(*cur.TMProgressing, quota, grant, s.Settings.QuotaLead)
		cur.TMRenew = &at
		return nil
	})
	if uerr != nil {
		// The node has the new deadline; the lease brings the renewal back, and billing answers
		// it with the same grant.
		s.Log.WarnContext(ctx, "recording the new quota failed; the renewal will be retried", "quota", quota, "error", uerr)
		return
	}
	s.Metrics.renewal("granted")
	s.Log.InfoContext(ctx, "quota extended", "quota", quota, "node_id", c.NodeID)
}

func (s *Service) setRenewal(ctx context.Context, id string, at *time.Time) {
	if at != nil {
		t := stamp(*at)
		at = &t
	}
	if err := s.Renewals.SetRenewal(ctx, id, at); err != nil {
		s.Log.WarnContext(ctx, "recording the next quota renewal failed; the lease brings it back", "error", err)
	}
}
