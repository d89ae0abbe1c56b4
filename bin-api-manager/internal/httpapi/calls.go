package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"voipbin/bin-api-manager/internal/cache"
	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/netpolicy"
	"voipbin/pkg/telemetry"
)

// CallManager is what the call routes need of callapi.Client.
type CallManager interface {
	Create(ctx context.Context, req callapi.CreateRequest) ([]callapi.Call, error)
	List(ctx context.Context, q callapi.ListQuery) (callapi.ListResponse, error)
	Get(ctx context.Context, customerID, id string) (callapi.Call, error)
	Hangup(ctx context.Context, customerID, id string) (callapi.Call, error)
	Delete(ctx context.Context, customerID, id string) (callapi.Call, error)
}

// calls serves /v1.0/calls.
type calls struct {
	*api
	mgr       CallManager
	idem      IdempotencyStore
	sipPolicy AddressChecker
	// timeout is how long a create waits for the call manager (longer than its whole budget).
	timeout time.Duration
}

func sipPolicy(c AddressChecker) AddressChecker {
	if c == nil {
		return netpolicy.New(netpolicy.Options{})
	}
	return c
}

// checkSIPDestinations refuses sip destinations whose host is a literal address the policy
// refuses (loopback, private, … unless RTC_SIP_ALLOWED_NETWORKS allows them). Names pass here:
// the rtc manager resolves and checks them at dial time.
func (c *calls) checkSIPDestinations(req callapi.CreateRequest) error {
	for i, d := range req.Destinations {
		if d.Type != callapi.AddressSIP {
			continue
		}
		_, hostport, _ := callapi.SplitSIPTarget(d.Target)
		host := hostport
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			host = h
		}
		ip, ok := netpolicy.ParseHost(host)
		if !ok {
			continue
		}
		if err := c.sipPolicy.Check(ip); err != nil {
			return apierr.Invalid(fmt.Sprintf("destinations[%d].target", i),
				"is not an allowed SIP destination: "+strings.TrimPrefix(err.Error(), netpolicy.ErrForbidden.Error()+": ")+
					" (the operator may allow ranges with RTC_SIP_ALLOWED_NETWORKS)")
		}
	}
	return nil
}

func (c *calls) Routes() chi.Router {
	r := chi.NewRouter()
	r.Post("/", c.handle(c.create))
	r.Get("/", c.handle(c.list))
	r.Get("/{id}", c.handle(c.get))
	r.Patch("/{id}", c.handle(c.patch))
	r.Delete("/{id}", c.handle(c.delete))
	r.Post("/{id}/hangup", c.handle(c.hangup))
	return r
}

func errCallNotFound() error {
	return apierr.New(apierr.NotFound, callapi.ErrReasonCallNotFound, "call not found")
}

type createCallBody struct {
	CustomerID   string            `json:"customer_id"`
	Source       *callapi.Address  `json:"source"`
	Destinations []callapi.Address `json:"destinations"`
	Metadata     map[string]any    `json:"metadata"`
	Timeout      int               `json:"timeout"`
}

func (b createCallBody) request(id identity.Identity) (callapi.CreateRequest, error) {
	customer := b.CustomerID
	switch {
	case id.Superadmin() && customer == "":
		return callapi.CreateRequest{}, apierr.Invalid("customer_id", "is required when a superadmin places a call")
	case !id.Superadmin() && customer != "" && customer != id.CustomerID:
		return callapi.CreateRequest{}, apierr.New(apierr.PermissionDenied, apierr.ReasonPermissionDenied, "cannot place calls for another customer")
	case !id.Superadmin():
		customer = id.CustomerID
	}
	customer, ok := canonicalUUID(customer)
	if !ok {
		return callapi.CreateRequest{}, apierr.Invalid("customer_id", "is not a UUID")
	}
	if b.Source == nil {
		return callapi.CreateRequest{}, apierr.Invalid("source", "is required")
	}
	req := callapi.CreateRequest{CustomerID: customer, Source: *b.Source, Destinations: b.Destinations,
		Metadata: b.Metadata, Timeout: b.Timeout}
	// The same checks as the call manager's (one definition in callapi): nothing a customer sets
	// can put a control character into a SIP message.
	if err := callapi.ValidateCreate(req); err != nil {
		return callapi.CreateRequest{}, err
	}
	return req, nil
}

