package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"voipbin/bin-api-manager/internal/httpauth"
	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/apierr"
	"voipbin/pkg/outage"
	"voipbin/pkg/telemetry"
)

// Reasons the gateway itself answers with (the managers add theirs: CALL_NOT_FOUND, …).
const (
	ReasonRateLimitExceeded    = "RATE_LIMIT_EXCEEDED"
	ReasonBodyTooLarge         = "REQUEST_BODY_TOO_LARGE"
	ReasonIdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED"
	ReasonIdempotencyInFlight  = "IDEMPOTENCY_KEY_IN_USE"
)

// RetryAfterSeconds is the Retry-After of a 429 or 503 that did not set its own: long enough for
// a restarted dependency to come back, short enough that a retried request is not dropped.
const RetryAfterSeconds = 1

var errBodyTooLarge = apierr.Newf(apierr.PayloadTooLarge, ReasonBodyTooLarge, "request body exceeds %d bytes", MaxBodyBytes)

// errorBody is the "error" object of the public envelope (DESIGN §5).
type errorBody struct {
	Status    apierr.Status   `json:"status"`
	Reason    string          `json:"reason"`
	Message   string          `json:"message"`
	RequestID string          `json:"request_id"`
	Details   []apierr.Detail `json:"details"`
}

type envelope struct {
	Error errorBody `json:"error"`
}

// writeError writes err as the error envelope. Every failure the API answers goes through here:
// a dependency that is down (outage.Classify, here or in the manager that answered over RPC) is
// 503 SERVICE_UNAVAILABLE, and every 429 and 503 carries Retry-After, so clients that retry only
// those retry instead of dropping the request.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := apierr.From(outage.Classify(err))
	details := e.Details
	if details == nil {
		details = []apierr.Detail{}
	}
	if (e.Status == apierr.ResourceExhausted || e.Status == apierr.Unavailable) && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfterSeconds))
	}
	writeJSON(w, e.HTTPStatus(), envelope{Error: errorBody{Status: e.Status, Reason: e.Reason, Message: e.Message,
		RequestID: telemetry.RequestID(r.Context()), Details: details}})
}

// fail writes err as the envelope and logs what the caller cannot be told: an untyped error's
// cause, and the server-side failures (5xx). Client errors are in the access log already.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	e, typed := apierr.As(err)
	switch {
	case !typed:
		a.log.ErrorContext(r.Context(), "request failed", "error", err)
	case e.HTTPStatus() >= 500:
		a.log.WarnContext(r.Context(), "request failed", "status", e.Status, "reason", e.Reason, "message", e.Message)
	}
	writeError(w, r, err)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"status":"INTERNAL","reason":"INTERNAL_ERROR","message":"internal error","request_id":"","details":[]}}`)
	}
	writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n"))
}

// handle adapts a handler that returns an error to http.HandlerFunc.
func (a *api) handle(f func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			a.fail(w, r, err)
		}
	}
}

// decode reads a JSON body into v, refusing malformed JSON, unknown fields, trailing data and
// bodies over MaxBodyBytes. It returns the raw body.
func decode(r *http.Request, v any) ([]byte, error) {
	b, err := io.ReadAll(r.Body)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, errBodyTooLarge
	}
	if err != nil {
		return nil, apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "could not read the request body")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "invalid JSON body: trailing data after the JSON value")
	}
	return b, nil
}

func jsonError(err error) error {
	bad := func(msg string, d ...apierr.Detail) error {
		return apierr.New(apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, "invalid JSON body: "+msg).WithDetails(d...)
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return bad(fmt.Sprintf("malformed JSON at byte %d: %s", syn.Offset, syn.Error()))
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return bad(fmt.Sprintf("the body must be a JSON object, not %s", typ.Value))
		}
		return bad(fmt.Sprintf("field %q must be %s, not %s", field, jsonType(typ.Type.Kind().String()), typ.Value),
			apierr.Detail{"field": field, "description": "must be " + jsonType(typ.Type.Kind().String())})
	case errors.Is(err, io.ErrUnexpectedEOF):
		return bad("the JSON value is truncated")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return bad(fmt.Sprintf("unknown field %q", field), apierr.Detail{"field": field, "description": "unknown field"})
	}
	return bad(err.Error())
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	case "map", "struct":
		return "an object"
	}
	return kind
}

// pathID is the UUID path parameter name, or a 400 naming it.
func pathID(r *http.Request, name string) (string, error) {
	s := chi.URLParam(r, name)
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return "", apierr.Invalid(name, fmt.Sprintf("%q is not a UUID", s))
	}
	return u.String(), nil
}

// canonicalUUID is s in its canonical lower-case form, if s is a UUID in the 36-character form.
func canonicalUUID(s string) (string, bool) {
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return "", false
	}
	return u.String(), true
}

// queryUUID is an optional UUID query parameter.
func queryUUID(r *http.Request, name string) (string, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return "", nil
	}
	u, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return "", apierr.Invalid(name, fmt.Sprintf("%q is not a UUID", s))
	}
	return u.String(), nil
}

// queryInt is an optional integer query parameter within [lo, hi]; 0 when absent.
func queryInt(r *http.Request, name string, lo, hi int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, nil
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || fmt.Sprint(n) != s || n < lo || n > hi {
		return 0, apierr.Invalid(name, fmt.Sprintf("must be an integer from %d to %d", lo, hi))
	}
	return n, nil
}

// caller is the authenticated identity; the authenticate middleware guarantees one.
func caller(r *http.Request) identity.Identity {
	id, _ := httpauth.FromContext(r.Context())
	return id
}

// requireRead refuses callers without any customer-facing permission.
func requireRead(id identity.Identity) error {
	if !id.CanRead() {
		return identity.ErrPermissionDenied
	}
	return nil
}

// requireAdmin refuses callers who may not change their customer's settings.
func requireAdmin(id identity.Identity) error {
	if !id.CanAdmin() {
		return identity.ErrPermissionDenied
	}
	return nil
}
