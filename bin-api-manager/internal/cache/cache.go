// Package cache is the api manager's use of Redis: the authentication cache of access keys and
// users with its revocation channel (Principals), idempotency records of POST /v1.0/calls, and the
// GCRA rate limiter. Redis is only a cache: the authentication cache degrades to "not cached"
// when Redis cannot answer (look-ups go to MySQL); the idempotency store and the limiter return
// the error so their callers choose (refuse, or fail open).
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
