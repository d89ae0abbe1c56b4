package dialog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

// Store persists dialogs together with the events their changes emit, so that a change and its
// event are one atomic write.
type Store interface {
	// Create stores a new dialog; ErrExists if the call id is taken.
	Create(ctx context.Context, d *Dialog) error
	// Update applies fn to the stored dialog and stores it with the events fn returns, atomically.
	Update(ctx context.Context, callID string, fn func(d *Dialog) ([]Emitted, error)) (*Dialog, error)
	// Get reads a dialog; ErrNotFound if there is none.
	Get(ctx context.Context, callID string) (*Dialog, error)
	// Live lists the call ids of a node's dialogs that have not ended.
	Live(ctx context.Context, nodeID string) ([]string, error)
	// Alive is when a node was last known alive (its last heartbeat); zero if unknown.
	Alive(ctx context.Context, nodeID string) (time.Time, error)
}

// SIPIndex finds a dialog by its SIP Call-ID.
type SIPIndex interface {
	// CallIDBySIP returns the call id of a SIP Call-ID; ErrNotFound if there is none.
	CallIDBySIP(ctx context.Context, sipCallID string) (string, error)
}

// ErrExists is returned by Store.Create for a call id that already has a dialog.
var ErrExists = errors.New("dialog exists")

// Phone is the SIP side of the service.
type Phone interface {
	// Call fills d's SIP fields, has p.Start persist it, sends the INVITE, and then runs the
	// dialog in the background, reporting its progress to p.
	Call(ctx context.Context, d *Dialog, src callapi.Address, p Progress) error
	// Hangup ends a dialog this process runs (CANCEL before the answer, BYE after), reporting
	// reason in its end, and waits until it has ended; false if it runs no such dialog.
	Hangup(ctx context.Context, callID, reason string) (bool, error)
	// Extend raises the quota of a dialog this process runs to quota seconds from its answer (a
	// lower one changes nothing); false if it runs no such dialog.
	Extend(callID string, quota int) bool
	// EndStateless ends a dialog from its stored state alone (its node died) and returns how it
	// ended: By remote when the peer answers that it has no such dialog any more (it hung up
	// while nobody listened), local otherwise. At is left to the caller.
	EndStateless(ctx context.Context, d Dialog) (End, error)
}

// Forwarder reaches the node that owns a dialog.
type Forwarder interface {
	HangupReason(ctx context.Context, nodeID, callID, reason string) error
}

// Progress receives what happens to a dialog.
type Progress interface {
	Start(ctx context.Context, d *Dialog) error
	Ringing(ctx context.Context, callID string, code int)
	Answered(ctx context.Context, callID string, a Answer)
	Ended(ctx context.Context, callID string, e End)
	// CSeq records the CSeq of the last request sent in the dialog.
	CSeq(ctx context.Context, callID string, cseq uint32)
}

// Kicker is told that new events wait in the store.
type Kicker interface{ Kick() }

// Service is the rtc manager's use cases: dial, hang up, look up, and recording progress.
type Service struct {
	nodeID      string
	trunkURI    string
	dialTimeout time.Duration
	maxDuration time.Duration
	store       Store
	index       SIPIndex
	phone       Phone
	forward     Forwarder
	relay       Kicker
	log         *slog.Logger
	now         func() time.Time
	prevAlive   time.Time

	// Changes of one dialog are stored in order by one goroutine at a time (queues), so the SIP
	// side never waits for the store, except for the end, which it waits to see stored.
	qmu    sync.Mutex
	queues map[string][]change
}

type change struct {
	ctx  context.Context
	fn   func(d *Dialog) ([]Emitted, error)
	done chan struct{} // closed once stored (or given up at shutdown)
}

