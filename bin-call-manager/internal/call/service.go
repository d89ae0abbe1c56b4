package call

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/telemetry"
)

// Store keeps calls durably. Create and Update write the calls' recorded events in the same
// transaction as the rows.
type Store interface {
	// Create inserts new calls and their events, all or nothing, and returns the events written.
	Create(ctx context.Context, calls []*Call) ([]Event, error)
	// Get reads a call, deleted or not; ErrNotFound if there is none.
	Get(ctx context.Context, id string) (*Call, error)
	// Update runs fn on the call locked for update and writes what it changed with its events.
	// fn returning ErrUnchanged writes nothing and Update returns the call as it is; any other
	// error is returned as is.
	Update(ctx context.Context, id string, fn func(*Call) error) (*Call, []Event, error)
	// List reads the calls matching f, newest first.
	List(ctx context.Context, f Filter) ([]*Call, error)
}

// Cache holds call:<id> copies. It is a cache: it never fails a request, and a write it could
// not make must not leave a stale copy behind for later reads.
type Cache interface {
	Get(ctx context.Context, id string) (*Call, bool)
	Set(ctx context.Context, c *Call)
}

// Gate is the billing manager's balance gate.
type Gate interface {
	Gate(ctx context.Context, req billingapi.GateRequest) (billingapi.GateResponse, error)
	Release(ctx context.Context, callID string) error
}

// RTC dials and hangs up through the rtc manager.
type RTC interface {
	Dial(ctx context.Context, req rtcapi.DialRequest) (rtcapi.DialResponse, error)
	Hangup(ctx context.Context, nodeID, callID string) error
	GetDialog(ctx context.Context, nodeID, callID string) (rtcapi.Dialog, error)
}

// Kicker starts an outbox relay pass (after a commit that added events).
type Kicker interface{ Kick() }

// Settings tune the lifecycle; see internal/config for their meaning.
type Settings struct {
	DialTimeout   time.Duration
	MaxDuration   time.Duration
	ReaperGrace   time.Duration
	ProbeInterval time.Duration
	RPCTimeout    time.Duration
}

// Deps are what a Service is built from.
type Deps struct {
	Store    Store
	Due      DueStore
	Cache    Cache
	Gate     Gate
	RTC      RTC
	Relay    Kicker
	Log      *slog.Logger
	Metrics  *Metrics
	Settings Settings
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Service is the call manager's use cases.
type Service struct {
	Deps
}

// NewService makes a Service.
func NewService(d Deps) *Service {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Metrics == nil {
		d.Metrics = NewMetrics(nil)
	}
	return &Service{Deps: d}
}

func (s *Service) now() time.Time { return s.Now().UTC() }

// rpcCtx bounds one RPC to billing or rtc.
func (s *Service) rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.Settings.RPCTimeout)
}

// Create places one call per destination: validate everything, pass every call through the
// billing gate (a refusal releases the others and writes nothing), insert the calls with their
// call.created in one transaction, then dial each. A call whose dial fails is ended (failed) at
// once, so none stays dialing.
func (s *Service) Create(ctx context.Context, req callapi.CreateRequest) ([]callapi.Call, error) {
	if err := callapi.ValidateCreate(req); err != nil {
		return nil, err
	}
	ctx = telemetry.WithCustomerID(ctx, req.CustomerID)
	s.Log.InfoContext(ctx, "creating calls for customer", "destinations", len(req.Destinations))

	dialTimeout := s.Settings.DialTimeout
	if req.Timeout > 0 {
		dialTimeout = time.Duration(req.Timeout) * time.Second
	}
	now := s.now()
	deadline := now.Add(dialTimeout + s.Settings.MaxDuration + s.Settings.ReaperGrace)
	firstCheck := now.Add(s.Settings.ProbeInterval)
	if firstCheck.After(deadline) {
		firstCheck = deadline
	}
	calls := make([]*Call, len(req.Destinations))
	for i, d := range req.Destinations {
		calls[i] = New(NewParams{ID: uuid.NewString(), CustomerID: req.CustomerID, Source: req.Source, Destination: d,
			Metadata: req.Metadata, DialTimeout: dialTimeout, Deadline: deadline, FirstCheck: firstCheck}, now)
	}

	for i, c := range calls {
		if err := s.gate(ctx, c); err != nil {
			// A refusal reserved nothing; any other failure may have, so release that call too.
			held := calls[:i]
			if e, ok := apierr.As(err); !ok || e.Status != apierr.PaymentRequired {
				held = calls[:i+1]
			}
			s.release(ctx, held)
			return nil, err
		}
	}

	evs, err := s.Store.Create(ctx, calls)
	if err != nil {
		s.release(ctx, calls)
		return nil, fmt.Errorf("insert calls: %w", err)
	}
	// The calls exist now: what follows must run to its end even if the caller gives up.
	ctx = context.WithoutCancel(ctx)
	for _, c := range calls {
		s.Log.InfoContext(telemetry.WithCallID(ctx, c.ID), "call created", "destination_type", c.Destination.Type)
		s.Cache.Set(ctx, c)
	}
	s.afterCommit(ctx, evs)

	out := make([]callapi.Call, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.dial(telemetry.WithCallID(ctx, c.ID), c).Call
		}()
	}
	wg.Wait()
	return out, nil
}

