package call

import (
	"time"

	"voipbin/pkg/callapi"
)

// Ending is what is known about how a call ended: from rtc.ended (the Q.850 cause, the final SIP
// status, and the side and reason when the node knows them), or from the call manager itself
// when it gives up on a call (dial refused, node gone, deadline passed).
type Ending struct {
	At      time.Time
	Cause   int    // Q.850 cause, 0 if unknown
	SIPCode int    // final SIP status of the INVITE, 0 if there was none
	By      string // callapi.HangupByLocal/Remote if known; anything else is ignored
	Reason  string // a callapi.Reason* the node knows (noanswer on dial timeout, timeout on max duration)
}

// Outcome is the derived hangup_reason, hangup_by and hangup_cause of an ended call.
type Outcome struct {
	Reason string
	By     string
	Cause  int
}

var validReasons = map[string]bool{
	callapi.ReasonNormal: true, callapi.ReasonFailed: true, callapi.ReasonBusy: true, callapi.ReasonCancel: true,
	callapi.ReasonTimeout: true, callapi.ReasonNoanswer: true, callapi.ReasonDialout: true,
	callapi.ReasonBalanceExhausted: true,
}

// Derive works out how a call ended from its direction, its status just before the end, and the
// Ending. In order:
//
// hangup_cause: the Ending's cause; else the Q.850 cause of its SIP code (CauseFromSIP); else the
// usual cause of the reason (DefaultCause).
//
// hangup_reason:
//  1. the reason the rtc node reported, when it is a valid one (noanswer for its dial timeout,
//     timeout for the max duration, balance_exhausted when the call's quota ran out, …);
//  2. cancel if we were canceling (hung up locally before the answer);
//  3. normal if the call was answered (progressing or terminating);
//  4. otherwise, from the final SIP status (or, without one, the SIP status of the cause, RFC
//     3398 §7.2.4.1): 486/600 busy; 408/480 noanswer; 487 cancel; cause 16 with no SIP status
//     cancel (the caller gave up before any final response); anything else failed.
//
// hangup_by:
//  1. local if we were canceling or terminating (we asked for it);
//  2. the side the rtc node reported, when valid;
//  3. local for timeout, dialout and balance_exhausted (our own timers and credit control);
//  4. the side that does such a thing: a cancel comes from the caller, a busy/noanswer/failed
//     answer from the callee, and a normal end after the answer from the far end (had we ended
//     it, the call would have been terminating). The caller is local on an outgoing call and
//     remote on an incoming one.
func Derive(direction string, from callapi.Status, e Ending) Outcome {
	var o Outcome
	o.Cause = e.Cause
	if o.Cause == 0 && e.SIPCode != 0 {
		o.Cause = CauseFromSIP(e.SIPCode)
	}

	switch {
	case validReasons[e.Reason]:
		o.Reason = e.Reason
	case from == callapi.StatusCanceling:
		o.Reason = callapi.ReasonCancel
	case from == callapi.StatusProgressing || from == callapi.StatusTerminating:
		o.Reason = callapi.ReasonNormal
	default:
		o.Reason = classify(e.SIPCode, o.Cause)
	}

	caller, callee := callapi.HangupByLocal, callapi.HangupByRemote
	if direction == callapi.DirectionIncoming {
		caller, callee = callee, caller
	}
	switch {
	case from == callapi.StatusCanceling || from == callapi.StatusTerminating:
		o.By = callapi.HangupByLocal
	case e.By == callapi.HangupByLocal || e.By == callapi.HangupByRemote:
		o.By = e.By
	case o.Reason == callapi.ReasonTimeout || o.Reason == callapi.ReasonDialout || o.Reason == callapi.ReasonBalanceExhausted:
		o.By = callapi.HangupByLocal
	case o.Reason == callapi.ReasonCancel:
		o.By = caller
	case o.Reason == callapi.ReasonNormal:
		o.By = callapi.HangupByRemote
	default:
		o.By = callee
	}

	if o.Cause == 0 {
		o.Cause = DefaultCause(o.Reason)
	}
	return o
}