var idempotencyKey = regexp.MustCompile(`^[\x21-\x7e]{1,255}$`)

func (c *calls) create(w http.ResponseWriter, r *http.Request) error {
	id := caller(r)
	if err := requireRead(id); err != nil {
		return err
	}
	var in createCallBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	req, err := in.request(id)
	if err != nil {
		return err
	}
	if err := c.checkSIPDestinations(req); err != nil {
		return err
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return c.place(w, r, req)
	}
	if !idempotencyKey.MatchString(key) {
		return apierr.Invalid("Idempotency-Key", "must be 1-255 printable ASCII characters")
	}
	// Keys are per caller: one customer's key never answers another's request.
	scope := "customer:" + id.CustomerID
	if id.Superadmin() {
		scope = "user:" + id.UserID
	}
	scoped := scope + ":" + key
	canonical, _ := json.Marshal(req)
	sum := sha256.Sum256(canonical)
	hash := hex.EncodeToString(sum[:])
	rec, claim, err := c.idem.Begin(r.Context(), scoped, hash, min(c.timeout+time.Second, maxIdempotencyLease))
	if err != nil {
		c.log.WarnContext(r.Context(), "idempotency store unavailable", "error", err)
		return apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "idempotency keys cannot be honoured right now; retry later")
	}
	if claim == nil {
		switch {
		case rec.Hash != hash:
			return apierr.New(apierr.FailedPrecondition, ReasonIdempotencyKeyReused, "this Idempotency-Key was used with a different request body")
		case rec.Pending:
			return errKeyInUse(w, time.Until(rec.LeaseUntil))
		}
		return c.replay(w, r, rec)
	}
	// The call manager keeps the key too (per customer), so even a request whose outcome this
	// store lost can never place the calls twice.
	req.IdempotencyKey = scoped
	ctx, cancel := context.WithTimeout(r.Context(), c.timeout)
	defer cancel()
	calls, err := c.mgr.Create(ctx, req)
	ctx = context.WithoutCancel(r.Context())
	switch {
	case err == nil:
		body, _ := json.Marshal(callapi.CreateResponse{Calls: calls})
		stood, ferr := c.idem.Finish(ctx, claim, cache.Record{Hash: hash, Status: http.StatusCreated, Body: body})
		if ferr != nil {
			c.log.WarnContext(ctx, "idempotent answer not stored; a retry asks the call manager again", "error", ferr)
		} else if string(stood.Body) != string(body) {
			return c.replay(w, r, stood) // another request with the key stored the first answer
		}
		c.logPlaced(r, calls)
		writeRaw(w, http.StatusCreated, body)
		return nil
	case apierr.HasReason(err, callapi.ErrReasonIdempotencyKeyInUse):
		// The first request with the key is still running in the call manager: its outcome
		// is not known yet.
		c.yield(ctx, claim)
		return errKeyInUse(w, retryAfter(err))
	case callapi.CreatedNothing(err):
		// A definite failure that created nothing: a retry may start afresh.
		if rerr := c.idem.Release(ctx, claim); rerr != nil {
			c.log.WarnContext(ctx, "idempotency key not released; retries ask the call manager, which knows nothing was created", "error", rerr)
		}
		return err
	}
	// The outcome is unknown (no answer in time, or the call manager could not tell): the key
	// stays taken; the next request with it asks the call manager, which knows.
	c.yield(ctx, claim)
	if claim.Resolving {
		c.log.WarnContext(ctx, "the outcome of an earlier request with this Idempotency-Key is still unknown", "error", err)
		return errKeyInUse(w, time.Second)
	}
	return err
}

