package webhook

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Policy is the retry policy: which outcomes are retried, and when.
type Policy struct {
	// Base is the first retry delay; it doubles per attempt (default 5 s).
	Base time.Duration
	// Max caps one delay (default 4 h).
	Max time.Duration
	// Window is how long retries go on, counted from the delivery's creation or its last manual
	// retry: a retryable failure after the window has passed fails the delivery (default 72 h, so
	// retries run for at least three days).
	Window time.Duration
	// MaxRetryAfter caps a receiver's Retry-After (default 24 h).
	MaxRetryAfter time.Duration
	// Jitter returns a random duration in [0, n]; nil uses math/rand.
	Jitter func(n time.Duration) time.Duration
}

// WithDefaults fills the zero fields.
func (p Policy) WithDefaults() Policy {
	if p.Base <= 0 {
		p.Base = 5 * time.Second
	}
	if p.Max <= 0 {
		p.Max = 4 * time.Hour
	}
	if p.Max < p.Base {
		p.Max = p.Base
	}
	if p.Window <= 0 {
		p.Window = 72 * time.Hour
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = 24 * time.Hour
	}
	if p.Jitter == nil {
		p.Jitter = func(n time.Duration) time.Duration { return rand.N(n + 1) }
	}
	return p
}

// Backoff is the delay before retry number n (1 for the first retry): Base·2ⁿ⁻¹ capped at Max,
// with "equal jitter" (half fixed, half random) so a burst of failures spreads out.
func (p Policy) Backoff(n int) time.Duration {
	d := p.Max
	if shift := n - 1; shift < 40 {
		if b := p.Base << max(shift, 0); b > 0 && b < p.Max {
			d = b
		}
	}
	return d/2 + p.Jitter(d/2)
}

// Result is what one attempt to send a delivery got back.
type Result struct {
	StatusCode int           // 0 when no HTTP response came (Err is set)
	RetryAfter string        // the Retry-After header, if any
	Body       []byte        // the first MaxResponseBytes of the answer
	Latency    time.Duration // from the request's start to the answer's headers, or to the failure
	Err        error         // a network error or timeout
}

// MaxResponseBytes is how much of an answer is kept in the delivery log.
const MaxResponseBytes = 1024

// Outcome labels, for the attempt log and metrics.
const (
	OutcomeSucceeded = "succeeded" // 2xx
	OutcomeRetry     = "retry"     // network error, 408, 429, 5xx: tried again later
	OutcomeFailed    = "failed"    // another 4xx, a redirect, or retries exhausted
	OutcomeGone      = "gone"      // 410: the delivery fails and the webhook is disabled
)

// Decision is what follows an attempt.
type Decision struct {
	Outcome     string
	Status      string    // the delivery's new status: pending, succeeded or failed
	NextAttempt time.Time // when Status is pending
	Disable     bool      // disable the webhook (410 Gone)
}

// Decide classifies the result of attempt number windowAttempts (counted since windowStart) made at
// now. Success is any 2xx. Network errors, 408, 429 and 5xx are retried with exponential backoff,
// honouring Retry-After on 429 and 503, until the window has passed; 410 disables the webhook;
// every other status (other 4xx, 1xx, 3xx: redirects are not followed) fails at once.
func (p Policy) Decide(r Result, windowAttempts int, windowStart, now time.Time) Decision {
	switch {
	case r.Err == nil && r.StatusCode >= 200 && r.StatusCode < 300:
		return Decision{Outcome: OutcomeSucceeded, Status: DeliverySucceeded}
	case r.Err == nil && r.StatusCode == http.StatusGone:
		return Decision{Outcome: OutcomeGone, Status: DeliveryFailed, Disable: true}
	case r.Err != nil, r.StatusCode == http.StatusRequestTimeout, r.StatusCode == http.StatusTooManyRequests,
		r.StatusCode >= 500 && r.StatusCode < 600:
		if now.Sub(windowStart) >= p.Window {
			return Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}
		}
		delay := p.Backoff(windowAttempts)
		if r.StatusCode == http.StatusTooManyRequests || r.StatusCode == http.StatusServiceUnavailable {
			if ra, ok := ParseRetryAfter(r.RetryAfter, now); ok {
				delay = min(ra, p.MaxRetryAfter)
			}
		}
		return Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(delay)}
	default:
		return Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}
	}
}

// ParseRetryAfter reads a Retry-After value: delay-seconds or an HTTP date. A date in the past is
// a zero delay.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(min(n, int64(365*24*3600))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