// classify is the reason of an unanswered call that ended without a reason of its own.
func classify(sipCode, cause int) string {
	if sipCode == 0 {
		if cause == CauseNormalClearing {
			return callapi.ReasonCancel
		}
		sipCode = SIPFromCause(cause)
	}
	switch sipCode {
	case 486, 600:
		return callapi.ReasonBusy
	case 408, 480:
		return callapi.ReasonNoanswer
	case 487:
		return callapi.ReasonCancel
	}
	return callapi.ReasonFailed
}

// Q.850 causes the call manager sets itself.
const (
	CauseUnallocatedNumber  = 1
	CauseNormalClearing     = 16
	CauseUserBusy           = 17
	CauseNoUserResponding   = 18
	CauseNoAnswer           = 19
	CauseTemporaryFailure   = 41
	CauseRecoveryOnTimerExp = 102
	CauseInterworking       = 127
)

// DefaultCause is the Q.850 cause of a reason when nothing more precise is known.
func DefaultCause(reason string) int {
	switch reason {
	case callapi.ReasonBusy:
		return CauseUserBusy
	case callapi.ReasonNoanswer:
		return CauseNoAnswer
	case callapi.ReasonTimeout, callapi.ReasonDialout:
		return CauseRecoveryOnTimerExp
	case callapi.ReasonFailed:
		return CauseTemporaryFailure
	}
	return CauseNormalClearing // normal, cancel
}

// sipToCause is RFC 3398 §8.2.6.1 (SIP status → ISUP cause), with 487 → 127 where the RFC gives
// no mapping and 488/606 → 65/58 as gateways commonly do.
var sipToCause = map[int]int{
	400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102, 410: 22,
	413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 421: 127, 423: 127, 480: 18, 481: 41, 482: 25,
	483: 25, 484: 28, 485: 1, 486: 17, 487: 127, 488: 65, 500: 41, 501: 79, 502: 38, 503: 41,
	504: 102, 505: 127, 513: 127, 600: 17, 603: 21, 604: 1, 606: 58,
}

// CauseFromSIP is the Q.850 cause of a final SIP status (RFC 3398 §8.2.6.1). A 2xx is 16;
// statuses the RFC does not list take their class's cause: 3xx 127, 4xx 21 (call rejected),
// 5xx 41 (temporary failure), 6xx 21. 0 (no status) is 0.
func CauseFromSIP(code int) int {
	if c, ok := sipToCause[code]; ok {
		return c
	}
	switch {
	case code <= 0:
		return 0
	case code < 300:
		return CauseNormalClearing
	case code < 400:
		return CauseInterworking
	case code < 500:
		return 21
	case code < 600:
		return CauseTemporaryFailure
	}
	return 21
}

// causeToSIP is RFC 3398 §7.2.4.1 (ISUP cause → SIP status).
var causeToSIP = map[int]int{
	1: 404, 2: 404, 3: 404, 17: 486, 18: 408, 19: 480, 20: 480, 21: 403, 22: 410, 23: 410, 26: 404,
	27: 502, 28: 484, 29: 501, 31: 480, 34: 503, 38: 503, 41: 503, 42: 503, 47: 503, 55: 403,
	57: 403, 58: 503, 65: 488, 69: 501, 70: 488, 79: 501, 87: 403, 88: 503, 102: 504, 111: 500,
	127: 500,
}

// SIPFromCause is the SIP status a Q.850 cause is answered with (RFC 3398 §7.2.4.1). Causes the
// RFC does not list take their class's status: 1–31 (normal class) 480, 32–47 (resource
// unavailable) 503, others 500. Normal clearing (16) and 0 have none (0).
func SIPFromCause(cause int) int {
	if s, ok := causeToSIP[cause]; ok {
		return s
	}
	switch {
	case cause <= 0 || cause == CauseNormalClearing:
		return 0
	case cause < 32:
		return 480
	case cause < 48:
		return 503
	}
	return 500
}
