package webhook

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	// No jitter: the random half of each delay is zero, so delays are exact.
	p := Policy{Base: 10 * time.Second, Max: time.Hour, Window: 72 * time.Hour,
		Jitter: func(time.Duration) time.Duration { return 0 }}.WithDefaults()
	start := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	now := start.Add(time.Minute)
	netErr := errors.New("connection refused")
	tests := []struct {
		name     string
		res      Result
		attempts int
		now      time.Time
		want     Decision
	}{
		{"200", Result{StatusCode: 200}, 1, now, Decision{Outcome: OutcomeSucceeded, Status: DeliverySucceeded}},
		{"204", Result{StatusCode: 204}, 1, now, Decision{Outcome: OutcomeSucceeded, Status: DeliverySucceeded}},
		{"network error", Result{Err: netErr}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(5 * time.Second)}},
		{"500 third", Result{StatusCode: 500}, 3, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(20 * time.Second)}},
		{"502", Result{StatusCode: 502}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(5 * time.Second)}},
		{"408", Result{StatusCode: 408}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(5 * time.Second)}},
		{"429 without Retry-After", Result{StatusCode: 429}, 2, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(10 * time.Second)}},
		{"429 Retry-After seconds", Result{StatusCode: 429, RetryAfter: "120"}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(2 * time.Minute)}},
		{"429 Retry-After date", Result{StatusCode: 429, RetryAfter: now.Add(90 * time.Second).Format(http.TimeFormat)}, 1, now,
			Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(90 * time.Second)}},
		{"429 Retry-After huge is capped", Result{StatusCode: 429, RetryAfter: "99999999"}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(24 * time.Hour)}},
		{"429 Retry-After garbage falls back to backoff", Result{StatusCode: 429, RetryAfter: "soon"}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(5 * time.Second)}},
		{"503 Retry-After", Result{StatusCode: 503, RetryAfter: "7"}, 1, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(7 * time.Second)}},
		{"410 disables", Result{StatusCode: 410}, 1, now, Decision{Outcome: OutcomeGone, Status: DeliveryFailed, Disable: true}},
		{"400 fails at once", Result{StatusCode: 400}, 1, now, Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}},
		{"401 fails at once", Result{StatusCode: 401}, 1, now, Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}},
		{"404 fails at once", Result{StatusCode: 404}, 1, now, Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}},
		{"302 fails at once", Result{StatusCode: 302}, 1, now, Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}},
		{"late attempt caps at Max", Result{StatusCode: 500}, 30, now, Decision{Outcome: OutcomeRetry, Status: DeliveryPending, NextAttempt: now.Add(30 * time.Minute)}},
		{"just inside the window", Result{StatusCode: 500}, 40, start.Add(72*time.Hour - time.Second), Decision{Outcome: OutcomeRetry, Status: DeliveryPending,
			NextAttempt: start.Add(72*time.Hour - time.Second + 30*time.Minute)}},
		{"window over", Result{StatusCode: 500}, 41, start.Add(72 * time.Hour), Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}},
		{"window over, network", Result{Err: netErr}, 41, start.Add(73 * time.Hour), Decision{Outcome: OutcomeFailed, Status: DeliveryFailed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Decide(tt.res, tt.attempts, start, tt.now); got != tt.want {
				t.Fatalf("Decide() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestBackoffHasJitterWithinBounds(t *testing.T) {
	p := Policy{Base: time.Second, Max: time.Minute}.WithDefaults()
	for n := 1; n <= 12; n++ {
		full := min(time.Second<<(n-1), time.Minute)
		seen := map[time.Duration]bool{}
		for range 50 {
			d := p.Backoff(n)
			if d < full/2 || d > full {
				t.Fatalf("Backoff(%d) = %s, want within [%s, %s]", n, d, full/2, full)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Fatalf("Backoff(%d) gave one value 50 times: no jitter", n)
		}
	}
}

// The default policy keeps retrying for at least three days, and its attempts do not bunch up.
func TestDefaultPolicyRetriesForAtLeastThreeDays(t *testing.T) {
	p := Policy{}.WithDefaults()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	attempts := 0
	for {
		attempts++
		d := p.Decide(Result{StatusCode: 503}, attempts, start, now)
		if d.Status != DeliveryPending {
			break
		}
		now = d.NextAttempt
		if attempts > 1000 {
			t.Fatal("never gives up")
		}
	}
	if span := now.Sub(start); span < 72*time.Hour {
		t.Fatalf("gave up after %s and %d attempts, want at least 72h", span, attempts)
	}
	if attempts > 60 {
		t.Fatalf("%d attempts in the window: backoff too aggressive", attempts)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{" 30 ", 30 * time.Second, true},
		{"-5", 0, false},
		{"1.5", 0, false},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{now.Add(time.Hour).Format(http.TimeFormat), time.Hour, true},
		{"tomorrow", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ParseRetryAfter(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}
