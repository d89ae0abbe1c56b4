// Package ratelimit holds the in-process limits the api manager falls back on when Redis, which
// holds the shared ones, cannot answer in time: a GCRA limiter and a fixed-window counter, with
// the same semantics as their Redis counterparts in internal/cache but counted per instance. A
// dependency that is down or slow then loosens limits to per-instance ones instead of lifting them.
package ratelimit

import (
	"sync"
	"time"
)

// maxKeys bounds the keys either type remembers; past it, expired keys are swept out, and if
// that is not enough the oldest half of the table is dropped (forgetting only makes limits looser).
const maxKeys = 100_000

// Local is an in-process GCRA limiter: rate requests per second on average, bursts of burst.
type Local struct {
	mu  sync.Mutex
	tat map[string]time.Time // theoretical arrival time per key
	now func() time.Time
}

// NewLocal makes an empty limiter.
func NewLocal() *Local { return &Local{tat: map[string]time.Time{}, now: time.Now} }

// Allow takes one request from key's budget; when refused, retryAfter says when the next will be
// allowed.
func (l *Local) Allow(key string, rate, burst int) (allowed bool, retryAfter time.Duration) {
	if rate <= 0 {
		return true, 0
	}
	now := l.now()
	interval := time.Second / time.Duration(rate)
	tolerance := interval * time.Duration(max(burst, 1))
	l.mu.Lock()
	defer l.mu.Unlock()
	tat, ok := l.tat[key]
	if !ok || tat.Before(now) {
		tat = now
	}
	next := tat.Add(interval)
	if allowAt := next.Add(-tolerance); allowAt.After(now) {
		return false, allowAt.Sub(now)
	}
	if !ok && len(l.tat) >= maxKeys {
		l.sweep(now)
	}
	l.tat[key] = next
	return true, 0
}

func (l *Local) sweep(now time.Time) {
	for k, t := range l.tat {
		if t.Before(now) {
			delete(l.tat, k)
		}
	}
	for k := range l.tat {
		if len(l.tat) < maxKeys/2 {
			break
		}
		delete(l.tat, k)
	}
}

// Counter is an in-process fixed-window counter: a key's count starts at its first Add and is
// forgotten window later.
type Counter struct {
	mu      sync.Mutex
	entries map[string]*window
	now     func() time.Time
}

type window struct {
	n   int64
	end time.Time
}

// NewCounter makes an empty counter.
func NewCounter() *Counter { return &Counter{entries: map[string]*window{}, now: time.Now} }

// Add counts one on key and returns the count in the current window and the time left in it.
func (c *Counter) Add(key string, length time.Duration) (n int64, left time.Duration) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.entries[key]
	if w == nil || !w.end.After(now) {
		if w == nil && len(c.entries) >= maxKeys {
			c.sweep(now)
		}
		w = &window{end: now.Add(length)}
		c.entries[key] = w
	}
	w.n++
	return w.n, w.end.Sub(now)
}

// Undo takes back one count of key's current window (never below zero).
func (c *Counter) Undo(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w := c.entries[key]; w != nil && w.n > 0 {
		w.n--
	}
}

func (c *Counter) sweep(now time.Time) {
	for k, w := range c.entries {
		if !w.end.After(now) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) < maxKeys/2 {
			break
		}
		delete(c.entries, k)
	}
}
