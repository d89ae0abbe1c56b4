package call

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
)

// A create request with an idempotency key runs as an attempt that owns the key's Request:
//
//  1. claim: the Request is inserted (pending) with the ids its calls will have, and a lease
//     ending at the attempt's deadline, before anything else happens. A key already claimed
//     answers the calls of the first request (created), IDEMPOTENCY_KEY_REUSED (another body),
//     or IDEMPOTENCY_KEY_IN_USE (pending, lease running). A pending Request whose lease has
//     passed belongs to an attempt that died or gave up before committing: a new attempt takes it
//     over, fenced by the old attempt id, and keeps its call ids.
//  2. gate: billing reserves per call id, so an attempt that took over gates the same ids and
//     reuses the reservations of the dead one instead of leaking them.
//  3. commit: the calls, their call.created events and the Request turning created are one
//     transaction, which only the attempt named in the Request can make.
//  4. dial: only the attempt that committed dials. A retry never dials.
//
// A definite failure before the commit (a refusal, a dependency down) forgets the Request (fenced)
// and then releases the reservations, so the key is free again and nothing is held.

// RequestState is where a keyed create request is.
type RequestState string

// The states of a Request.
const (
	RequestPending RequestState = "pending" // claimed; its calls are not committed
	RequestCreated RequestState = "created" // its calls are committed
)

// Request is the idempotency record of a create request that carried a key.
type Request struct {
	CustomerID string
	Key        string
	// Hash identifies the request body (without the key).
	Hash    [32]byte
	CallIDs []string
	State   RequestState
	// Attempt is the id of the attempt owning the Request.
	Attempt string
	// TMLease is when another attempt may take over a pending Request.
	TMLease  time.Time
	TMCreate time.Time
}

// Errors of the Requests store.
var (
	// ErrRequestExists: the key already has a Request.
	ErrRequestExists = errors.New("a create request with this idempotency key exists")
	// ErrAttemptLost: the Request is no longer owned by the attempt (taken over, or gone).
	ErrAttemptLost = errors.New("the create request is owned by another attempt")
)

// Requests keeps the idempotency records of create requests, unique per customer and key.
type Requests interface {
	// Claim inserts r as pending. If the key already has a Request, it returns that Request and
	// ErrRequestExists.
	Claim(ctx context.Context, r *Request) (*Request, error)
	// TakeOver makes attempt the owner of the pending Request owned by prev, with a new lease;
	// false if it is no longer pending or owned by prev.
	TakeOver(ctx context.Context, customerID, key, prev, attempt string, lease time.Time) (bool, error)
	// Commit inserts the calls and their events and marks the Request created, in one
	// transaction, if attempt still owns it (ErrAttemptLost otherwise).
	Commit(ctx context.Context, customerID, key, attempt string, calls []*Call) ([]Event, error)
	// Lookup reads a Request; ErrNotFound if there is none.
	Lookup(ctx context.Context, customerID, key string) (*Request, error)
	// Forget deletes the pending Request owned by attempt; false if it is not.
	Forget(ctx context.Context, customerID, key, attempt string) (bool, error)
}

// RequestHash is the hash of a create request without its key: "the same request".
func RequestHash(req callapi.CreateRequest) [32]byte {
	req.IdempotencyKey = ""
	b, _ := json.Marshal(req) // map keys are sorted: the same request always hashes the same
	return sha256.Sum256(b)
}

// validKey checks an idempotency key: printable ASCII, at most callapi.MaxIdempotencyKey bytes.
func validKey(k string) error {
	if len(k) > callapi.MaxIdempotencyKey {
		return apierr.Invalid("idempotency_key", fmt.Sprintf("must be at most %d bytes", callapi.MaxIdempotencyKey))
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return apierr.Invalid("idempotency_key", "must be printable ASCII without spaces")
		}
	}
	return nil
}

// errOutcomeUnknown is the answer when the call manager cannot tell (or show) what a create did.
func errOutcomeUnknown(msg string) error {
	return fmt.Errorf("%w: %w", callapi.ErrOutcomeUnknown, apierr.New(apierr.Internal, callapi.ErrReasonOutcomeUnknown, msg))
}

func errKeyReused() error {
	return apierr.New(apierr.AlreadyExists, callapi.ErrReasonIdempotencyKeyReused,
		"this idempotency key was used with a different request")
}

