// Package call owns the call record and its state machine (DESIGN §6): creating calls behind the
// billing gate, dialling them through rtc, following rtc progress, hanging up, listing, and the
// reaper that ends every call that would otherwise stay live forever. It does no I/O itself: the
// store, the cache, billing and rtc are small interfaces its adapters implement.
//
// Every state change is made by a method of Call that moves the status forward only, bumps the
// call's sequence and records the event to publish; the store writes the row and the events in
// one transaction.
package call

import (
	"errors"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/callapi"
)

// Errors of the domain; the edges map them to typed errors.
var (
	// ErrNotFound: no such call, or one of another customer, or a deleted one.
	ErrNotFound = errors.New("call not found")
	// ErrStateInvalid: the call's status does not allow the operation (hang up an ended call).
	ErrStateInvalid = errors.New("call state does not allow this")
	// ErrUnchanged is returned by an update function that has nothing to write.
	ErrUnchanged = errors.New("call unchanged")
)

// Call is the call record: the public Call plus what only the call manager sees.
type Call struct {
	callapi.Call
	// NodeID is the rtc node owning the SIP dialog ("" until the dial is answered or reported).
	NodeID    string
	SIPCallID string
	// DialTimeout is the dial timeout sent to rtc, in seconds.
	DialTimeout int
	// Quota is the talk time granted by billing and enforced by the rtc node, in seconds from the
	// answer (0: none).
	Quota int
	// Sequence is the sequence number of the call's last event.
	Sequence int64
	// Version counts every write of the row; the cache keeps the highest.
	Version int64
	// ProbeFailures counts consecutive failed liveness probes of the rtc node.
	ProbeFailures int
	// TMAlive is the last time a reaper's probe found the call live on its rtc node.
	TMAlive *time.Time
	// TMDeadline is when the reaper ends the call if rtc has not.
	TMDeadline time.Time
	// TMCheck is when the reaper looks at the call next; nil once it has ended.
	TMCheck *time.Time
	// TMRenew is when the renewer asks for the call's next slice of quota; nil when it never
	// will (no quota, not answered yet, ended).
	TMRenew  *time.Time
	TMDelete *time.Time

	events []Event
}

// Event is a call event produced by a state change, to be written with it.
type Event struct {
	ID       string
	Type     string
	Sequence int64
	// Call is the public call as of this event.
	Call callapi.Call
	// From and To are the statuses the change moved between (equal for call.created).
	From, To callapi.Status
}

// TakeEvents returns the events recorded since the last call and forgets them.
func (c *Call) TakeEvents() []Event {
	evs := c.events
	c.events = nil
	return evs
}

// Live reports whether the call has not ended.
func (c *Call) Live() bool { return c.Status != callapi.StatusHangup }

// Answered reports whether the call was answered.
func (c *Call) Answered() bool { return c.TMProgressing != nil }

func (c *Call) record(typ string, from callapi.Status, now time.Time) {
	c.Sequence++
	c.TMUpdate = now
	// A copy: timestamps are replaced, never written through, and metadata never changes.
	c.events = append(c.events, Event{ID: uuid.NewString(), Type: typ, Sequence: c.Sequence, Call: c.Call, From: from, To: c.Status})
}

// NewParams are what a new outgoing call is made of.
type NewParams struct {
	ID          string
	CustomerID  string
	Source      callapi.Address
	Destination callapi.Address
	Metadata    map[string]any
	DialTimeout time.Duration
	// Deadline is when the reaper will end the call if rtc has not.
	Deadline time.Time
	// FirstCheck is when the reaper first looks at the call.
	FirstCheck time.Time
}

// New makes an outgoing call in status dialing and records call.created.
func New(p NewParams, now time.Time) *Call {
	now = stamp(now)
	check := stamp(p.FirstCheck)
	c := &Call{
		Call: callapi.Call{ID: p.ID, CustomerID: p.CustomerID, Source: p.Source, Destination: p.Destination,
			Status: callapi.StatusDialing, Direction: callapi.DirectionOutgoing, Metadata: p.Metadata,
			TMCreate: now, TMUpdate: now},
		DialTimeout: int(p.DialTimeout / time.Second),
		TMDeadline:  stamp(p.Deadline),
		TMCheck:     &check,
	}
	c.record(callapi.EventCreated, callapi.StatusDialing, now)
	return c
}