func (s *Service) gate(ctx context.Context, c *Call) error {
	gctx, cancel := s.rpcCtx(telemetry.WithCallID(ctx, c.ID))
	defer cancel()
	resp, err := s.Gate.Gate(gctx, billingapi.GateRequest{CustomerID: c.CustomerID, CallID: c.ID, DestinationType: c.Destination.Type})
	if err != nil {
		return fmt.Errorf("billing gate: %w", err)
	}
	if !resp.Allowed {
		return apierr.New(apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance, "the balance does not allow this call")
	}
	return nil
}

// release drops the reservations of calls that will not be placed; billing's own expiry is the
// backstop if this fails.
func (s *Service) release(ctx context.Context, calls []*Call) {
	ctx = context.WithoutCancel(ctx)
	for _, c := range calls {
		cctx := telemetry.WithCallID(ctx, c.ID)
		rctx, cancel := s.rpcCtx(cctx)
		if err := s.Gate.Release(rctx, c.ID); err != nil {
			s.Log.WarnContext(cctx, "releasing the billing reservation of a call not placed failed", "error", err)
		}
		cancel()
	}
}

// dial asks rtc to dial the call and records the owning node. If rtc cannot be reached or
// refuses, the call is ended as failed.
func (s *Service) dial(ctx context.Context, c *Call) *Call {
	dctx, cancel := s.rpcCtx(ctx)
	resp, err := s.RTC.Dial(dctx, rtcapi.DialRequest{CallID: c.ID, CustomerID: c.CustomerID, Source: c.Source,
		Destination: c.Destination, DialTimeout: c.DialTimeout, MaxDuration: int(s.Settings.MaxDuration / time.Second)})
	cancel()
	if err != nil {
		s.Log.WarnContext(ctx, "dial failed; ending the call", "error", err)
		if !isRefusal(err) {
			// The request may have reached a node that dials anyway: any node can end it.
			s.tellRTCHangup(ctx, "", c.ID)
		}
		ended, eerr := s.end(ctx, c.ID, Ending{Reason: callapi.ReasonFailed, By: callapi.HangupByLocal, Cause: CauseTemporaryFailure})
		if eerr != nil {
			s.Log.ErrorContext(ctx, "ending a call whose dial failed failed; the reaper will end it", "error", eerr)
			return c
		}
		return ended
	}
	cur, err := s.update(ctx, c.ID, func(cur *Call) error {
		if cur.NodeID == resp.NodeID && cur.SIPCallID == resp.SIPCallID {
			return ErrUnchanged
		}
		if cur.NodeID == "" { // an rtc event may have named it first
			cur.NodeID = resp.NodeID
		}
		cur.SIPCallID = resp.SIPCallID
		return nil
	})
	if err != nil {
		s.Log.ErrorContext(ctx, "recording the rtc node of a dialled call failed; the reaper will check on it", "error", err, "node_id", resp.NodeID)
		return c
	}
	s.Log.InfoContext(ctx, "call dialled", "node_id", resp.NodeID, "sip_call_id", resp.SIPCallID)
	// A hang-up that raced the dial (or a failure we ended it for) could not reach the dialog
	// then: reach it now.
	if cur.Status == callapi.StatusCanceling || cur.Status == callapi.StatusTerminating ||
		(cur.Status == callapi.StatusHangup && cur.HangupBy == callapi.HangupByLocal && cur.HangupReason == callapi.ReasonFailed) {
		s.tellRTCHangup(ctx, resp.NodeID, c.ID)
	}
	return cur
}

// isRefusal reports whether an rtc error is rtc's own answer rather than a transport failure or
// a timeout, after which the request may still have been acted upon.
func isRefusal(err error) bool {
	e, ok := apierr.As(err)
	return ok && e.Reason != apierr.ReasonRequestTimeout && e.Reason != apierr.ReasonServiceUnavailable
}

// tellRTCHangup asks rtc to end a dialog, best effort (logging a failure).
func (s *Service) tellRTCHangup(ctx context.Context, nodeID, id string) {
	hctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	if err := s.RTC.Hangup(hctx, nodeID, id); err != nil && !apierr.HasReason(err, rtcapi.ErrReasonDialogNotFound) {
		s.Log.WarnContext(ctx, "asking rtc to end the dialog failed", "node_id", nodeID, "error", err)
	}
}

// Get reads a call through the cache.
func (s *Service) Get(ctx context.Context, customerID, id string) (callapi.Call, error) {
	if _, err := uuid.Parse(id); err != nil {
		return callapi.Call{}, ErrNotFound
	}
	c, ok := s.Cache.Get(ctx, id)
	if !ok {
		var err error
		if c, err = s.Store.Get(ctx, id); err != nil {
			return callapi.Call{}, err
		}
		s.Cache.Set(ctx, c)
	}
	if !c.VisibleTo(customerID) {
		return callapi.Call{}, ErrNotFound
	}
	return c.Call, nil
}

