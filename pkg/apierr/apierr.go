// Package apierr is the typed error every voipbin service returns across a boundary: a status
// (the class of failure, mapped to an HTTP status), a stable SCREAMING_SNAKE reason, a human
// message and optional details. The same value crosses RPC intact and is rendered as the public
// JSON error envelope by the API gateway.
package apierr

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Status is the class of an error; each maps to one HTTP status.
type Status string

// The statuses of DESIGN §5, plus the two HTTP-only ones the gateway needs (405, 413).
const (
	InvalidArgument    Status = "INVALID_ARGUMENT"
	Unauthenticated    Status = "UNAUTHENTICATED"
	PaymentRequired    Status = "PAYMENT_REQUIRED"
	PermissionDenied   Status = "PERMISSION_DENIED"
	NotFound           Status = "NOT_FOUND"
	MethodNotAllowed   Status = "METHOD_NOT_ALLOWED"
	AlreadyExists      Status = "ALREADY_EXISTS"
	FailedPrecondition Status = "FAILED_PRECONDITION"
	PayloadTooLarge    Status = "PAYLOAD_TOO_LARGE"
	ResourceExhausted  Status = "RESOURCE_EXHAUSTED"
	Unavailable        Status = "UNAVAILABLE"
	Internal           Status = "INTERNAL"
)

var httpStatus = map[Status]int{
	InvalidArgument:    http.StatusBadRequest,
	Unauthenticated:    http.StatusUnauthorized,
	PaymentRequired:    http.StatusPaymentRequired,
	PermissionDenied:   http.StatusForbidden,
	NotFound:           http.StatusNotFound,
	MethodNotAllowed:   http.StatusMethodNotAllowed,
	AlreadyExists:      http.StatusConflict,
	FailedPrecondition: http.StatusConflict,
	PayloadTooLarge:    http.StatusRequestEntityTooLarge,
	ResourceExhausted:  http.StatusTooManyRequests,
	Unavailable:        http.StatusServiceUnavailable,
	Internal:           http.StatusInternalServerError,
}

// HTTPStatus is the HTTP status code of s; unknown statuses are 500.
func (s Status) HTTPStatus() int {
	if c, ok := httpStatus[s]; ok {
		return c
	}
	return http.StatusInternalServerError
}

// StatusFromHTTP is the inverse of HTTPStatus for codes that map to one status (409 → ALREADY_EXISTS).
func StatusFromHTTP(code int) Status {
	switch code {
	case http.StatusBadRequest:
		return InvalidArgument
	case http.StatusUnauthorized:
		return Unauthenticated
	case http.StatusPaymentRequired:
		return PaymentRequired
	case http.StatusForbidden:
		return PermissionDenied
	case http.StatusNotFound:
		return NotFound
	case http.StatusMethodNotAllowed:
		return MethodNotAllowed
	case http.StatusConflict:
		return AlreadyExists
	case http.StatusRequestEntityTooLarge:
		return PayloadTooLarge
	case http.StatusTooManyRequests:
		return ResourceExhausted
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return Unavailable
	}
	return Internal
}

// Well-known reasons shared by several services. Services add their own (CALL_NOT_FOUND, …).
const (
	ReasonInvalidArgument    = "INVALID_ARGUMENT"
	ReasonInvalidJSONBody    = "INVALID_JSON_BODY"
	ReasonNotFound           = "NOT_FOUND"
	ReasonRouteNotFound      = "ROUTE_NOT_FOUND"
	ReasonMethodNotAllowed   = "METHOD_NOT_ALLOWED"
	ReasonRequestTimeout     = "REQUEST_TIMEOUT"
	ReasonServiceUnavailable = "SERVICE_UNAVAILABLE"
	ReasonInternal           = "INTERNAL_ERROR"
	ReasonPermissionDenied   = "PERMISSION_DENIED"
)

// Detail is one machine-readable fact about an error, e.g. {"field":"destinations[0].target",
// "description":"must be E.164"} or {"balance":120000,"required":600000}.
type Detail map[string]any

// Error is the typed error. Its JSON form is the "error" object of the public envelope.
type Error struct {
	Status  Status   `json:"status"`
	Reason  string   `json:"reason"`
	Message string   `json:"message"`
	Details []Detail `json:"details,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s/%s: %s", e.Status, e.Reason, e.Message) }

// HTTPStatus is the HTTP status code of the error.
func (e *Error) HTTPStatus() int { return e.Status.HTTPStatus() }

// WithDetails returns a copy of e with details appended.
func (e *Error) WithDetails(d ...Detail) *Error {
	c := *e
	c.Details = append(append([]Detail(nil), e.Details...), d...)
	return &c
}

// New makes an error of the given status and reason.
func New(status Status, reason, message string) *Error {
	return &Error{Status: status, Reason: reason, Message: message}
}

// Newf is New with a formatted message.
func Newf(status Status, reason, format string, args ...any) *Error {
	return New(status, reason, fmt.Sprintf(format, args...))
}

// Invalid is a 400 for a bad field: reason INVALID_ARGUMENT (or the given one) with a field detail.
func Invalid(field, description string) *Error {
	return &Error{Status: InvalidArgument, Reason: ReasonInvalidArgument,
		Message: field + ": " + description,
		Details: []Detail{{"field": field, "description": description}}}
}

// As finds an *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// HasReason reports whether err carries an *Error with the given reason.
func HasReason(err error, reason string) bool {
	e, ok := As(err)
	return ok && e.Reason == reason
}

// ErrUnavailable marks an error that says a dependency (the database, a cache the request cannot
// do without, the message broker) is down or overloaded, not that the request is wrong: the same
// request may succeed when retried. pkg/outage marks driver errors with it; From answers it as
// UNAVAILABLE/SERVICE_UNAVAILABLE (503, which the API gateway sends with Retry-After).
var ErrUnavailable = errors.New("a dependency is unavailable")

// From converts any error to an *Error: typed errors pass through, a context deadline becomes
// UNAVAILABLE/REQUEST_TIMEOUT, an error marked ErrUnavailable UNAVAILABLE/SERVICE_UNAVAILABLE,
// everything else INTERNAL with a generic message (the cause is for logs, not for callers).
func From(err error) *Error {
	if err == nil {
		return nil
	}
	if e, ok := As(err); ok {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return New(Unavailable, ReasonRequestTimeout, "the request timed out")
	}
	if errors.Is(err, ErrUnavailable) {
		return New(Unavailable, ReasonServiceUnavailable, "a service this request needs is unavailable; retry later")
	}
	return New(Internal, ReasonInternal, "internal error")
}