// stamp is a time as the database keeps it: UTC, microseconds.
func stamp(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// Input is what can happen to a call.
type Input int

// The inputs of the state machine.
const (
	InputRinging       Input = iota // rtc: 180/183
	InputAnswered                   // rtc: 2xx
	InputHangupRequest              // a local hang-up (API, delete)
	InputEnded                      // rtc ended it, or the call manager gave up on it
)

func (i Input) String() string {
	return [...]string{"ringing", "answered", "hangup_request", "ended"}[i]
}

// Next is the state machine of DESIGN §6: the status an input moves a call to, whether it moves
// at all, and ErrStateInvalid for a request the status refuses. Statuses only move forward:
//
//	dialing → ringing → progressing → terminating → hangup
//	dialing|ringing → canceling → hangup   (hung up locally before the answer)
//	any live status → hangup
//
// A 2xx that crosses our CANCEL (answered while canceling) does not move the call: the rtc node
// ends the dialog and the call ends as a cancel. Duplicates and late arrivals (ringing after the
// answer, anything after the hangup) do not move it either.
func Next(from callapi.Status, in Input) (callapi.Status, bool, error) {
	switch in {
	case InputRinging:
		if from == callapi.StatusDialing {
			return callapi.StatusRinging, true, nil
		}
	case InputAnswered:
		if from == callapi.StatusDialing || from == callapi.StatusRinging {
			return callapi.StatusProgressing, true, nil
		}
	case InputHangupRequest:
		switch from {
		case callapi.StatusDialing, callapi.StatusRinging:
			return callapi.StatusCanceling, true, nil
		case callapi.StatusProgressing:
			return callapi.StatusTerminating, true, nil
		case callapi.StatusHangup:
			return from, false, ErrStateInvalid
		}
	case InputEnded:
		if from != callapi.StatusHangup {
			return callapi.StatusHangup, true, nil
		}
	}
	return from, false, nil
}

// after is the later of t and the latest timestamp already on the call, so a skewed or missing
// rtc clock never makes timestamps run backwards.
func (c *Call) after(t time.Time, now time.Time) time.Time {
	if t.IsZero() {
		t = now
	}
	t = stamp(t)
	for _, p := range []*time.Time{&c.TMCreate, c.TMRinging, c.TMProgressing} {
		if p != nil && t.Before(*p) {
			t = *p
		}
	}
	return t
}

// Ringing applies an rtc ringing at time at; false means nothing changed.
func (c *Call) Ringing(at, now time.Time) bool {
	to, ok, _ := Next(c.Status, InputRinging)
	if !ok {
		return false
	}
	from := c.Status
	at = c.after(at, now)
	c.Status, c.TMRinging = to, &at
	c.record(callapi.EventRinging, from, stamp(now))
	return true
}

// Answer applies an rtc answer at time at; false means nothing changed.
func (c *Call) Answer(at, now time.Time) bool {
	to, ok, _ := Next(c.Status, InputAnswered)
	if !ok {
		return false
	}
	from := c.Status
	at = c.after(at, now)
	c.Status, c.TMProgressing = to, &at
	c.record(callapi.EventAnswered, from, stamp(now))
	return true
}

// RequestHangup moves a live call to canceling (not answered) or terminating (answered) and
// records call.updated; the final state comes from rtc. false means it was already on its way
// out; an ended call is ErrStateInvalid.
func (c *Call) RequestHangup(now time.Time) (bool, error) {
	to, ok, err := Next(c.Status, InputHangupRequest)
	if err != nil || !ok {
		return false, err
	}
	from := c.Status
	c.Status = to
	c.record(callapi.EventUpdated, from, stamp(now))
	return true, nil
}

// End ends a live call with what is known of the ending and records call.ended with the derived
// hangup_reason, hangup_by, hangup_cause and duration. false means it had already ended.
func (c *Call) End(e Ending, now time.Time) bool {
	to, ok, _ := Next(c.Status, InputEnded)
	if !ok {
		return false
	}
	from := c.Status
	at := c.after(e.At, now)
	o := Derive(c.Direction, from, e)
	c.Status, c.TMHangup = to, &at
	c.HangupReason, c.HangupBy, c.HangupCause, c.SIPCode = o.Reason, o.By, o.Cause, e.SIPCode
	c.Duration = Duration(c.TMProgressing, at)
	c.TMCheck, c.TMRenew = nil, nil
	c.record(callapi.EventEnded, from, stamp(now))
	return true
}

// LastKnownAlive is the last moment the call is known to have been up: its latest event (created,
// ringing, answered) or the latest probe that found it live on its rtc node. A call the reaper has
// to end ended no later than that; dating its end later would charge time nobody can vouch for.
func (c *Call) LastKnownAlive() time.Time {
	last := c.TMCreate
	for _, t := range []*time.Time{c.TMRinging, c.TMProgressing, c.TMAlive} {
		if t != nil && t.After(last) {
			last = *t
		}
	}
	return last
}

// Duration is the whole seconds from the answer to the hangup, 0 if never answered.
func Duration(answered *time.Time, hangup time.Time) int {
	if answered == nil || hangup.Before(*answered) {
		return 0
	}
	return int(hangup.Sub(*answered) / time.Second)
}

// VisibleTo reports whether a customer scope sees the call: "" is any customer (superadmin).
// Deleted calls are seen by nobody.
func (c *Call) VisibleTo(customerID string) bool {
	return c.TMDelete == nil && (customerID == "" || customerID == c.CustomerID)
}
