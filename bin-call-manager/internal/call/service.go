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
	// CreateBudget, GateBudget and DialBudget bound a create request, its billing gate phase and
	// each dial (see internal/config).
	CreateBudget time.Duration
	GateBudget   time.Duration
	DialBudget   time.Duration
	// QuotaLead is how long before a call's quota runs out its next slice is asked for;
	// QuotaInterval is how often the renewer looks for due renewals and retries failed ones.
	QuotaLead     time.Duration
	QuotaInterval time.Duration
}

// Deps are what a Service is built from.
type Deps struct {
	Store    Store
	Requests Requests
	Due      DueStore
	Cache    Cache
	Gate     Gate
	RTC      RTC
	// Credit, Enforcer and Renewals run the quota renewals (credit control); see RunRenewer.
	Credit   Credit
	Enforcer Enforcer
	Renewals RenewalStore
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

// Create places one call per destination: validate everything, claim the idempotency key (see
// idempotency.go), pass every call through the billing gate (a refusal releases the others and
// writes nothing), insert the calls with their call.created in one transaction, then dial each. A
// call whose dial fails is ended (failed) at once, so none stays dialing.
//
// The request runs within its budget (Settings.CreateBudget), and ends CreateReplyMargin before
// the caller's deadline (the one the RPC envelope carried) if that is sooner: the gate phase may
// use GateBudget and must leave DialBudget for the dial. A deadline too short for both is refused
// before anything starts. Every error returned means no call was created, except one wrapping
// ErrOutcomeUnknown.
func (s *Service) Create(ctx context.Context, req callapi.CreateRequest) ([]callapi.Call, error) {
	if err := callapi.ValidateCreate(req); err != nil {
		return nil, err
	}
	if err := validKey(req.IdempotencyKey); err != nil {
		return nil, err
	}
	ctx = telemetry.WithCustomerID(ctx, req.CustomerID)
	deadline, err := s.createDeadline(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	s.Log.InfoContext(ctx, "creating calls for customer", "destinations", len(req.Destinations),
		"idempotent", req.IdempotencyKey != "", "budget_ms", time.Until(deadline).Milliseconds())

	ids := make([]string, len(req.Destinations))
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	var owned *Request
	if req.IdempotencyKey != "" && s.Requests != nil {
		res, err := s.claim(ctx, req, ids, deadline)
		switch {
		case errors.Is(err, callapi.ErrOutcomeUnknown):
			return nil, err
		case err != nil:
			s.Metrics.keyed.WithLabelValues("failed").Inc()
			return nil, s.storeUnavailable(ctx, "claiming the idempotency key", err)
		case res.refusal != nil:
			if apierr.HasReason(res.refusal, callapi.ErrReasonIdempotencyKeyReused) {
				s.Metrics.keyed.WithLabelValues("reused").Inc()
			} else {
				s.Metrics.keyed.WithLabelValues("in_use").Inc()
			}
			return nil, res.refusal
		case res.owned == nil:
			return res.replay, nil
		}
		owned, ids = res.owned, res.owned.CallIDs
	}
	calls := s.newCalls(req, ids)
	gateCtx, cancelGate := context.WithDeadline(ctx, s.gateDeadline(deadline))
	defer cancelGate()
	for i, c := range calls {
		if err := s.gate(gateCtx, c); err != nil {
			// A refusal reserved nothing; any other failure may have, so release that call too.
			held := calls[:i]
			if e, ok := apierr.As(err); !ok || e.Status != apierr.PaymentRequired {
				held = calls[:i+1]
			}
			s.giveUp(ctx, owned, held)
			return nil, err
		}
	}
	cancelGate()

	evs, err := s.commit(ctx, owned, calls)
	if err != nil {
		return nil, err
	}
	// The calls exist now: what follows must run to its end even if the caller gives up.
	ctx = context.WithoutCancel(ctx)
	for _, c := range calls {
		s.Log.InfoContext(telemetry.WithCallID(ctx, c.ID), "call created", "destination_type", c.Destination.Type)
		s.Cache.Set(ctx, c)
	}
	s.afterCommit(ctx, evs)
	if owned != nil {
		s.Metrics.keyed.WithLabelValues("created").Inc()
	}

	dialBy := earlier(time.Now().Add(s.Settings.DialBudget), deadline)
	out := make([]callapi.Call, len(calls))
	var wg sync.WaitGroup
	for i, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.dial(telemetry.WithCallID(ctx, c.ID), c, dialBy).Call
		}()
	}
	wg.Wait()
	return out, nil
}

// createDeadline is when a create must be done: its budget, or CreateReplyMargin before the
// caller's deadline if that is sooner. It refuses a deadline that leaves less than the gate and
// the dial budgets.
func (s *Service) createDeadline(ctx context.Context) (time.Time, error) {
	now := time.Now()
	deadline := now.Add(s.Settings.CreateBudget)
	if caller, ok := ctx.Deadline(); ok {
		deadline = earlier(deadline, caller.Add(-callapi.CreateReplyMargin))
	}
	if need := s.Settings.GateBudget + s.Settings.DialBudget; deadline.Sub(now) < need {
		return time.Time{}, apierr.Newf(apierr.Unavailable, callapi.ErrReasonDeadlineTooShort,
			"the caller's deadline leaves %s to create calls; the billing gate and the dial need %s", deadline.Sub(now).Round(time.Millisecond), need)
	}
	return deadline, nil
}

