// Package cache is the api manager's use of Redis: the authentication cache of access keys and
// users with its revocation channel (Principals), idempotency records of POST /v1.0/calls, and the
// GCRA rate limiter, the failed-login counter and the WebSocket connection leases. Redis is only a
// cache: the authentication cache degrades to "not cached" when Redis cannot answer (look-ups go
// to MySQL); the idempotency store, the limiter, the counter and the leases return the error so
// their callers choose (refuse, or count in process). Losing the idempotency records
// places no call twice: the call manager keeps every key too (call_requests) and answers a
// repeated key with the calls it made.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Record is what an Idempotency-Key stands for: a request still waiting for its outcome
// (Pending), or the answer to replay.
type Record struct {
	// Hash identifies the request body the key was first used with.
	Hash string `json:"hash"`
	// Pending is true until the outcome is known. While LeaseUntil has not passed, a request is
	// waiting for it; after it, the outcome is unknown (the wait timed out, or the process died)
	// and the next request with the key may ask the call manager again.
	Pending    bool            `json:"pending,omitempty"`
	LeaseUntil time.Time       `json:"lease_until,omitzero"`
	Status     int             `json:"status,omitempty"`
	Body       json.RawMessage `json:"body,omitempty"`
}

// Claim is a pending record held by one request: the exact value it wrote, so that changing or
// deleting it is a compare-and-set that never touches another request's record.
type Claim struct {
	key   string
	value string
	rec   Record
	// Resolving is true when the claim took over a record whose outcome was unknown.
	Resolving bool
}

// Idempotency stores idempotency records for ttl. A key's record is never dropped while its
// outcome is unknown: only Release (a definite failure that created nothing) deletes it before
// its TTL.
type Idempotency struct {
	rdb    redis.Cmdable
	prefix string
	ttl    time.Duration
	now    func() time.Time
}

// NewIdempotency keeps records for ttl (24 h in production) under prefix.
func NewIdempotency(rdb redis.Cmdable, prefix string, ttl time.Duration) *Idempotency {
	return &Idempotency{rdb: rdb, prefix: prefix, ttl: ttl, now: time.Now}
}

// casScript replaces KEYS[1] by ARGV[2] (with TTL ARGV[3] ms; "" deletes) if it still holds ARGV[1].
var casScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1`)

// finishScript stores the answer ARGV[1] unless an answer is stored already (a record that is
// not pending), and returns the answer that stands.
var finishScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and not string.find(cur, '"pending":true', 1, true) then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]`)

func (s *Idempotency) encode(r Record) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// Begin claims key for a request whose body hashes to hash, for lease (how long it will wait for
// the outcome). A new key, or one whose outcome is unknown (pending, lease passed) and whose hash
// matches, is claimed: serve the request, then Finish, Release or Yield. Otherwise Begin returns
// the record as it is (in use, or the answer to replay) and a nil Claim.
func (s *Idempotency) Begin(ctx context.Context, key, hash string, lease time.Duration) (Record, *Claim, error) {
	k := s.prefix + key
	for range 5 {
		mine := Record{Hash: hash, Pending: true, LeaseUntil: s.now().Add(lease).UTC()}
		value := s.encode(mine)
		ok, err := s.rdb.SetNX(ctx, k, value, s.ttl).Result()
		if err != nil {
			return Record{}, nil, fmt.Errorf("idempotency begin: %w", err)
		}
		if ok {
			return mine, &Claim{key: k, value: value, rec: mine}, nil
		}
		cur, err := s.rdb.Get(ctx, k).Result()
		if errors.Is(err, redis.Nil) {
			continue // released or expired in between
		}
		if err != nil {
			return Record{}, nil, fmt.Errorf("idempotency read: %w", err)
		}
		var r Record
		if err := json.Unmarshal([]byte(cur), &r); err != nil {
			return Record{}, nil, fmt.Errorf("idempotency record: %w", err)
		}
		if !r.Pending || r.Hash != hash || s.now().Before(r.LeaseUntil) {
			return r, nil, nil
		}
		// The outcome is unknown: this request asks again (the call manager knows the key).
		took, err := casScript.Run(ctx, s.rdb, []string{k}, cur, value, s.ttl.Milliseconds()).Int()
		if err != nil {
			return Record{}, nil, fmt.Errorf("idempotency take over: %w", err)
		}
		if took == 1 {
			return mine, &Claim{key: k, value: value, rec: mine, Resolving: true}, nil
		}
	}
	return Record{}, nil, errors.New("idempotency begin: the record kept changing")
}

// Finish stores the answer for the TTL, unless another request stored one first; it returns the
// answer that stands (the first one), which is what every request with the key must get.
func (s *Idempotency) Finish(ctx context.Context, c *Claim, r Record) (Record, error) {
	res, err := finishScript.Run(ctx, s.rdb, []string{c.key}, s.encode(r), s.ttl.Milliseconds()).Text()
	if err != nil {
		return r, fmt.Errorf("idempotency finish: %w", err)
	}
	var stood Record
	if err := json.Unmarshal([]byte(res), &stood); err != nil {
		return r, fmt.Errorf("idempotency record: %w", err)
	}
	return stood, nil
}

// Release deletes the claim's record: its request failed in a way that created nothing, and a
// retry may start afresh. A record another request has taken over is left alone.
func (s *Idempotency) Release(ctx context.Context, c *Claim) error {
	if err := casScript.Run(ctx, s.rdb, []string{c.key}, c.value, "", 0).Err(); err != nil {
		return fmt.Errorf("idempotency release: %w", err)
	}
	return nil
}