// Params are the Service's dependencies and settings.
type Params struct {
	NodeID      string
	TrunkURI    string
	DialTimeout time.Duration
	MaxDuration time.Duration
	Store       Store
	Index       SIPIndex // optional: without it a BYE for a dialog no process runs is refused
	Phone       Phone
	Forward     Forwarder
	Relay       Kicker
	Log         *slog.Logger
	// PreviousRunAlive is the last heartbeat of this node's previous run (read before this run's
	// first beat): the last moment the dialogs it left were known alive.
	PreviousRunAlive time.Time
}

// NewService makes the service.
func NewService(p Params) *Service {
	return &Service{nodeID: p.NodeID, trunkURI: p.TrunkURI, dialTimeout: p.DialTimeout, maxDuration: p.MaxDuration,
		store: p.Store, index: p.Index, phone: p.Phone, forward: p.Forward, relay: p.Relay, log: p.Log, now: time.Now, prevAlive: p.PreviousRunAlive,
		queues: map[string][]change{}}
}

// Dial starts an outbound call and returns once the INVITE is sent.
func (s *Service) Dial(ctx context.Context, req rtcapi.DialRequest) (rtcapi.DialResponse, error) {
	if err := Validate(req); err != nil {
		return rtcapi.DialResponse{}, err
	}
	target, err := Target(req.Destination, s.trunkURI)
	if err != nil {
		return rtcapi.DialResponse{}, err
	}
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, req.CustomerID), req.CallID)
	d := &Dialog{CallID: req.CallID, CustomerID: req.CustomerID, NodeID: s.nodeID, State: StateCalling,
		RequestURI: target, Trunk: req.Destination.Type == callapi.AddressTel, DialTimeout: s.dialTimeout, MaxDuration: s.maxDuration, TMCreate: s.now().UTC()}
	if req.DialTimeout > 0 {
		d.DialTimeout = time.Duration(req.DialTimeout) * time.Second
	}
	if req.MaxDuration > 0 {
		d.MaxDuration = time.Duration(req.MaxDuration) * time.Second
	}
	d.Quota = req.Quota
	err = s.phone.Call(ctx, d, req.Source, s)
	switch {
	case errors.Is(err, ErrExists):
		// A redelivered dial: answer as the first time did.
		old, gerr := s.store.Get(ctx, req.CallID)
		if gerr != nil {
			return rtcapi.DialResponse{}, fmt.Errorf("dial %s again: %w", req.CallID, gerr)
		}
		return rtcapi.DialResponse{NodeID: old.NodeID, SIPCallID: old.SIPCallID}, nil
	case err != nil:
		return rtcapi.DialResponse{}, err
	}
	s.log.InfoContext(ctx, "dialling", "request_uri", target, "sip_call_id", d.SIPCallID)
	return rtcapi.DialResponse{NodeID: s.nodeID, SIPCallID: d.SIPCallID}, nil
}

// Start persists a new dialog before its INVITE leaves (Progress).
func (s *Service) Start(ctx context.Context, d *Dialog) error {
	if err := s.store.Create(ctx, d); err != nil {
		return err
	}
	return nil
}

// Every change is stamped with the time it happened, taken when the SIP side reports it, before
// the store is tried: a change stored late, after the store came back, still says when it
// happened. Changes are queued per dialog and stored in order in the background, so a slow or
// absent store never holds up the SIP side (a 2xx is not read late because a 180 waits to be
// stored); only Ended waits until the end, and everything before it, is stored.

// Ringing records a 180/183 (Progress).
func (s *Service) Ringing(ctx context.Context, callID string, code int) {
	at := s.now()
	s.enqueue(ctx, callID, func(d *Dialog) ([]Emitted, error) { return d.Ring(at, code), nil })
}

// Answered records the 2xx (Progress).
func (s *Service) Answered(ctx context.Context, callID string, a Answer) {
	at := s.factTime(a.At)
	s.enqueue(ctx, callID, func(d *Dialog) ([]Emitted, error) { return d.Answered(at, a), nil })
}

