package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"voipbin/bin-api-manager/internal/ratelimit"
	"voipbin/pkg/apierr"
)

// ReasonLoginThrottled answers a login refused because too many logins failed recently from the
// client's address or for the account (429 with Retry-After: the end of the window).
const ReasonLoginThrottled = "TOO_MANY_FAILED_LOGINS"

// FailureCounter counts failures per key in fixed windows (cache.Failures implements it).
type FailureCounter interface {
	Add(ctx context.Context, key string, window time.Duration) (n int64, left time.Duration, err error)
	Undo(ctx context.Context, key string) error
}

// LoginThrottle limits failed logins in fixed windows: PerIP per client address, PerAccount per
// username (known or not); 0 disables that limit.
type LoginThrottle struct {
	PerIP      int
	PerAccount int
	Window     time.Duration
}

// loginThrottle counts login attempts before the password is checked — so that a burst of
// concurrent attempts is counted as it arrives, not after its bcrypt work — and takes back those
// that did not fail. The counts live in Redis (shared by every instance); when Redis does not
// answer within limiterTimeout they are kept in process for limiterBackoff, so a slow or dead
// Redis makes the limits per instance instead of lifting them.
type loginThrottle struct {
	a      *api
	shared FailureCounter // nil: in process only
	local  *ratelimit.Counter
	limits LoginThrottle

	downUntil, lastWarn atomic.Int64
}

func newLoginThrottle(a *api, shared FailureCounter, limits LoginThrottle) *loginThrottle {
	if limits.Window <= 0 {
		limits.Window = 15 * time.Minute
	}
	return &loginThrottle{a: a, shared: shared, local: ratelimit.NewCounter(), limits: limits}
}

// counted is one count taken, and where.
type counted struct {
	key   string
	local bool
}

func (t *loginThrottle) add(ctx context.Context, key string) (int64, time.Duration, counted) {
	if t.shared != nil && time.Now().UnixNano() >= t.downUntil.Load() {
		cctx, cancel := context.WithTimeout(ctx, limiterTimeout)
		n, left, err := t.shared.Add(cctx, key, t.limits.Window)
		cancel()
		if err == nil {
			return n, left, counted{key: key}
		}
		t.failed(ctx, err)
	} else if t.shared != nil {
		t.a.m.limiterErrors.WithLabelValues("login").Inc()
	}
	n, left := t.local.Add(key, t.limits.Window)
	return n, left, counted{key: key, local: true}
}

func (t *loginThrottle) failed(ctx context.Context, err error) {
	t.a.m.limiterErrors.WithLabelValues("login").Inc()
	now := time.Now()
	t.downUntil.Store(now.Add(limiterBackoff).UnixNano())
	if now.Unix()-t.lastWarn.Load() >= 10 {
		t.lastWarn.Store(now.Unix())
		t.a.log.WarnContext(ctx, "login throttle store unavailable, counting in process", "error", err)
	}
}

func (t *loginThrottle) undo(ctx context.Context, cs []counted) {
	for _, c := range cs {
		if c.local {
			t.local.Undo(c.key)
			continue
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), limiterTimeout)
		if err := t.shared.Undo(cctx, c.key); err != nil {
			t.failed(ctx, err) // the attempt stays counted as a failure until its window ends
		}
		cancel()
	}
}

// begin counts one attempt against the client address, then the account, and refuses it (429)
// when either is over its limit; an address over its limit does not count against the account, so
// one address cannot lock accounts it keeps hammering. The returned undo takes the attempt back:
// call it unless the attempt failed on its credentials. A refusal comes with the seconds until
// the window ends, for Retry-After.
func (t *loginThrottle) begin(ctx context.Context, ip, username string) (undo func(), retryAfter int, err error) {
	var taken []counted
	undo = func() { t.undo(ctx, taken) }
	check := func(scope, key string, limit int) error {
		if limit <= 0 {
			return nil
		}
		n, left, c := t.add(ctx, key)
		taken = append(taken, c)
		if n <= int64(limit) {
			return nil
		}
		undo()
		t.a.m.loginThrottled.WithLabelValues(scope).Inc()
		retryAfter = max(1, int(math.Ceil(left.Seconds())))
		return apierr.Newf(apierr.ResourceExhausted, ReasonLoginThrottled,
			"too many failed logins for this %s; retry after %d s", scope, retryAfter)
	}
	if err := check("address", "login:ip:"+ip, t.limits.PerIP); err != nil {
		return nil, retryAfter, err
	}
	if err := check("account", "login:user:"+accountKey(username), t.limits.PerAccount); err != nil {
		return nil, retryAfter, err
	}
	return undo, 0, nil
}

// accountKey names an account in the counters whatever its username holds: usernames compare
// case-insensitively in MySQL, so the key does too.
func accountKey(username string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(strings.TrimSpace(username))))
	return hex.EncodeToString(sum[:16])
}
