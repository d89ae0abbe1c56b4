// Package webhook is the domain of the webhook manager (DESIGN §8): a customer's webhooks and
// their validation, secrets and signatures, the fan-out of an event to the webhooks that want it,
// and the dispatcher that sends due deliveries and decides, by the retry policy, what each
// attempt's outcome means. It does no I/O of its own: the stores, the target guard and the HTTP
// sender are small interfaces its callers provide.
package webhook

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"voipbin/pkg/event"
)

// Webhook statuses.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"
)

// Webhook is a customer's endpoint.
type Webhook struct {
	ID         string
	CustomerID string
	Name       string
	URI        string
	Method     string
	EventTypes []string
	Status     string
	Secret     Secret
	TMCreate   time.Time
	TMUpdate   time.Time
}

// Wants reports whether the webhook is enabled and one of its event types matches eventType.
func (w Webhook) Wants(eventType string) bool {
	if w.Status != StatusEnabled {
		return false
	}
	for _, p := range w.EventTypes {
		if event.MatchType(p, eventType) {
			return true
		}
	}
	return false
}

// Errors of the domain; the RPC edge maps them to typed errors.
var (
	ErrNotFound         = errors.New("webhook not found")
	ErrDeliveryNotFound = errors.New("delivery not found")
	ErrTargetForbidden  = errors.New("webhook target forbidden")
	ErrDisabled         = errors.New("webhook disabled")
)

// FieldError is a validation failure of one field of a request.
type FieldError struct {
	Field       string
	Description string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Description }

// Spec is what a customer writes: the body of create and update.
type Spec struct {
	Name       string
	URI        string
	Method     string
	EventTypes []string
	Status     string // empty: enabled on create, unchanged on update
}

// Limits of a Spec.
const (
	MaxNameLength = 255
	MaxURILength  = 2048
	MaxEventTypes = 64
)

// Methods a webhook may use.
var methods = []string{"POST", "PUT", "PATCH"}

// eventTypePattern is a well-formed event type or pattern: dotted lower-case words, optionally
// ending in ".*" ("call.ended", "call.*", "sms.sent"); "*" alone is checked separately.
var eventTypePattern = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?$`)

// Normalize validates s and returns it in canonical form: method upper-cased (default POST), event
// types de-duplicated in their given order. A well-formed event type the platform does not emit
// yet is accepted: it simply never fires.
func (s Spec) Normalize() (Spec, error) {
	out := s
	out.Name = strings.TrimSpace(s.Name)
	if out.Name == "" && s.Name != "" {
		return Spec{}, &FieldError{"name", "must not be blank (only spaces)"}
	}
	if utf8.RuneCountInString(out.Name) > MaxNameLength {
		return Spec{}, &FieldError{"name", fmt.Sprintf("must be at most %d characters", MaxNameLength)}
	}
	if err := validateURI(s.URI); err != nil {
		return Spec{}, err
	}
	out.Method = strings.ToUpper(strings.TrimSpace(s.Method))
	if out.Method == "" {
		out.Method = "POST"
	}
	if !contains(methods, out.Method) {
		return Spec{}, &FieldError{"method", "must be one of " + strings.Join(methods, ", ")}
	}
	if len(s.EventTypes) == 0 {
		return Spec{}, &FieldError{"event_types", "must list at least one event type (\"*\" for all)"}
	}
	if len(s.EventTypes) > MaxEventTypes {
		return Spec{}, &FieldError{"event_types", fmt.Sprintf("must list at most %d event types", MaxEventTypes)}
	}
	out.EventTypes = make([]string, 0, len(s.EventTypes))
	for i, t := range s.EventTypes {
		if t != "*" && (len(t) > 128 || !eventTypePattern.MatchString(t)) {
			return Spec{}, &FieldError{fmt.Sprintf("event_types[%d]", i),
				fmt.Sprintf("%q is not an event type like \"call.ended\", a prefix like \"call.*\", or \"*\"", t)}
		}
		if !contains(out.EventTypes, t) {
			out.EventTypes = append(out.EventTypes, t)
		}
	}
	switch s.Status {
	case "", StatusEnabled, StatusDisabled:
	default:
		return Spec{}, &FieldError{"status", "must be enabled or disabled"}
	}
	return out, nil
}

func validateURI(raw string) error {
	if raw == "" {
		return &FieldError{"uri", "is required"}
	}
	if len(raw) > MaxURILength {
		return &FieldError{"uri", fmt.Sprintf("must be at most %d characters", MaxURILength)}
	}
	u, err := url.Parse(raw)
	if err != nil {
		return &FieldError{"uri", "is not a valid URL"}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return &FieldError{"uri", "must be an http or https URL"}
	}
	if u.Hostname() == "" {
		return &FieldError{"uri", "has no host"}
	}
	if u.Fragment != "" {
		return &FieldError{"uri", "must not have a fragment"}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// LogValue keeps a webhook's secret and full URI (which may carry credentials) out of logs.
func (w Webhook) LogValue() slog.Value {
	host := ""
	if u, err := url.Parse(w.URI); err == nil {
		host = u.Host
	}
	return slog.GroupValue(slog.String("id", w.ID), slog.String("host", host), slog.String("status", w.Status))
}