// maxIdempotencyLease is how long at most a request holds its key in this store alone: a retry
// within it is answered IN_USE here; after it (or once the holder gave up, or its process died) a
// retry asks the call manager, which holds the key for the whole create and knows its outcome.
const maxIdempotencyLease = 2 * time.Second

func (c *calls) yield(ctx context.Context, claim *cache.Claim) {
	if err := c.idem.Yield(ctx, claim); err != nil {
		c.log.WarnContext(ctx, "idempotency key not handed on; it stays in use until its lease ends", "error", err)
	}
}

// replay writes a stored answer.
func (c *calls) replay(w http.ResponseWriter, r *http.Request, rec cache.Record) error {
	c.m.replays.Inc()
	c.log.InfoContext(r.Context(), "idempotent replay", "status", rec.Status)
	w.Header().Set("Idempotent-Replayed", "true")
	writeRaw(w, rec.Status, rec.Body)
	return nil
}

// errKeyInUse is 409 IDEMPOTENCY_KEY_IN_USE with Retry-After (whole seconds, at least 1).
func errKeyInUse(w http.ResponseWriter, after time.Duration) error {
	secs := max(int((after+time.Second-1)/time.Second), 1)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	return apierr.New(apierr.FailedPrecondition, ReasonIdempotencyInFlight,
		"a request with this Idempotency-Key is still being served; retry later for its outcome")
}