// Yield gives the claim up without an outcome: the record stays pending, with its lease ended,
// so the next request with the key asks the call manager again instead of starting afresh.
func (s *Idempotency) Yield(ctx context.Context, c *Claim) error {
	r := c.rec
	r.LeaseUntil = s.now().UTC()
	if err := casScript.Run(ctx, s.rdb, []string{c.key}, c.value, s.encode(r), s.ttl.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("idempotency yield: %w", err)
	}
	return nil
}

// Limiter is a GCRA rate limiter over Redis (go-redis/redis_rate).
type Limiter struct {
	l      *redis_rate.Limiter
	prefix string
}

// NewLimiter makes a limiter whose keys start with prefix.
func NewLimiter(rdb *redis.Client, prefix string) *Limiter {
	return &Limiter{l: redis_rate.NewLimiter(rdb), prefix: prefix}
}

// Allow takes one request from key's budget of rate per second with bursts of burst. When it is
// refused, retryAfter says when the next request will be allowed.
func (l *Limiter) Allow(ctx context.Context, key string, rate, burst int) (allowed bool, retryAfter time.Duration, err error) {
	res, err := l.l.Allow(ctx, l.prefix+key, redis_rate.Limit{Rate: rate, Burst: burst, Period: time.Second})
	if err != nil {
		return false, 0, fmt.Errorf("rate limit: %w", err)
	}
	return res.Allowed > 0, res.RetryAfter, nil
}

// Failures counts failures per key in fixed windows (failed logins per IP and per account): a
// key's window starts at its first Add and the key expires with it.
type Failures struct {
	rdb    redis.Scripter
	prefix string
}

// NewFailures makes a counter whose keys start with prefix.
func NewFailures(rdb redis.Scripter, prefix string) *Failures {
	return &Failures{rdb: rdb, prefix: prefix}
}

// addScript counts one and returns {count, milliseconds left in the window}; a key left without
// an expiry (it cannot happen, but a stuck key would lock an account for good) gets one.
var addScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}`)

// undoScript takes one back from a live window, never below zero and never creating a key.
var undoScript = redis.NewScript(`
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 0`)

// Add counts one failure (or attempt) on key and returns the count in the current window and
// the time left in it.
func (f *Failures) Add(ctx context.Context, key string, window time.Duration) (int64, time.Duration, error) {
	res, err := addScript.Run(ctx, f.rdb, []string{f.prefix + key}, window.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("count %s: %w", key, err)
	}
	if len(res) != 2 {
		return 0, 0, fmt.Errorf("count %s: unexpected reply %v", key, res)
	}
	return res[0], time.Duration(res[1]) * time.Millisecond, nil
}

// Undo takes back one count of key (an attempt that turned out not to be a failure).
func (f *Failures) Undo(ctx context.Context, key string) error {
	if err := undoScript.Run(ctx, f.rdb, []string{f.prefix + key}).Err(); err != nil {
		return fmt.Errorf("uncount %s: %w", key, err)
	}
	return nil
}

// Leases count live holders per key across instances (WebSocket connections per customer and
// per client address): each key is a sorted set of holder → lease end (Unix ms). A holder renews
// its lease while it lives; one whose instance died stops renewing and drops out when its lease
// ends, so a crash leaks a slot for at most one lease.
type Leases struct {
	rdb    redis.Cmdable
	prefix string
	ttl    time.Duration
}

// NewLeases makes the counter; keys start with prefix, leases last ttl (30 s if not positive).
func NewLeases(rdb redis.Cmdable, prefix string, ttl time.Duration) *Leases {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	return &Leases{rdb: rdb, prefix: prefix, ttl: ttl}
}

// TTL is how long a lease lasts unrenewed.
func (l *Leases) TTL() time.Duration { return l.ttl }

// acquireScript drops ended leases, then adds ARGV[3] to every key (lease end ARGV[2]) unless one
// of them already holds its limit (ARGV[4+i]; 0: none): it returns 0 when taken, i when KEYS[i]
// is full. All keys or none.
var acquireScript = redis.NewScript(`
local now, ends, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i, k in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local limit = tonumber(ARGV[3 + i])
  if limit > 0 and not redis.call('ZSCORE', k, member) and redis.call('ZCARD', k) >= limit then
    return i
  end
end
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, ends, member)
  redis.call('PEXPIREAT', k, ends)
end
return 0`)

// Acquire takes a lease for member on every key, each holding at most its limit (0: no limit).
// full is -1 when taken, or the index of the key that is full (nothing taken then).
func (l *Leases) Acquire(ctx context.Context, keys []string, limits []int, member string) (full int, err error) {
	now := time.Now()
	args := []any{now.UnixMilli(), now.Add(l.ttl).UnixMilli(), member}
	fullKeys := make([]string, len(keys))
	for i, k := range keys {
		fullKeys[i] = l.prefix + k
		args = append(args, limits[i])
	}
	n, err := acquireScript.Run(ctx, l.rdb, fullKeys, args...).Int()
	if err != nil {
		return -1, fmt.Errorf("lease %v: %w", keys, err)
	}
	return n - 1, nil
}

// Renew extends member's leases on keys.
func (l *Leases) Renew(ctx context.Context, keys []string, member string) error {
	until := time.Now().Add(l.ttl)
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.ZAddXX(ctx, l.prefix+k, redis.Z{Score: float64(until.UnixMilli()), Member: member})
			p.PExpireAt(ctx, l.prefix+k, until)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("renew lease %v: %w", keys, err)
	}
	return nil
}

// Release gives member's leases on keys back.
func (l *Leases) Release(ctx context.Context, keys []string, member string) error {
	_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.ZRem(ctx, l.prefix+k, member)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("release lease %v: %w", keys, err)
	}
	return nil
}
