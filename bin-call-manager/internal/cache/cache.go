// Package cache is the call manager's Redis adapter: call:<id> holds the call as JSON, written
// through after every change and filled on a read miss (DESIGN §9). Redis is only a cache: every
// failure is counted and logged at debug level, and the caller carries on with MySQL.
//
// Writes are versioned: a Lua script replaces the entry only with a higher row version, so a slow
// writer never puts an older copy over a newer one. A write-through that fails (Redis down or
// slow) leaves the id marked stale in this process: reads of it skip Redis, and a background loop
// deletes the entry once Redis answers again, so no stale copy outlives the outage here. (Another
// instance that failed nothing may serve the old copy until CacheTTL; DESIGN §9 accepts that a
// cache may lag, and every state change still reaches clients through the events.)
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/pkg/callapi"
)

// Key is the Redis key of a call.
func Key(id string) string { return "call:" + id }

// Options tune the cache.
type Options struct {
	// TTL of an entry after its last write (default 1 h).
	TTL time.Duration
	// Timeout bounds each Redis command (default 300 ms), so a hung Redis costs a request little.
	Timeout time.Duration
	// RetryInterval is how often stale entries are retried for deletion (default 1 s).
	RetryInterval time.Duration
	// MaxStale bounds the stale set (default 100 000); beyond it ids are forgotten, and their
	// entries expire by TTL.
	MaxStale   int
	Registerer prometheus.Registerer
}

// Calls is the call cache.
type Calls struct {
	rdb  *redis.Client
	log  *slog.Logger
	opts Options

	mu    sync.Mutex
	stale map[string]struct{}

	ops *prometheus.CounterVec
}

// New makes the cache on rdb.
func New(rdb *redis.Client, log *slog.Logger, opts Options) *Calls {
	if opts.TTL <= 0 {
		opts.TTL = time.Hour
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 300 * time.Millisecond
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = time.Second
	}
	if opts.MaxStale <= 0 {
		opts.MaxStale = 100_000
	}
	c := &Calls{rdb: rdb, log: log, opts: opts, stale: map[string]struct{}{},
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_cache_operations_total",
			Help: "call:<id> cache operations by op (get, set, invalidate) and result (hit, miss, ok, skipped, error)."},
			[]string{"op", "result"}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(c.ops)
	}
	return c
}

// entry is the cached form: the public call plus what reads need to decide visibility and what
// the write guard compares.
type entry struct {
	callapi.Call
	NodeID      string     `json:"node_id,omitempty"`
	SIPCallID   string     `json:"sip_call_id,omitempty"`
	DialTimeout int        `json:"dial_timeout"`
	Sequence    int64      `json:"sequence"`
	Version     int64      `json:"version"`
	TMDeadline  time.Time  `json:"tm_deadline"`
	TMDelete    *time.Time `json:"tm_delete,omitempty"`
}

// setScript writes ARGV[2] with TTL ARGV[3] ms unless the entry holds a version ≥ ARGV[1].
var setScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old.version) and tonumber(old.version) >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)

// Get reads a call; false on a miss, on any Redis failure, and for ids marked stale.
func (c *Calls) Get(ctx context.Context, id string) (*call.Call, bool) {
	if c.isStale(id) {
		c.ops.WithLabelValues("get", "skipped").Inc()
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	b, err := c.rdb.Get(ctx, Key(id)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		c.ops.WithLabelValues("get", "miss").Inc()
		return nil, false
	case err != nil:
		c.ops.WithLabelValues("get", "error").Inc()
		c.log.DebugContext(ctx, "cache read failed; reading MySQL", "error", err)
		return nil, false
	}
	var e entry
	if err := json.Unmarshal(b, &e); err != nil || e.ID != id {
		c.ops.WithLabelValues("get", "error").Inc()
		c.log.WarnContext(ctx, "cache entry unreadable; reading MySQL", "error", err)
		return nil, false
	}
	c.ops.WithLabelValues("get", "hit").Inc()
	return &call.Call{Call: e.Call, NodeID: e.NodeID, SIPCallID: e.SIPCallID, DialTimeout: e.DialTimeout,
		Sequence: e.Sequence, Version: e.Version, TMDeadline: e.TMDeadline, TMDelete: e.TMDelete}, true
}

// Set writes a call unless a newer version is cached. A failure marks the id stale.
func (c *Calls) Set(ctx context.Context, cl *call.Call) {
	b, err := json.Marshal(entry{Call: cl.Call, NodeID: cl.NodeID, SIPCallID: cl.SIPCallID, DialTimeout: cl.DialTimeout,
		Sequence: cl.Sequence, Version: cl.Version, TMDeadline: cl.TMDeadline, TMDelete: cl.TMDelete})
	if err != nil {
		c.ops.WithLabelValues("set", "error").Inc()
		c.log.ErrorContext(ctx, "cache entry not encodable", "error", err)
		c.markStale(cl.ID)
		return
	}
	if c.isStale(cl.ID) {
		// An older failed write may have left a copy; delete it before writing anew.
		if !c.invalidate(ctx, cl.ID) {
			c.ops.WithLabelValues("set", "error").Inc()
			return
		}
	}
	sctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	err = setScript.Run(sctx, c.rdb, []string{Key(cl.ID)}, cl.Version, b, c.opts.TTL.Milliseconds()).Err()
	if err != nil {
		c.ops.WithLabelValues("set", "error").Inc()
		c.log.DebugContext(ctx, "cache write failed; marking the entry stale", "error", err)
		c.markStale(cl.ID)
		return
	}
	c.ops.WithLabelValues("set", "ok").Inc()
}

func (c *Calls) isStale(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.stale[id]
	return ok
}

func (c *Calls) markStale(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.stale) >= c.opts.MaxStale {
		return
	}
	c.stale[id] = struct{}{}
}

// invalidate deletes an entry and, on success, forgets that it was stale.
func (c *Calls) invalidate(ctx context.Context, id string) bool {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if err := c.rdb.Del(ctx, Key(id)).Err(); err != nil {
		c.ops.WithLabelValues("invalidate", "error").Inc()
		return false
	}
	c.ops.WithLabelValues("invalidate", "ok").Inc()
	c.mu.Lock()
	delete(c.stale, id)
	c.mu.Unlock()
	return true
}

// Stale is how many entries this process knows may be stale.
func (c *Calls) Stale() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.stale)
}

// Run deletes stale entries as soon as Redis answers again, until ctx ends.
func (c *Calls) Run(ctx context.Context) error {
	t := time.NewTicker(c.opts.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		c.mu.Lock()
		ids := make([]string, 0, len(c.stale))
		for id := range c.stale {
			ids = append(ids, id)
		}
		c.mu.Unlock()
		for i, id := range ids {
			if !c.invalidate(ctx, id) {
				c.log.DebugContext(ctx, "stale cache entries not yet deleted; Redis still failing", "left", len(ids)-i)
				break
			}
		}
	}
}

// NewClient makes a Redis client for a cache: short timeouts and no retries, so a Redis that is
// down or hung costs a request a few hundred milliseconds at most before MySQL answers.
func NewClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 300 * time.Millisecond,
		ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond,
		MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond, PoolTimeout: 500 * time.Millisecond})
}

// Logger routes go-redis's own messages (dial failures while Redis is down) into the service's
// JSON log at debug level, where a cache outage belongs; pass it to redis.SetLogger in main.
type Logger struct{ Log *slog.Logger }

// Printf implements go-redis's logging interface.
func (l Logger) Printf(ctx context.Context, format string, v ...any) {
	l.Log.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