// Hangup asks for a live call to be hung up: it moves to canceling or terminating (call.updated)
// and rtc is told; rtc's ended event ends it. If rtc cannot be reached or does not know the
// dialog, the call is ended here as failed. Hanging up a call already ended is ErrStateInvalid.
func (s *Service) Hangup(ctx context.Context, customerID, id string) (callapi.Call, error) {
	c, err := s.hangup(ctx, customerID, id)
	if err != nil {
		return callapi.Call{}, err
	}
	return c.Call, nil
}

func (s *Service) hangup(ctx context.Context, customerID, id string) (*Call, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, ErrNotFound
	}
	ctx = telemetry.WithCallID(ctx, id)
	c, err := s.update(ctx, id, func(c *Call) error {
		if !c.VisibleTo(customerID) {
			return ErrNotFound
		}
		changed, err := c.RequestHangup(s.now())
		if err != nil {
			return err
		}
		if !changed {
			return ErrUnchanged // already on its way out: tell rtc again below
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.Log.InfoContext(ctx, "hanging up call", "status", c.Status, "node_id", c.NodeID)
	return s.hangupRTC(context.WithoutCancel(ctx), c), nil
}

// hangupRTC tells the owning node (or, failing that, any node) to end the dialog; if neither can,
// the call is ended here as failed.
func (s *Service) hangupRTC(ctx context.Context, c *Call) *Call {
	hctx, cancel := s.rpcCtx(ctx)
	err := s.RTC.Hangup(hctx, c.NodeID, c.ID)
	cancel()
	if err != nil && c.NodeID != "" {
		s.Log.WarnContext(ctx, "the owning rtc node did not hang up; asking any node", "node_id", c.NodeID, "error", err)
		hctx, cancel := s.rpcCtx(ctx)
		err = s.RTC.Hangup(hctx, "", c.ID)
		cancel()
	}
	if err == nil {
		return c
	}
	s.Log.WarnContext(ctx, "rtc could not hang up the call; ending it here", "error", err)
	ended, eerr := s.end(ctx, c.ID, Ending{Reason: callapi.ReasonFailed, By: callapi.HangupByLocal, Cause: CauseTemporaryFailure})
	if eerr != nil {
		s.Log.ErrorContext(ctx, "ending a call rtc could not hang up failed; the reaper will end it", "error", eerr)
		return c
	}
	return ended
}

// Delete hangs a live call up, then soft-deletes it: it disappears from reads and lists, while
// rtc's ended event still ends it (so it still gets its call.ended).
func (s *Service) Delete(ctx context.Context, customerID, id string) (callapi.Call, error) {
	if _, err := s.hangup(ctx, customerID, id); err != nil && !errors.Is(err, ErrStateInvalid) {
		return callapi.Call{}, err
	}
	c, err := s.update(telemetry.WithCallID(ctx, id), id, func(c *Call) error {
		if !c.VisibleTo(customerID) {
			return ErrNotFound
		}
		now := s.now()
		c.TMDelete, c.TMUpdate = &now, now
		return nil
	})
	if err != nil {
		return callapi.Call{}, err
	}
	s.Log.InfoContext(telemetry.WithCallID(ctx, id), "call deleted", "status", c.Status)
	return c.Call, nil
}

// end ends a live call; a call already ended is returned unchanged.
func (s *Service) end(ctx context.Context, id string, e Ending) (*Call, error) {
	return s.update(ctx, id, func(c *Call) error {
		if !c.End(e, s.now()) {
			return ErrUnchanged
		}
		return nil
	})
}

// update runs one store update and, once it is committed, does what follows every change.
func (s *Service) update(ctx context.Context, id string, fn func(*Call) error) (*Call, error) {
	c, evs, err := s.Store.Update(ctx, id, fn)
	if err != nil {
		return nil, err
	}
	s.afterCommit(ctx, evs)
	s.Cache.Set(ctx, c)
	return c, nil
}

// afterCommit wakes the relay for the events just committed, counts and logs them.
func (s *Service) afterCommit(ctx context.Context, evs []Event) {
	if len(evs) == 0 {
		return
	}
	s.Relay.Kick()
	for _, ev := range evs {
		ectx := telemetry.WithCallID(telemetry.WithCustomerID(ctx, ev.Call.CustomerID), ev.Call.ID)
		s.Metrics.observe(ev)
		s.Log.InfoContext(ectx, "publishing "+ev.Type, "event_id", ev.ID, "sequence", ev.Sequence, "status", ev.To)
		if ev.Type == callapi.EventEnded {
			s.Log.InfoContext(ectx, "call ended", "hangup_reason", ev.Call.HangupReason, "hangup_by", ev.Call.HangupBy,
				"hangup_cause", ev.Call.HangupCause, "sip_code", ev.Call.SIPCode, "duration", ev.Call.Duration)
		}
	}
}
