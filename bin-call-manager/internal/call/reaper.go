package call

import (
	"context"
	"sync"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

// DueStore hands the reaper the calls it must look at.
type DueStore interface {
	// ClaimDue claims up to limit live calls whose check time has come (now or earlier) and moves
	// their next check to next, in one transaction that skips rows another instance holds, so
	// several reapers never work on the same call at once.
	ClaimDue(ctx context.Context, now, next time.Time, limit int) ([]*Call, error)
	// SetProbeFailures records the count of consecutive failed liveness probes.
	SetProbeFailures(ctx context.Context, id string, n int) error
	// SetAlive records a probe that found the call live at time at (and no failed probes).
	SetAlive(ctx context.Context, id string, at time.Time) error
}

// Reaper tuning.
const (
	reapBatch   = 100
	reapWorkers = 16
	// ProbeStrikes failed probes in a row end a call: one failure may be a dialog that has just
	// ended and whose rtc.ended is still on its way.
	ProbeStrikes = 2
)

// RunReaper runs a reaper pass every interval until ctx ends.
func (s *Service) RunReaper(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.Reap(ctx); err != nil && ctx.Err() == nil {
			s.Log.WarnContext(ctx, "reaper pass failed; retrying at the next one", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Reap makes one pass over the calls that are due and returns how many it ended:
//   - a call past its deadline (dial timeout + max duration + grace) is ended as timeout;
//   - a call that never got an rtc node (the process died between insert and dial) is ended as
//     failed once the dial would long have been answered (2 × the RPC timeout);
//   - otherwise the owning node is asked whether it still has the dialog; UNAVAILABLE (its queue
//     is gone or it does not answer), DIALOG_NOT_FOUND or an ended dialog count as a failed probe,
//     and ProbeStrikes in a row end the call as failed; a probe that finds the dialog live
//     records that moment as the call's last known alive.
//
// A call the reaper ends is dated the last moment it was known alive (Call.LastKnownAlive).
//
// Every end goes through the state machine under the row lock, so a call that ended meanwhile is
// left alone and every call gets exactly one call.ended.
func (s *Service) Reap(ctx context.Context) (int, error) {
	total := 0
	for {
		now := s.now()
		due, err := s.Due.ClaimDue(ctx, now, now.Add(s.Settings.ProbeInterval), reapBatch)
		if err != nil {
			return total, err
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, reapWorkers)
		for _, c := range due {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if s.reapOne(ctx, c, now) {
					mu.Lock()
					total++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(due) < reapBatch || ctx.Err() != nil {
			return total, nil
		}
	}
}

func (s *Service) reapOne(ctx context.Context, c *Call, now time.Time) bool {
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, c.CustomerID), c.ID)
	switch {
	case !now.Before(c.TMDeadline):
		s.Log.WarnContext(ctx, "call passed its deadline without ending; ending it", "status", c.Status, "deadline", c.TMDeadline)
		ended := s.reapEnd(ctx, c, "deadline", Ending{Reason: callapi.ReasonTimeout, By: callapi.HangupByLocal, Cause: CauseRecoveryOnTimerExp})
		s.tellRTCHangup(ctx, c.NodeID, c.ID)
		return ended
	case c.NodeID == "":
		if now.Sub(c.TMCreate) < 2*s.Settings.RPCTimeout {
			return false // its dial may still be under way
		}
		s.Log.WarnContext(ctx, "call never got an rtc node; ending it", "status", c.Status)
		ended := s.reapEnd(ctx, c, "orphan", Ending{Reason: callapi.ReasonFailed, By: callapi.HangupByLocal, Cause: CauseTemporaryFailure})
		s.tellRTCHangup(ctx, "", c.ID)
		return ended
	}

	pctx, cancel := s.rpcCtx(ctx)
	d, err := s.RTC.GetDialog(pctx, c.NodeID, c.ID)
	cancel()
	var failed bool
	switch {
	case err == nil:
		failed = d.State == "ended" // the node ended it, but its rtc.ended never arrived
	case apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound):
		failed = true
	default:
		e, typed := apierr.As(err)
		failed = typed && e.Status == apierr.Unavailable
		if !failed {
			s.Log.WarnContext(ctx, "probing the rtc node failed; not counted", "node_id", c.NodeID, "error", err)
			return false
		}
	}
	if !failed {
		if err := s.Due.SetAlive(ctx, c.ID, now); err != nil {
			s.Log.WarnContext(ctx, "recording the live probe failed", "error", err)
		}
		return false
	}
	n := c.ProbeFailures + 1
	if n < ProbeStrikes {
		s.Log.WarnContext(ctx, "the rtc node does not have the call; will check again", "node_id", c.NodeID, "failures", n, "error", err)
		if err := s.Due.SetProbeFailures(ctx, c.ID, n); err != nil {
			s.Log.WarnContext(ctx, "recording the probe failure failed", "error", err)
		}
		return false
	}
	s.Log.WarnContext(ctx, "the rtc node no longer has the call; ending it", "node_id", c.NodeID, "failures", n, "error", err)
	return s.reapEnd(ctx, c, "node_gone", Ending{Reason: callapi.ReasonFailed, By: callapi.HangupByLocal, Cause: CauseTemporaryFailure})
}

// reapEnd ends a call for the reaper and reports whether this pass ended it. The end is dated
// the last moment the call was known alive, not the moment it is reaped: the duration and the
// charge follow from what is known.
func (s *Service) reapEnd(ctx context.Context, c *Call, why string, e Ending) bool {
	var did bool
	_, err := s.update(ctx, c.ID, func(cur *Call) error {
		e.At = cur.LastKnownAlive()
		if did = cur.End(e, s.now()); !did {
			return ErrUnchanged
		}
		return nil
	})
	if err != nil {
		s.Log.ErrorContext(ctx, "the reaper could not end the call; it will try again", "error", err)
		return false
	}
	if did {
		s.Metrics.reaped.WithLabelValues(why).Inc()
	}
	return did
}
