package call

import (
	"context"
	"errors"

	"github.com/google/uuid"

	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

// OnRTCEvent applies one rtc event (rtc.ringing, rtc.answered, rtc.ended) to its call. It is
// idempotent: the state machine only moves forward, so a duplicate or a late arrival changes
// nothing. An event for a call this service does not have is logged and dropped, since no
// retry could ever apply it; a storage failure is returned, so the event is retried.
func (s *Service) OnRTCEvent(ctx context.Context, typ string, ev rtcapi.Event) error {
	if _, err := uuid.Parse(ev.CallID); err != nil {
		s.Metrics.rtcEvent(typ, "unknown_call")
		s.Log.WarnContext(ctx, "rtc event without a valid call id; ignored", "event_type", typ, "call_id", ev.CallID)
		return nil
	}
	ctx = telemetry.WithCallID(ctx, ev.CallID)
	switch typ {
	case rtcapi.EventRinging, rtcapi.EventAnswered, rtcapi.EventEnded:
	default:
		s.Metrics.rtcEvent(typ, "unknown_type")
		s.Log.WarnContext(ctx, "rtc event of an unknown type; ignored", "event_type", typ)
		return nil
	}
	_, err := s.update(ctx, ev.CallID, func(c *Call) error {
		now := s.now()
		changed := false
		if ev.NodeID != "" && c.NodeID == "" {
			c.NodeID, changed = ev.NodeID, true
		}
		switch typ {
		case rtcapi.EventRinging:
			changed = c.Ringing(ev.At, now) || changed
		case rtcapi.EventAnswered:
			if c.Answer(ev.At, now) {
				changed = true
				if c.Quota > 0 { // the quota counts from the answer: renew it before it runs out
					at := RenewAt(*c.TMProgressing, c.Quota, c.Quota, s.Settings.QuotaLead)
					c.TMRenew = &at
				}
			}
		case rtcapi.EventEnded:
			changed = c.End(Ending{At: ev.At, Cause: ev.Cause, SIPCode: ev.SIPCode, By: ev.By, Reason: ev.Reason}, now) || changed
		}
		if !changed {
			return ErrUnchanged
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrNotFound):
		s.Metrics.rtcEvent(typ, "unknown_call")
		s.Log.WarnContext(ctx, "rtc event for a call this service does not have; ignored", "event_type", typ)
		return nil
	case err != nil:
		s.Metrics.rtcEvent(typ, "error")
		return err
	}
	s.Metrics.rtcEvent(typ, "applied")
	return nil
}