// gateDeadline ends the gate phase within GateBudget and early enough to leave DialBudget.
func (s *Service) gateDeadline(deadline time.Time) time.Time {
	return earlier(time.Now().Add(s.Settings.GateBudget), deadline.Add(-s.Settings.DialBudget))
}

// newCalls makes the calls of a request, with the given ids, in status dialing.
func (s *Service) newCalls(req callapi.CreateRequest, ids []string) []*Call {
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
		calls[i] = New(NewParams{ID: ids[i], CustomerID: req.CustomerID, Source: req.Source, Destination: d,
			Metadata: req.Metadata, DialTimeout: dialTimeout, Deadline: deadline, FirstCheck: firstCheck}, now)
	}
	return calls
}

// giveUp undoes an attempt that failed before its calls were committed: it forgets the key's
// Request (so the key is free again), then releases the reservations. If another attempt has
// taken the Request over, or forgetting failed, the reservations are left alone: the Request's
// owner (or the next one) gates the same call ids and uses them, and billing's expiry is the
// backstop.
func (s *Service) giveUp(ctx context.Context, owned *Request, held []*Call) {
	ctx = context.WithoutCancel(ctx)
	if owned != nil {
		s.Metrics.keyed.WithLabelValues("failed").Inc()
		fctx, cancel := s.rpcCtx(ctx)
		ok, err := s.Requests.Forget(fctx, owned.CustomerID, owned.Key, owned.Attempt)
		cancel()
		if err != nil {
			s.Log.WarnContext(ctx, "forgetting the idempotency key of a failed create failed; a retry takes it over when its lease ends", "error", err)
			return
		}
		if !ok {
			s.Log.WarnContext(ctx, "the idempotency key of a failed create was taken over; its reservations stay with the new attempt")
			return
		}
	}
	s.release(ctx, held)
}

// commit writes the calls (and, with a key, marks its Request created) in one transaction. When
// the commit's outcome is unknown (the connection broke at COMMIT), the Request tells which it
// was; without a key, a failed commit is taken as not made.
func (s *Service) commit(ctx context.Context, owned *Request, calls []*Call) ([]Event, error) {
	if owned == nil {
		evs, err := s.Store.Create(ctx, calls)
		if err != nil {
			s.release(ctx, calls)
			return nil, fmt.Errorf("insert calls: %w", err)
		}
		return evs, nil
	}
	evs, err := s.Requests.Commit(ctx, owned.CustomerID, owned.Key, owned.Attempt, calls)
	if err == nil {
		return evs, nil
	}
	if errors.Is(err, ErrAttemptLost) {
		// Our lease ran out and another attempt owns the call ids (and their reservations) now.
		s.Metrics.keyed.WithLabelValues("in_use").Inc()
		return nil, errKeyInUse(time.Second)
	}
	lctx, cancel := s.rpcCtx(context.WithoutCancel(ctx))
	defer cancel()
	cur, lerr := s.Requests.Lookup(lctx, owned.CustomerID, owned.Key)
	switch {
	case lerr == nil && cur.Attempt == owned.Attempt && cur.State == RequestCreated:
		s.Log.WarnContext(ctx, "the commit of the calls reported an error but was made", "error", err)
		for _, c := range calls {
			c.TakeEvents() // the relay publishes them from the outbox
		}
		return nil, nil
	case lerr == nil && cur.Attempt == owned.Attempt:
		s.giveUp(ctx, owned, calls)
		return nil, s.storeUnavailable(ctx, "inserting the calls", err)
	case lerr == nil || errors.Is(lerr, ErrNotFound):
		return nil, errKeyInUse(time.Second)
	}
	s.Log.ErrorContext(ctx, "whether the calls were committed is unknown; a retry with the same key will tell", "error", err, "lookup_error", lerr)
	return nil, errOutcomeUnknown("whether the calls were created is unknown; retry with the same idempotency key")
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// storeUnavailable logs a store failure before any call was committed and returns its typed
// answer.
func (s *Service) storeUnavailable(ctx context.Context, what string, err error) error {
	s.Log.WarnContext(ctx, what+" failed; nothing was created", "error", err)
	return apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "the call store is unavailable; nothing was created")
}

// gate passes the call through billing's balance gate and records the quota (talk time) granted.
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
	c.Quota = resp.Quota
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

// dial asks rtc to dial the call, waiting for its answer until by, and records the owning node. If rtc cannot be reached or
// refuses, the call is ended as failed.
func (s *Service) dial(ctx context.Context, c *Call, by time.Time) *Call {
	dctx, cancel := context.WithDeadline(ctx, by)
	resp, err := s.RTC.Dial(dctx, rtcapi.DialRequest{CallID: c.ID, CustomerID: c.CustomerID, Source: c.Source,
		Destination: c.Destination, DialTimeout: c.DialTimeout, MaxDuration: int(s.Settings.MaxDuration / time.Second), Quota: c.Quota})
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