// Ended records the end of the dialog (Progress) and returns once it is stored, or ctx ended.
func (s *Service) Ended(ctx context.Context, callID string, e End) {
	at := s.factTime(e.At)
	done := s.enqueue(ctx, callID, func(d *Dialog) ([]Emitted, error) { return d.Ended(at, e), nil })
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (s *Service) factTime(at time.Time) time.Time {
	if at.IsZero() {
		return s.now()
	}
	return at
}

// CSeq records the CSeq of a request sent in the dialog, so another node continues above it.
func (s *Service) CSeq(ctx context.Context, callID string, cseq uint32) {
	s.enqueue(ctx, callID, func(d *Dialog) ([]Emitted, error) { d.CSeq = max(d.CSeq, cseq); return nil, nil })
}

// enqueue adds a change to its dialog's queue, starting the queue's writer if it is idle.
func (s *Service) enqueue(ctx context.Context, callID string, fn func(d *Dialog) ([]Emitted, error)) <-chan struct{} {
	c := change{ctx: ctx, fn: fn, done: make(chan struct{})}
	s.qmu.Lock()
	q, running := s.queues[callID]
	s.queues[callID] = append(q, c)
	s.qmu.Unlock()
	if !running {
		go s.drain(callID)
	}
	return c.done
}

// drain stores a dialog's queued changes in order until none is left.
func (s *Service) drain(callID string) {
	for {
		s.qmu.Lock()
		q := s.queues[callID]
		if len(q) == 0 {
			delete(s.queues, callID)
			s.qmu.Unlock()
			return
		}
		c := q[0]
		s.qmu.Unlock()
		s.record(c.ctx, callID, c.fn)
		close(c.done)
		s.qmu.Lock()
		s.queues[callID] = s.queues[callID][1:]
		s.qmu.Unlock()
	}
}

// record stores a change, retrying while the store is unreachable: the SIP side has already
// moved, so the change must not be lost. It gives up only when ctx ends (shutdown), with an error
// log naming the call.
func (s *Service) record(ctx context.Context, callID string, fn func(d *Dialog) ([]Emitted, error)) {
	for attempt := 0; ; attempt++ {
		_, err := s.store.Update(ctx, callID, fn)
		if err == nil {
			s.relay.Kick()
			return
		}
		if errors.Is(err, ErrNotFound) {
			s.log.ErrorContext(ctx, "dialog vanished from the store; change not recorded", "error", err)
			return
		}
		s.log.WarnContext(ctx, "recording dialog change failed, retrying", "attempt", attempt+1, "error", err)
		select {
		case <-ctx.Done():
			s.log.ErrorContext(ctx, "dialog change not recorded before shutdown", "error", err)
			return
		case <-time.After(min(50*time.Millisecond<<min(attempt, 6), 2*time.Second)):
		}
	}
}

// Extend raises the quota of a dialog this node runs (the call manager sends it to the owner's
// queue): the call may then last quota seconds from its answer. A dialog this node no longer runs
// (it ended) is DIALOG_NOT_FOUND.
func (s *Service) Extend(ctx context.Context, callID string, quota int) error {
	ctx = telemetry.WithCallID(ctx, callID)
	if quota <= 0 || quota > MaxQuota {
		return apierr.Invalid("quota", "must be 1 to 604800 seconds")
	}
	if !s.phone.Extend(callID, quota) {
		return apierr.Newf(apierr.NotFound, rtcapi.ErrReasonDialogNotFound, "no live dialog for call %s on this node", callID)
	}
	s.record(ctx, callID, func(d *Dialog) ([]Emitted, error) { d.Quota = max(d.Quota, quota); return nil, nil })
	s.log.DebugContext(ctx, "quota extended", "quota", quota)
	return nil
}

// Hangup ends a dialog: the one this node runs, the owner's through its queue, or, when the owner
// is gone (its queue vanished with it), from the stored state. viaNodeQueue says the request came
// on this node's own queue, which is never forwarded again. reason (empty or balance_exhausted) is
// reported in the dialog's end.
func (s *Service) Hangup(ctx context.Context, callID, reason string, viaNodeQueue bool) error {
	ctx = telemetry.WithCallID(ctx, callID)
	if err := ValidateHangupReason(reason); err != nil {
		return err
	}
	found, err := s.phone.Hangup(ctx, callID, reason)
	if found {
		return err
	}
	d, err := s.get(ctx, callID)
	if err != nil {
		return err
	}
	if !d.State.Live() {
		return nil
	}
	ctx = telemetry.WithCustomerID(ctx, d.CustomerID)
	if d.NodeID != s.nodeID && !viaNodeQueue && s.forward != nil {
		err := s.forward.HangupReason(ctx, d.NodeID, callID, reason)
		if !apierr.HasReason(err, apierr.ReasonServiceUnavailable) {
			return err
		}
		s.log.WarnContext(ctx, "owner node is gone; ending its dialog from the stored state", "owner", d.NodeID)
	}
	return s.takeOver(ctx, d, reason)
}

// takeOver ends a dialog no process runs any more. What is known of its end is recorded, and no
// more: a peer that says it has no such dialog hung up while nobody listened (by remote), a peer
// that does not answer may have too; either way the call is known alive only until its node's
// last heartbeat, and that is its end time. Only a peer that accepts our BYE or CANCEL was still
// in the call, which then ends now, by us, for reason (empty or balance_exhausted).
func (s *Service) takeOver(ctx context.Context, d *Dialog, reason string) error {
	e, err := s.phone.EndStateless(ctx, *d)
	e.At = s.now()
	if err != nil || e.By == callapi.HangupByRemote {
		if err != nil {
			s.log.WarnContext(ctx, "ending an orphaned dialog over SIP failed; recording it ended", "error", err)
		}
		alive, aerr := s.ownerAlive(ctx, d.NodeID)
		if aerr != nil {
			s.log.WarnContext(ctx, "reading when the dialog's node was last alive failed; ending it now", "error", aerr)
		}
		e.At = lastKnownAlive(d, alive, e.At)
	}
	if e.By == "" {
		e.By = callapi.HangupByLocal
	}
	if e.By == callapi.HangupByLocal {
		e.Reason = reason
	}
	s.log.InfoContext(ctx, "ending an orphaned dialog", "by", e.By, "sip_code", e.SIPCode, "at", e.At)
	_, err = s.store.Update(ctx, d.CallID, func(cur *Dialog) ([]Emitted, error) {
		return cur.Ended(e.At, e), nil
	})
	if err != nil {
		return fmt.Errorf("record end of %s: %w", d.CallID, err)
	}
	s.relay.Kick()
	return nil
}

// RemoteBye takes a BYE that arrived at time at for an answered dialog that no process runs (its
// node died, and this is that node restarted or another one at its address): the peer hung up,
// and that is recorded by remote, at the time the BYE was sent. Over UDP (listening is when this
// node started listening, zero over TCP) the BYE may be a resend of one the dead node never
// answered; its sending time is then worked out from RFC 3261's resend schedule (ResendOrigin).
// It reports whether it knew the dialog (then the BYE is answered 200, else 481).
func (s *Service) RemoteBye(ctx context.Context, sipCallID string, at, listening time.Time) bool {
	if s.index == nil {
		return false
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second) // the peer waits for our answer
	defer cancel()
	id, err := s.index.CallIDBySIP(lctx, sipCallID)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			s.log.WarnContext(ctx, "looking up the dialog of a BYE failed", "sip_call_id", sipCallID, "error", err)
		}
		return false
	}
	d, err := s.store.Get(lctx, id)
	if err != nil || d.State != StateAnswered {
		return false
	}
	ctx = telemetry.WithCallID(telemetry.WithCustomerID(ctx, d.CustomerID), id)
	sent := at
	if !listening.IsZero() {
		alive, err := s.ownerAlive(lctx, d.NodeID)
		if err != nil {
			s.log.WarnContext(ctx, "reading when the dialog's node was last alive failed", "error", err)
		}
		sent = ResendOrigin(at, listening, lastKnownAlive(d, alive, at))
	}
	at = sent
	s.log.InfoContext(ctx, "BYE for a dialog no process runs: the peer hung up", "owner", d.NodeID, "at", at)
	s.enqueue(ctx, id, func(cur *Dialog) ([]Emitted, error) {
		return cur.Ended(at, End{SIPCode: 200, By: callapi.HangupByRemote}), nil
	})
	return true
}

