package ws

import (
	"regexp"
	"strings"

	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
)

// Reasons of the error frames and close reasons this package sends (DESIGN §7).
const (
	ReasonInvalidFrame       = "INVALID_FRAME"
	ReasonInvalidTopic       = "INVALID_TOPIC"
	ReasonPermissionDenied   = apierr.ReasonPermissionDenied
	ReasonTooManyTopics      = "TOO_MANY_TOPICS"
	ReasonServiceUnavailable = apierr.ReasonServiceUnavailable
	ReasonSlowConsumer       = "SLOW_CONSUMER"
	ReasonReadTimeout        = "READ_TIMEOUT"
	ReasonShuttingDown       = "SHUTTING_DOWN"
)

// scopeCustomer is the only scope of DESIGN §7; "*" is accepted in its place and means the same.
const scopeCustomer = "customer_id"

// maxTopicLen bounds one topic string.
const maxTopicLen = 256

var (
	idSegment       = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	resourceSegment = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// Topic is a parsed subscription topic: "customer_id:<customer>:<resource>[:<resource_id>]".
// Customer and Resource may be "*" (any); an empty ResourceID (written as nothing or "*") covers
// every resource of the type.
type Topic struct {
	Customer   string
	Resource   string
	ResourceID string
}

// ParseTopic parses and validates a topic; failures are INVALID_ARGUMENT/INVALID_TOPIC errors.
func ParseTopic(s string) (Topic, error) {
	if len(s) > maxTopicLen {
		return Topic{}, topicError(s, "is longer than 256 characters")
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 && len(parts) != 4 {
		return Topic{}, topicError(s, "must be customer_id:<customer_id>:<resource>[:<resource_id>]")
	}
	if parts[0] != scopeCustomer && parts[0] != "*" {
		return Topic{}, topicError(s, `scope must be "customer_id"`)
	}
	t := Topic{Customer: parts[1], Resource: parts[2]}
	if t.Customer != "*" && !idSegment.MatchString(t.Customer) {
		return Topic{}, topicError(s, `customer id must be an id or "*"`)
	}
	if t.Resource != "*" && !resourceSegment.MatchString(t.Resource) {
		return Topic{}, topicError(s, `resource must be a lowercase name such as "call", or "*"`)
	}
	if len(parts) == 4 && parts[3] != "*" {
		if !idSegment.MatchString(parts[3]) {
			return Topic{}, topicError(s, `resource id must be an id or "*"`)
		}
		t.ResourceID = parts[3]
	}
	return t, nil
}

func topicError(topic, problem string) *apierr.Error {
	if len(topic) > 80 {
		topic = topic[:80] + "…"
	}
	return apierr.Newf(apierr.InvalidArgument, ReasonInvalidTopic, "topic %q: %s", topic, problem)
}

// String is the canonical form: "customer_id:<c>:<r>" or "customer_id:<c>:<r>:<id>", so
// "customer_id:X:call" and "customer_id:X:call:*" are the same subscription.
func (t Topic) String() string {
	s := scopeCustomer + ":" + t.Customer + ":" + t.Resource
	if t.ResourceID != "" {
		s += ":" + t.ResourceID
	}
	return s
}

// AllowedFor reports whether id may subscribe to t: a superadmin to anything, anyone else only to
// topics naming its own customer.
func (t Topic) AllowedFor(id Identity) bool {
	if id.Superadmin {
		return true
	}
	return id.CustomerID != "" && t.Customer == id.CustomerID
}

// Matches reports whether ev belongs to the topic.
func (t Topic) Matches(ev event.Event) bool {
	if t.Customer != "*" && t.Customer != ev.CustomerID {
		return false
	}
	if !resourceMatches(t.Resource, ev.ResourceType) {
		return false
	}
	return t.ResourceID == "" || t.ResourceID == ev.ResourceID
}

// resourceMatches maps an envelope's resource_type to a topic resource. The topic resource is the
// resource_type itself ("call", "billing_account"); "billing" is also accepted for every billing
// resource, since customers think of "billing events" rather than of the account they concern.
func resourceMatches(resource, resourceType string) bool {
	switch {
	case resourceType == "":
		return false
	case resource == "*", resource == resourceType:
		return true
	case resource == "billing":
		return strings.HasPrefix(resourceType, "billing_")
	}
	return false
}

// bindingKey is the routing-key pattern that brings the events of a scope (a customer id, or "*"
// for every customer) to this instance's queue.
func bindingKey(scope string) string {
	if scope == "*" {
		return "customer_id.*.#"
	}
	return event.CustomerKey(scope)
}
