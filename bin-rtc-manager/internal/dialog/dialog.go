// Package dialog is the rtc manager's domain: the outbound SIP dialog a dial creates, the only
// forward moves of its state (calling → ringing → answered → ended), the rtc events each move
// emits with a per-call sequence, and the mapping of SIP outcomes to Q.850 causes. It does no
// I/O: the Redis store persists a Dialog and its events together, the SIP adapter reports progress.
package dialog

import (
	"errors"
	"strings"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
)

// State of a dialog; it only moves forward.
type State string

// The states, as reported by rtcapi.Dialog.State.
const (
	StateCalling  State = "calling"
	StateRinging  State = "ringing"
	StateAnswered State = "answered"
	StateEnded    State = "ended"
)

func (s State) rank() int {
	switch s {
	case StateCalling:
		return 0
	case StateRinging:
		return 1
	case StateAnswered:
		return 2
	case StateEnded:
		return 3
	}
	return -1
}

// Live reports whether the dialog has not ended.
func (s State) Live() bool { return s != StateEnded }

// ErrNotFound is returned by stores for a call id they do not know.
var ErrNotFound = errors.New("dialog not found")

// Dialog is one outbound call's SIP dialog: what a node needs to end it, even one that another,
// dead node dialled.
type Dialog struct {
	CallID     string `json:"call_id"`
	CustomerID string `json:"customer_id"`
	NodeID     string `json:"node_id"`
	State      State  `json:"state"`

	// SIP identity and routing of the dialog.
	SIPCallID  string `json:"sip_call_id"`
	RequestURI string `json:"request_uri"`
	// Trunk says the dialog goes to the configured tel trunk: only such a dialog may answer a
	// digest challenge with the trunk's credentials.
	Trunk        bool     `json:"trunk,omitempty"`
	Transport    string   `json:"transport"`
	From         string   `json:"from"` // From header value, with our tag
	To           string   `json:"to"`   // To header value, with the remote tag once answered
	InviteVia    string   `json:"invite_via,omitempty"`
	CSeq         uint32   `json:"cseq"` // last CSeq we used in the dialog
	RemoteTarget string   `json:"remote_target,omitempty"`
	RouteSet     []string `json:"route_set,omitempty"`

	DialTimeout time.Duration `json:"dial_timeout"`
	MaxDuration time.Duration `json:"max_duration"`
	// Quota is the talk time paid for, in seconds from the answer (0: none); the node ends the
	// call when it runs out.
	Quota int `json:"quota,omitempty"`

	// Outcome.
	SIPCode int    `json:"sip_code,omitempty"`
	Cause   int    `json:"cause,omitempty"`
	By      string `json:"by,omitempty"`
	Reason  string `json:"reason,omitempty"`

	// Seq is the sequence of the last event emitted for the call.
	Seq int64 `json:"seq"`

	TMCreate   time.Time `json:"tm_create"`
	TMRinging  time.Time `json:"tm_ringing,omitzero"`
	TMAnswered time.Time `json:"tm_answered,omitzero"`
	TMEnded    time.Time `json:"tm_ended,omitzero"`
}

// Emitted is an rtc event produced by a state change, to be stored with it and published.
type Emitted struct {
	Type     string
	Sequence int64
	Data     rtcapi.Event
}

func (d *Dialog) emit(typ string, at time.Time, sipCode int) Emitted {
	d.Seq++
	return Emitted{Type: typ, Sequence: d.Seq, Data: rtcapi.Event{CallID: d.CallID, NodeID: d.NodeID, At: at.UTC(), SIPCode: sipCode}}
}

// Ring records a 180/183. It emits rtc.ringing once; later provisionals change nothing.
func (d *Dialog) Ring(at time.Time, sipCode int) []Emitted {
	if d.State.rank() >= StateRinging.rank() {
		return nil
	}
	d.State, d.TMRinging = StateRinging, at
	return []Emitted{d.emit(rtcapi.EventRinging, at, sipCode)}
}

// Answer is what a 2xx to the INVITE tells about the dialog.
type Answer struct {
	// At is when the 2xx arrived; zero means when it is recorded.
	At           time.Time
	SIPCode      int
	To           string // To header value with the remote tag
	RemoteTarget string
	RouteSet     []string
}

// Answered records the 2xx; a dialog already answered or ended does not move back.
func (d *Dialog) Answered(at time.Time, a Answer) []Emitted {
	if d.State.rank() >= StateAnswered.rank() {
		return nil
	}
	d.State, d.TMAnswered = StateAnswered, at
	d.To, d.RemoteTarget, d.RouteSet = a.To, a.RemoteTarget, a.RouteSet
	return []Emitted{d.emit(rtcapi.EventAnswered, at, a.SIPCode)}
}

// End is how a dialog ended.
type End struct {
	// At is when the end happened (the BYE or final response arrived, or ours was sent); zero
	// means when it is recorded. An end recorded late (the store was down) keeps this time.
	At time.Time
	// SIPCode is the INVITE's final status (200 for an answered call), 0 if there was none.
	SIPCode int
	By      string // callapi.HangupByLocal or HangupByRemote
	// Reason is callapi.ReasonNoanswer (dial timeout), ReasonTimeout (max duration),
	// ReasonBalanceExhausted (quota used up), or empty.
	Reason string
}