func errKeyInUse(retryAfter time.Duration) error {
	ms := max(retryAfter.Milliseconds(), 100)
	return apierr.New(apierr.FailedPrecondition, callapi.ErrReasonIdempotencyKeyInUse,
		"a create request with this idempotency key is still running").WithDetails(apierr.Detail{"retry_after_ms": ms})
}

// claimResult is what claiming a key decided: run the attempt (owned set) or answer at once.
type claimResult struct {
	owned   *Request       // this attempt owns the Request: go on with its call ids
	replay  []callapi.Call // the calls of the first request
	refusal error          // REUSED or IN_USE
}

// claim claims the key of req for a new attempt with the given call ids, or finds what the key
// already stands for.
func (s *Service) claim(ctx context.Context, req callapi.CreateRequest, ids []string, lease time.Time) (claimResult, error) {
	hash := RequestHash(req)
	attempt := uuid.NewString()
	for range 5 {
		r := &Request{CustomerID: req.CustomerID, Key: req.IdempotencyKey, Hash: hash, CallIDs: ids,
			State: RequestPending, Attempt: attempt, TMLease: lease, TMCreate: s.now()}
		prev, err := s.Requests.Claim(ctx, r)
		if err == nil {
			return claimResult{owned: r}, nil
		}
		if !errors.Is(err, ErrRequestExists) {
			return claimResult{}, err
		}
		if prev.Hash != hash || len(prev.CallIDs) != len(req.Destinations) {
			return claimResult{refusal: errKeyReused()}, nil
		}
		switch {
		case prev.State == RequestCreated:
			calls, err := s.replay(ctx, prev.CallIDs)
			return claimResult{replay: calls}, err
		case time.Now().Before(prev.TMLease):
			return claimResult{refusal: errKeyInUse(time.Until(prev.TMLease))}, nil
		}
		// The attempt owning it died or gave up before committing: take over, with its call ids.
		ok, err := s.Requests.TakeOver(ctx, req.CustomerID, req.IdempotencyKey, prev.Attempt, attempt, lease)
		if err != nil {
			return claimResult{}, err
		}
		if ok {
			s.Log.WarnContext(ctx, "taking over a create request whose attempt did not finish", "previous_attempt", prev.Attempt)
			s.Metrics.keyed.WithLabelValues("taken_over").Inc()
			prev.Attempt, prev.TMLease = attempt, lease
			return claimResult{owned: prev}, nil
		}
		// It moved in between (committed, forgotten or taken by another): look again.
	}
	return claimResult{refusal: errKeyInUse(time.Second)}, nil
}

// replay reads the calls of a request already created, as they are now.
func (s *Service) replay(ctx context.Context, ids []string) ([]callapi.Call, error) {
	out := make([]callapi.Call, len(ids))
	for i, id := range ids {
		c, err := s.Store.Get(ctx, id)
		if err != nil {
			s.Log.ErrorContext(ctx, "reading the calls of a replayed create request failed", "call_id", id, "error", err)
			return nil, errOutcomeUnknown("the calls of this idempotency key exist but cannot be read now; retry with the same key")
		}
		out[i] = c.Call
	}
	s.Metrics.keyed.WithLabelValues("replayed").Inc()
	s.Log.InfoContext(ctx, "idempotent replay of a create request; nothing dialled", "calls", len(ids))
	return out, nil
}

// RequestRetention is how long the record of a keyed create request is kept: longer than the api
// manager keeps its answers (24 h), so a key the api still honours is never forgotten here.
const RequestRetention = 25 * time.Hour

// RequestPurger deletes old request records.
type RequestPurger interface {
	// PurgeRequests deletes at most limit records created before before and says how many.
	PurgeRequests(ctx context.Context, before time.Time, limit int) (int, error)
}

// RunRequestPurge deletes request records older than RequestRetention every interval, in
// batches, until ctx ends. A pending record that old belongs to an attempt long dead (a lease is
// at most callapi.MaxCreateBudget); billing's reservation expiry has freed what it held.
func (s *Service) RunRequestPurge(ctx context.Context, p RequestPurger, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			n, err := p.PurgeRequests(ctx, time.Now().Add(-RequestRetention), 1000)
			if err != nil {
				if ctx.Err() == nil {
					s.Log.WarnContext(ctx, "purging old idempotency records failed; retrying later", "error", err)
				}
				break
			}
			if n < 1000 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
