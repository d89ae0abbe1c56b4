// Package cache is the api manager's use of Redis: the access-key look-up cache, idempotency
// records of POST /v1.0/calls, and the GCRA rate limiter. Redis is only a cache: the access-key
// cache degrades to "not cached" when Redis cannot answer; the idempotency store and the limiter
// return the error so their callers choose (refuse, or fail open).
package cache

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-api-manager/internal/identity"
)

// AccessKeys caches access keys by the hash of their token, for ttl (at most 5 s, so a key
// deleted while Redis could not be told still stops working within 5 s).
type AccessKeys struct {
	rdb    redis.Cmdable
	prefix string
	ttl    time.Duration
	log    *slog.Logger
	errors prometheus.Counter
}

// NewAccessKeys makes the cache; keys are prefix + hex(hash). reg may be nil.
func NewAccessKeys(rdb redis.Cmdable, prefix string, ttl time.Duration, log *slog.Logger, reg prometheus.Registerer) *AccessKeys {
	c := &AccessKeys{rdb: rdb, prefix: prefix, ttl: ttl, log: log,
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "api_accesskey_cache_errors_total",
			Help: "Access-key cache operations that failed; look-ups then go to MySQL."})}
	if reg != nil {
		reg.MustRegister(c.errors)
	}
	return c
}

type cachedKey struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	UserID     string    `json:"user_id"`
	Name       string    `json:"name"`
	Permission uint32    `json:"permission"`
	TMExpire   time.Time `json:"tm_expire"`
	TMCreate   time.Time `json:"tm_create"`
}

func (c *AccessKeys) key(hash [32]byte) string { return c.prefix + hex.EncodeToString(hash[:]) }

func (c *AccessKeys) fail(ctx context.Context, op string, err error) {
	c.errors.Inc()
	c.log.WarnContext(ctx, "access-key cache unavailable", "op", op, "error", err)
}

// Get returns the cached key, or false when it is not cached or Redis cannot answer.
func (c *AccessKeys) Get(ctx context.Context, hash [32]byte) (identity.AccessKey, bool) {
	b, err := c.rdb.Get(ctx, c.key(hash)).Bytes()
	if errors.Is(err, redis.Nil) {
		return identity.AccessKey{}, false
	}
	if err != nil {
		c.fail(ctx, "get", err)
		return identity.AccessKey{}, false
	}
	var k cachedKey
	if err := json.Unmarshal(b, &k); err != nil {
		return identity.AccessKey{}, false
	}
	return identity.AccessKey{ID: k.ID, CustomerID: k.CustomerID, UserID: k.UserID, Name: k.Name, TokenHash: hash,
		Permission: identity.Permission(k.Permission), TMExpire: k.TMExpire, TMCreate: k.TMCreate}, true
}

// Set caches k for the TTL.
func (c *AccessKeys) Set(ctx context.Context, k identity.AccessKey) {
	b, _ := json.Marshal(cachedKey{ID: k.ID, CustomerID: k.CustomerID, UserID: k.UserID, Name: k.Name,
		Permission: uint32(k.Permission), TMExpire: k.TMExpire, TMCreate: k.TMCreate})
	if err := c.rdb.Set(ctx, c.key(k.TokenHash), b, c.ttl).Err(); err != nil {
		c.fail(ctx, "set", err)
	}
}

// Delete forgets a key.
func (c *AccessKeys) Delete(ctx context.Context, hash [32]byte) {
	if err := c.rdb.Del(ctx, c.key(hash)).Err(); err != nil {
		c.fail(ctx, "delete", err)
	}
}

// Record is the remembered answer to a request with an Idempotency-Key.
type Record struct {
	// Hash identifies the request body the key was first used with.
	Hash string `json:"hash"`
	// Pending is true while the first request is still being served.
	Pending bool            `json:"pending,omitempty"`
	Status  int             `json:"status,omitempty"`
	Body    json.RawMessage `json:"body,omitempty"`
}

// Idempotency stores idempotency records: a pending marker while the first request runs, then
// its answer for TTL.
type Idempotency struct {
	rdb    redis.Cmdable
	prefix string
	ttl    time.Duration
	// pendingTTL bounds how long a request that died mid-way blocks its key.
	pendingTTL time.Duration
}

// NewIdempotency keeps answers for ttl (24 h in production) under prefix.
func NewIdempotency(rdb redis.Cmdable, prefix string, ttl, pendingTTL time.Duration) *Idempotency {
	return &Idempotency{rdb: rdb, prefix: prefix, ttl: ttl, pendingTTL: pendingTTL}
}

// Begin claims key for a request whose body hashes to hash. If the key is new it is marked
// pending and Begin returns started=true: serve the request, then Finish or Abort. Otherwise it
// returns the existing record (pending, or the answer to replay).
func (s *Idempotency) Begin(ctx context.Context, key, hash string) (Record, bool, error) {
	k := s.prefix + key
	pending, _ := json.Marshal(Record{Hash: hash, Pending: true})
	ok, err := s.rdb.SetNX(ctx, k, pending, s.pendingTTL).Result()
	if err != nil {
		return Record{}, false, fmt.Errorf("idempotency begin: %w", err)
	}
	if ok {
		return Record{}, true, nil
	}
	b, err := s.rdb.Get(ctx, k).Bytes()
	if errors.Is(err, redis.Nil) { // expired between the two commands: try once more
		return s.Begin(ctx, key, hash)
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("idempotency read: %w", err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, false, fmt.Errorf("idempotency record: %w", err)
	}
	return r, false, nil
}

// Finish stores the answer for the TTL.
func (s *Idempotency) Finish(ctx context.Context, key string, r Record) error {
	b, _ := json.Marshal(r)
	if err := s.rdb.Set(ctx, s.prefix+key, b, s.ttl).Err(); err != nil {
		return fmt.Errorf("idempotency finish: %w", err)
	}
	return nil
}

// Abort releases a key whose request failed in a way worth retrying.
func (s *Idempotency) Abort(ctx context.Context, key string) error {
	if err := s.rdb.Del(ctx, s.prefix+key).Err(); err != nil {
		return fmt.Errorf("idempotency abort: %w", err)
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