// Ended records the end once; the Q.850 cause follows from the outcome.
func (d *Dialog) Ended(at time.Time, e End) []Emitted {
	if d.State == StateEnded {
		return nil
	}
	answered := !d.TMAnswered.IsZero()
	d.State, d.TMEnded = StateEnded, at
	d.SIPCode, d.By, d.Reason = e.SIPCode, e.By, e.Reason
	d.Cause = Cause(e, answered)
	ev := d.emit(rtcapi.EventEnded, at, e.SIPCode)
	ev.Data.Cause, ev.Data.By, ev.Data.Reason = d.Cause, d.By, d.Reason
	return []Emitted{ev}
}

// Cause is the Q.850 cause of an outcome. Failures map the final SIP status as RFC 3398 §8.2.6.1
// does; a dial timeout is 19 (no answer), an answered call or a local hang-up 16 (normal clearing).
func Cause(e End, answered bool) int {
	switch {
	case e.Reason == callapi.ReasonNoanswer:
		return 19
	case answered || e.By == callapi.HangupByLocal:
		return 16
	}
	return CauseFromSIP(e.SIPCode)
}

var sipToQ850 = map[int]int{
	400: 41, 401: 21, 402: 21, 403: 21, 404: 1, 405: 63, 406: 79, 407: 21, 408: 102, 410: 22,
	413: 127, 414: 127, 415: 79, 416: 127, 420: 127, 421: 127, 423: 127, 480: 18, 481: 41, 482: 25,
	483: 25, 484: 28, 485: 1, 486: 17, 487: 127, 488: 65, 500: 41, 501: 79, 502: 38, 503: 41,
	504: 102, 505: 127, 513: 127, 600: 17, 603: 21, 604: 1, 606: 58,
}

// CauseFromSIP maps a final SIP status to its Q.850 cause (RFC 3398); 0 (no final response,
// e.g. the destination never answered at the transport level) is 102, recovery on timer expiry.
func CauseFromSIP(code int) int {
	if c, ok := sipToQ850[code]; ok {
		return c
	}
	switch {
	case code == 0:
		return 102
	case code >= 200 && code < 300:
		return 16
	case code >= 300 && code < 400:
		return 23 // redirection to a new destination, which we do not follow
	case code >= 400 && code < 500:
		return 31
	case code >= 500 && code < 600:
		return 38
	case code >= 600:
		return 31
	}
	return 127
}

// Target is the Request-URI a destination is dialled at: a tel number through the trunk URI
// template ({number} replaced), a sip address directly. The address is checked as callapi checks
// it at the API, so a dial request that bypassed the API cannot smuggle anything into the URI.
func Target(dst callapi.Address, trunkURI string) (string, error) {
	if err := callapi.ValidateAddress("destination", dst); err != nil {
		return "", err
	}
	if dst.Type == callapi.AddressTel {
		return strings.ReplaceAll(trunkURI, "{number}", dst.Target), nil
	}
	return "sip:" + dst.Target, nil
}

// FromUser is the user part of the From header for a source address: the number for tel, the
// user for sip, "anonymous" when none is given.
func FromUser(src callapi.Address) (string, error) {
	if src.Type == "" {
		return "anonymous", nil
	}
	// Only the target matters here; Validate checks the whole address.
	if err := callapi.ValidateAddress("source", callapi.Address{Type: src.Type, Target: src.Target}); err != nil {
		return "", err
	}
	if src.Type == callapi.AddressTel {
		return src.Target, nil
	}
	user, _, _ := callapi.SplitSIPTarget(src.Target)
	return user, nil
}

// Validate checks a dial request before anything is sent.
func Validate(req rtcapi.DialRequest) error {
	if req.CallID == "" || len(req.CallID) > 64 || strings.ContainsAny(req.CallID, " /\t\r\n") {
		return apierr.Invalid("call_id", "must be 1-64 characters without spaces or slashes")
	}
	if req.CustomerID == "" || len(req.CustomerID) > 64 || strings.ContainsAny(req.CustomerID, " .*#\t\r\n") {
		return apierr.Invalid("customer_id", "must be 1-64 characters without spaces, dots or wildcards")
	}
	if req.DialTimeout < 0 || req.DialTimeout > 3600 {
		return apierr.Invalid("dial_timeout", "must be 0 (default) to 3600 seconds")
	}
	if req.MaxDuration < 0 || req.MaxDuration > 86400 {
		return apierr.Invalid("max_duration", "must be 0 (default) to 86400 seconds")
	}
	if req.Quota < 0 || req.Quota > MaxQuota {
		return apierr.Invalid("quota", "must be 0 (none) to 604800 seconds")
	}
	if req.Source.Type != "" { // no source: an anonymous call
		if err := callapi.ValidateAddress("source", req.Source); err != nil {
			return err
		}
	}
	if err := callapi.ValidateAddress("destination", req.Destination); err != nil {
		return err
	}
	return nil
}

// MaxQuota bounds a call's quota (seven days, in seconds).
const MaxQuota = 7 * 24 * 3600

// ValidateHangupReason checks the reason a hang-up may ask the node to report.
func ValidateHangupReason(reason string) error {
	if reason != "" && reason != callapi.ReasonBalanceExhausted {
		return apierr.Invalid("reason", "must be empty or balance_exhausted")
	}
	return nil
}

// Info is the public view of a dialog.
func (d *Dialog) Info() rtcapi.Dialog {
	return rtcapi.Dialog{CallID: d.CallID, NodeID: d.NodeID, SIPCallID: d.SIPCallID, State: string(d.State), Quota: d.Quota}
}