// resendOffsets are when a UDP client transaction sends a non-INVITE request, from its first
// sending: T1 = 0.5 s doubling up to T2 = 4 s, until timer F (64·T1 = 32 s) (RFC 3261 §17.1.2.2).
var resendOffsets = []time.Duration{0, 500 * time.Millisecond, 1500 * time.Millisecond, 3500 * time.Millisecond,
	7500 * time.Millisecond, 11500 * time.Millisecond, 15500 * time.Millisecond, 19500 * time.Millisecond,
	23500 * time.Millisecond, 27500 * time.Millisecond, 31500 * time.Millisecond}

// ResendOrigin is when a request that arrived at time arrival over UDP was first sent, as far as
// can be told: it may be the k-th sending of a request first sent at arrival − offset k, if its
// previous sending came before listening (else that would have arrived) and not before notBefore
// (the last moment the dialog was known alive). Several k may fit; the smallest is taken (the
// fewest sendings lost: the peer's first sending came just before the node listened). So the
// result is off by at most one resend interval (0.5–4 s) and never later than the arrival; with
// no k fitting, the request is a first sending and arrival is its time.
func ResendOrigin(arrival, listening, notBefore time.Time) time.Time {
	for k := 1; k < len(resendOffsets); k++ {
		t0 := arrival.Add(-resendOffsets[k])
		if t0.Before(notBefore) {
			break
		}
		if t0.Add(resendOffsets[k-1]).Before(listening) {
			return t0
		}
	}
	return arrival
}