// retryAfter is the call manager's hint in an IDEMPOTENCY_KEY_IN_USE answer (1 s without one).
func retryAfter(err error) time.Duration {
	if e, ok := apierr.As(err); ok {
		for _, d := range e.Details {
			if ms, ok := d["retry_after_ms"].(float64); ok && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	return time.Second
}

func (c *calls) place(w http.ResponseWriter, r *http.Request, req callapi.CreateRequest) error {
	ctx, cancel := context.WithTimeout(r.Context(), c.timeout)
	defer cancel()
	calls, err := c.mgr.Create(ctx, req)
	if apierr.HasReason(err, callapi.ErrReasonIdempotencyKeyInUse) {
		// The call manager met this RPC before (a redelivery after it crashed): nothing new.
		w.Header().Set("Retry-After", "1")
		return apierr.New(apierr.Unavailable, apierr.ReasonServiceUnavailable, "the call manager is recovering; retry")
	}
	if err != nil {
		return err
	}
	c.logPlaced(r, calls)
	writeJSON(w, http.StatusCreated, callapi.CreateResponse{Calls: calls})
	return nil
}

func (c *calls) logPlaced(r *http.Request, calls []callapi.Call) {
	for _, call := range calls {
		c.log.InfoContext(telemetry.WithCallID(r.Context(), call.ID), "call placed", "status", call.Status,
			"destination_type", call.Destination.Type)
	}
}

var (
	callStatuses = map[string]bool{"dialing": true, "ringing": true, "progressing": true, "terminating": true, "canceling": true, "hangup": true}
	directions   = map[string]bool{callapi.DirectionOutgoing: true, callapi.DirectionIncoming: true}
)

func (c *calls) list(w http.ResponseWriter, r *http.Request) error {
	id := caller(r)
	if err := requireRead(id); err != nil {
		return err
	}
	q := r.URL.Query()
	var lq callapi.ListQuery
	var err error
	if lq.PageSize, err = queryInt(r, "page_size", 1, 100); err != nil {
		return err
	}
	if lq.Limit, err = queryInt(r, "limit", 1, 100); err != nil {
		return err
	}
	if lq.Offset, err = queryInt(r, "offset", 0, 1_000_000); err != nil {
		return err
	}
	lq.PageToken = q.Get("page_token")
	if len(lq.PageToken) > 512 {
		return apierr.Invalid("page_token", "is not a page token returned by this API")
	}
	if lq.PageToken != "" && (q.Has("offset") || q.Has("limit")) {
		return apierr.Invalid("page_token", "cannot be combined with limit/offset")
	}
	if lq.Status = q.Get("status"); lq.Status != "" && !callStatuses[lq.Status] {
		return apierr.Invalid("status", fmt.Sprintf("%q is not a call status", lq.Status))
	}
	if lq.Direction = q.Get("direction"); lq.Direction != "" && !directions[lq.Direction] {
		return apierr.Invalid("direction", `must be "outgoing" or "incoming"`)
	}
	requested, err := queryUUID(r, "customer_id")
	if err != nil {
		return err
	}
	scope, ok := id.Scope(requested)
	if !ok { // another customer's calls: as if there were none
		writeJSON(w, http.StatusOK, listJSON[callapi.Call]{Result: []callapi.Call{}})
		return nil
	}
	lq.CustomerID = scope
	res, err := c.mgr.List(r.Context(), lq)
	if err != nil {
		return err
	}
	if res.Result == nil {
		res.Result = []callapi.Call{}
	}
	writeJSON(w, http.StatusOK, listJSON[callapi.Call]{Result: res.Result, NextPageToken: res.NextPageToken})
	return nil
}

// listJSON is a page of a list; next_page_token is "" on the last page.
type listJSON[T any] struct {
	Result        []T    `json:"result"`
	NextPageToken string `json:"next_page_token"`
}

// target resolves the {id} of a single-call route and the customer scope to pass the manager,
// and returns the request with the call id in its ctx (so every log line names the call).
func (c *calls) target(r *http.Request) (rr *http.Request, scope, id string, err error) {
	who := caller(r)
	if err := requireRead(who); err != nil {
		return r, "", "", err
	}
	if id, err = pathID(r, "id"); err != nil {
		return r, "", "", err
	}
	requested, err := queryUUID(r, "customer_id")
	if err != nil {
		return r, "", "", err
	}
	scope, ok := who.Scope(requested)
	if !ok {
		return r, "", "", errCallNotFound()
	}
	return r.WithContext(telemetry.WithCallID(r.Context(), id)), scope, id, nil
}

func (c *calls) get(w http.ResponseWriter, r *http.Request) error {
	r, scope, id, err := c.target(r)
	if err != nil {
		return err
	}
	call, err := c.mgr.Get(r.Context(), scope, id)
	if err != nil {
		return err
	}
	body, err := json.Marshal(call)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "private, no-cache")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	writeRaw(w, http.StatusOK, body)
	return nil
}

// etagMatch is the weak comparison of If-None-Match (RFC 9110 §13.1.2).
func etagMatch(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

type patchCallBody struct {
	Status string `json:"status"`
}

func (c *calls) patch(w http.ResponseWriter, r *http.Request) error {
	r, scope, id, err := c.target(r)
	if err != nil {
		return err
	}
	var in patchCallBody
	if _, err := decode(r, &in); err != nil {
		return err
	}
	if in.Status != string(callapi.StatusHangup) {
		return apierr.Invalid("status", fmt.Sprintf(`%q cannot be set; the only change is "hangup"`, in.Status))
	}
	return c.respond(w, r, "hangup requested", func() (callapi.Call, error) { return c.mgr.Hangup(r.Context(), scope, id) })
}

func (c *calls) hangup(w http.ResponseWriter, r *http.Request) error {
	r, scope, id, err := c.target(r)
	if err != nil {
		return err
	}
	return c.respond(w, r, "hangup requested", func() (callapi.Call, error) { return c.mgr.Hangup(r.Context(), scope, id) })
}

func (c *calls) delete(w http.ResponseWriter, r *http.Request) error {
	r, scope, id, err := c.target(r)
	if err != nil {
		return err
	}
	return c.respond(w, r, "call deleted", func() (callapi.Call, error) { return c.mgr.Delete(r.Context(), scope, id) })
}

func (c *calls) respond(w http.ResponseWriter, r *http.Request, what string, do func() (callapi.Call, error)) error {
	call, err := do()
	if err != nil {
		return err
	}
	c.log.InfoContext(r.Context(), what, "status", call.Status)
	writeJSON(w, http.StatusOK, call)
	return nil
}