// ownerAlive is when the node that ran a dialog no process runs now was last alive: its last
// heartbeat, or for this node's own, the last heartbeat of its previous run.
func (s *Service) ownerAlive(ctx context.Context, nodeID string) (time.Time, error) {
	if nodeID == s.nodeID {
		return s.prevAlive, nil
	}
	return s.store.Alive(ctx, nodeID)
}

// lastKnownAlive is the latest of the dialog's own times and its node's last heartbeat, but no
// later than upTo.
func lastKnownAlive(d *Dialog, heartbeat, upTo time.Time) time.Time {
	last := d.TMCreate
	for _, t := range []time.Time{d.TMRinging, d.TMAnswered, heartbeat} {
		if t.After(last) {
			last = t
		}
	}
	if last.Before(upTo) {
		return last
	}
	return upTo
}

// Get reads a dialog.
func (s *Service) Get(ctx context.Context, callID string) (rtcapi.Dialog, error) {
	d, err := s.get(ctx, callID)
	if err != nil {
		return rtcapi.Dialog{}, err
	}
	return d.Info(), nil
}

func (s *Service) get(ctx context.Context, callID string) (*Dialog, error) {
	d, err := s.store.Get(ctx, callID)
	if errors.Is(err, ErrNotFound) {
		return nil, apierr.Newf(apierr.NotFound, rtcapi.ErrReasonDialogNotFound, "no dialog for call %s", callID)
	}
	return d, err
}

// Reap ends the dialogs a previous run of this node left live (it crashed, or was killed before
// it could end them), so none stays open on the far side nor unfinished for the call manager.
func (s *Service) Reap(ctx context.Context, running func(callID string) bool) (int, error) {
	ids, err := s.store.Live(ctx, s.nodeID)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		if running(id) {
			continue
		}
		d, err := s.store.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return n, err
		}
		if !d.State.Live() {
			continue
		}
		cctx := telemetry.WithCallID(telemetry.WithCustomerID(ctx, d.CustomerID), id)
		if err := s.takeOver(cctx, d, ""); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
