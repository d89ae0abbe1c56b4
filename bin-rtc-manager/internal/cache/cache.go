// Package cache keeps the rtc manager's state in Redis: each dialog as JSON under
// rtc:dialog:<call_id>, each node's set of live dialogs, each node's outbox of rtc events, and
// each node's heartbeat. A dialog change and the events it emits are written in one MULTI/EXEC
// under WATCH, so an event is stored exactly when its change is, and the relay publishes it from
// there until RabbitMQ confirms.
//
// Redis may lose what it holds (a restart without persistence, a flush, a failover to a stale
// replica). The node's own live dialogs and the events it stored but has not yet seen published
// are therefore also held in memory: when the heartbeat finds the node's run marker gone, or a
// write finds a live dialog missing or older than the node's copy, the store writes them back
// (dialogs, then the lost events ahead of newer ones in the outbox) before it goes on. So a change
// of a live dialog, above all its end, is never dropped because Redis forgot the dialog.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/pkg/event"
)

// EndedTTL is how long an ended dialog stays readable.
const EndedTTL = 24 * time.Hour

// AliveTTL is how long a node's heartbeat stays readable after its last beat: long enough for a
// restarted node, or another one, to learn when a dead node was last alive.
const AliveTTL = 24 * time.Hour

// Store is the dialog store of one node; events it stores go to that node's outbox.
type Store struct {
	rdb    *redis.Client
	nodeID string
	prefix string
	runID  string
	now    func() time.Time

	restored atomic.Int64

	// rw lets writes run together (read side) and a restore alone (write side), so a restore
	// sees a stable memory and no event is pushed between its read of the outbox and its repair.
	rw sync.RWMutex

	mu      sync.Mutex
	live    map[string]*dialog.Dialog // this node's live dialogs, as last stored
	pending [][]byte                  // events pushed to the outbox and not yet removed by the relay
}

// NewStore makes the store; prefix namespaces every key ("rtc" in production, unique in tests).
func NewStore(rdb *redis.Client, prefix, nodeID string) *Store {
	return &Store{rdb: rdb, nodeID: nodeID, prefix: prefix, runID: uuid.NewString(), now: time.Now,
		live: map[string]*dialog.Dialog{}}
}

func (s *Store) dialogKey(callID string) string { return s.prefix + ":dialog:" + callID }
func (s *Store) liveKey(nodeID string) string   { return s.prefix + ":node:" + nodeID + ":live" }
func (s *Store) aliveKey(nodeID string) string  { return s.prefix + ":node:" + nodeID + ":alive" }
func (s *Store) sipKey(sipCallID string) string { return s.prefix + ":sip:" + sipCallID }

// errLost: Redis no longer has (this version of) a live dialog this node holds in memory.
var errLost = errors.New("redis lost a live dialog")

func clone(d *dialog.Dialog) *dialog.Dialog {
	c := *d
	c.RouteSet = append([]string(nil), d.RouteSet...)
	return &c
}

func (s *Store) remember(d *dialog.Dialog) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.NodeID != s.nodeID {
		return
	}
	if d.State.Live() {
		if old, ok := s.live[d.CallID]; !ok || old.Seq <= d.Seq { // concurrent writers land in any order
			s.live[d.CallID] = clone(d)
		}
	} else {
		delete(s.live, d.CallID)
	}
}

func (s *Store) held(callID string) *dialog.Dialog {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.live[callID]; ok {
		return clone(d)
	}
	return nil
}

func (s *Store) addPending(msgs []any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		s.pending = append(s.pending, m.([]byte))
	}
}

// dropPending forgets events: published (removed from the outbox), parked, or never stored.
func (s *Store) dropPending(raws [][]byte) {
	if len(raws) == 0 {
		return
	}
	drop := make(map[string]int, len(raws))
	for _, r := range raws {
		drop[string(r)]++
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.pending[:0]
	for _, p := range s.pending {
		if drop[string(p)] > 0 {
			drop[string(p)]--
			continue
		}
		kept = append(kept, p)
	}
	clear(s.pending[len(kept):])
	s.pending = kept
}

// Pending is the number of events stored and not yet seen published.
func (s *Store) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// OutboxKey is the list holding a node's unpublished events.
func OutboxKey(prefix, nodeID string) string { return prefix + ":outbox:" + nodeID }

func ttl(d *dialog.Dialog) time.Duration {
	if !d.State.Live() {
		return EndedTTL
	}
	return d.DialTimeout + d.MaxDuration + time.Hour
}

// Create stores a new dialog, or returns dialog.ErrExists.
func (s *Store) Create(ctx context.Context, d *dialog.Dialog) error {
	s.rw.RLock()
	defer s.rw.RUnlock()
	b, err := json.Marshal(d)
	if err != nil {
		return fmt.Errorf("marshal dialog: %w", err)
	}
	key := s.dialogKey(d.CallID)
	err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		n, err := tx.Exists(ctx, key).Result()
		if err != nil {
			return err
		}
		if n > 0 {
			return dialog.ErrExists
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, b, ttl(d))
			p.SAdd(ctx, s.liveKey(d.NodeID), d.CallID)
			if d.SIPCallID != "" {
				p.Set(ctx, s.sipKey(d.SIPCallID), d.CallID, ttl(d))
			}
			return nil
		})
		return err
	}, key)
	if errors.Is(err, redis.TxFailedErr) {
		return dialog.ErrExists // someone created it between our check and our write
	}
	if err != nil && !errors.Is(err, dialog.ErrExists) {
		return fmt.Errorf("create dialog %s: %w", d.CallID, err)
	}
	if err == nil {
		s.remember(d)
	}
	return err
}

// Get reads a dialog, or returns dialog.ErrNotFound. A live dialog of this node is answered from
// memory, which is never behind Redis, so a liveness probe holds while Redis is down or emptied.
func (s *Store) Get(ctx context.Context, callID string) (*dialog.Dialog, error) {
	if d := s.held(callID); d != nil {
		return d, nil
	}
	b, err := s.rdb.Get(ctx, s.dialogKey(callID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, dialog.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get dialog %s: %w", callID, err)
	}
	var d dialog.Dialog
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decode dialog %s: %w", callID, err)
	}
	return &d, nil
}

// CallIDBySIP finds the call of a SIP Call-ID, or returns dialog.ErrNotFound.
func (s *Store) CallIDBySIP(ctx context.Context, sipCallID string) (string, error) {
	id, err := s.rdb.Get(ctx, s.sipKey(sipCallID)).Result()
	if errors.Is(err, redis.Nil) {
		return "", dialog.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("find the call of SIP Call-ID %s: %w", sipCallID, err)
	}
	return id, nil
}

// Update applies fn and stores the dialog with fn's events in the outbox, atomically; a concurrent
// change makes it run fn again on the new state. When Redis has lost a live dialog this node holds
// (or has an older version of it), the store first writes back what Redis lost, then applies fn.
func (s *Store) Update(ctx context.Context, callID string, fn func(d *dialog.Dialog) ([]dialog.Emitted, error)) (*dialog.Dialog, error) {
	for restores := 0; ; restores++ {
		d, err := s.update(ctx, callID, fn)
		if !errors.Is(err, errLost) || restores == 3 {
			return d, err
		}
		if err := s.Restore(ctx); err != nil {
			return nil, fmt.Errorf("update dialog %s: %w", callID, err)
		}
	}
}

func (s *Store) update(ctx context.Context, callID string, fn func(d *dialog.Dialog) ([]dialog.Emitted, error)) (*dialog.Dialog, error) {
	s.rw.RLock()
	defer s.rw.RUnlock()
	key := s.dialogKey(callID)
	var out *dialog.Dialog
	txf := func(tx *redis.Tx) error {
		mine := s.held(callID)
		b, err := tx.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			if mine != nil {
				return errLost
			}
			return dialog.ErrNotFound
		}
		if err != nil {
			return err
		}
		var d dialog.Dialog
		if err := json.Unmarshal(b, &d); err != nil {
			return fmt.Errorf("decode dialog: %w", err)
		}
		if mine != nil && d.Seq < mine.Seq {
			return errLost // an older copy: Redis came back from a stale snapshot
		}
		evs, err := fn(&d)
		if err != nil {
			return err
		}
		nb, err := json.Marshal(&d)
		if err != nil {
			return err
		}
		msgs := make([]any, 0, len(evs))
		for _, e := range evs {
			ev, err := event.New(e.Type, d.CustomerID, "call", d.CallID, e.Sequence, e.Data)
			if err != nil {
				return err
			}
			eb, err := json.Marshal(ev)
			if err != nil {
				return err
			}
			msgs = append(msgs, eb)
		}
		// Held before the write lands, so the relay cannot remove an event this store does not
		// know yet; forgotten again if the write fails.
		s.addPending(msgs)
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, nb, ttl(&d))
			if !d.State.Live() {
				p.SRem(ctx, s.liveKey(d.NodeID), d.CallID)
			}
			if len(msgs) > 0 {
				p.RPush(ctx, OutboxKey(s.prefix, s.nodeID), msgs...)
			}
			return nil
		})
		if err != nil {
			raws := make([][]byte, len(msgs))
			for i, m := range msgs {
				raws[i] = m.([]byte)
			}
			s.dropPending(raws)
			return err
		}
		out = &d
		s.remember(&d)
		return nil
	}
	for attempt := 0; attempt < 20; attempt++ {
		err := s.rdb.Watch(ctx, txf, key)
		if errors.Is(err, redis.TxFailedErr) {
			continue
		}
		if err != nil {
			if errors.Is(err, dialog.ErrNotFound) || errors.Is(err, errLost) {
				return nil, err
			}
			return nil, fmt.Errorf("update dialog %s: %w", callID, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("update dialog %s: too much contention", callID)
}

// Live lists a node's dialogs that have not ended.
func (s *Store) Live(ctx context.Context, nodeID string) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, s.liveKey(nodeID)).Result()
	if err != nil {
		return nil, fmt.Errorf("list live dialogs of %s: %w", nodeID, err)
	}
	if nodeID == s.nodeID {
		s.mu.Lock()
		for id := range s.live {
			if !containsString(ids, id) {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
	}
	return ids, nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Restore writes back what Redis lost of this node's state: every live dialog it no longer has
// (or has an older version of), the node's membership in its live set, and every stored event
// not yet published that is missing from the outbox, put back ahead of the events stored since,
// in their order. It then marks the node's run, so the heartbeat knows Redis holds it again.
func (s *Store) Restore(ctx context.Context) error {
	s.rw.Lock()
	defer s.rw.Unlock()
	s.mu.Lock()
	dialogs := make([]*dialog.Dialog, 0, len(s.live))
	for _, d := range s.live {
		dialogs = append(dialogs, clone(d))
	}
	pending := append([][]byte(nil), s.pending...)
	s.mu.Unlock()

	rewritten := 0
	for _, d := range dialogs {
		key := s.dialogKey(d.CallID)
		b, err := s.rdb.Get(ctx, key).Bytes()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("restore dialog %s: %w", d.CallID, err)
		}
		if err == nil {
			var cur dialog.Dialog
			if json.Unmarshal(b, &cur) == nil && cur.Seq >= d.Seq {
				continue
			}
		}
		nb, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if _, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, nb, ttl(d))
			p.SAdd(ctx, s.liveKey(d.NodeID), d.CallID)
			if d.SIPCallID != "" {
				p.Set(ctx, s.sipKey(d.SIPCallID), d.CallID, ttl(d))
			}
			return nil
		}); err != nil {
			return fmt.Errorf("restore dialog %s: %w", d.CallID, err)
		}
		rewritten++
	}
	var missing []any
	if len(pending) > 0 {
		stored, err := s.rdb.LRange(ctx, OutboxKey(s.prefix, s.nodeID), 0, -1).Result()
		if err != nil {
			return fmt.Errorf("restore outbox: %w", err)
		}
		have := make(map[string]int, len(stored))
		for _, v := range stored {
			have[v]++
		}
		// LPUSH puts its arguments at the head one by one: pass the missing events newest first
		// so they end up oldest first, ahead of anything stored since.
		for i := len(pending) - 1; i >= 0; i-- {
			if have[string(pending[i])] > 0 {
				have[string(pending[i])]--
				continue
			}
			missing = append(missing, pending[i])
		}
	}
	if _, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if len(missing) > 0 {
			p.LPush(ctx, OutboxKey(s.prefix, s.nodeID), missing...)
		}
		p.Set(ctx, s.aliveKey(s.nodeID), s.beat(), AliveTTL)
		return nil
	}); err != nil {
		return fmt.Errorf("restore outbox: %w", err)
	}
	if rewritten > 0 || len(missing) > 0 {
		s.restored.Add(1)
	}
	return nil
}

// Restored counts the restores that wrote something back.
func (s *Store) Restored() int64 { return s.restored.Load() }

func (s *Store) beat() string { return s.runID + " " + s.now().UTC().Format(time.RFC3339Nano) }

// Beat records that the node is alive now. If Redis no longer holds the node's run marker (it
// lost its data, or this is the node's first beat since it started), it restores the node's
// state first.
func (s *Store) Beat(ctx context.Context) error {
	v, err := s.rdb.Get(ctx, s.aliveKey(s.nodeID)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if run, _, _ := strings.Cut(v, " "); run != s.runID {
		return s.Restore(ctx)
	}
	if err := s.rdb.Set(ctx, s.aliveKey(s.nodeID), s.beat(), AliveTTL).Err(); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// Alive is when a node last beat; zero if it never did (or long ago).
func (s *Store) Alive(ctx context.Context, nodeID string) (time.Time, error) {
	v, err := s.rdb.Get(ctx, s.aliveKey(nodeID)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read heartbeat of %s: %w", nodeID, err)
	}
	_, at, _ := strings.Cut(v, " ")
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return time.Time{}, fmt.Errorf("read heartbeat of %s: %w", nodeID, err)
	}
	return t, nil
}

// Outbox is a node's list of stored, not yet published events, oldest first.
type Outbox struct {
	rdb   *redis.Client
	key   string
	store *Store // nil for an outbox read without its node's store
}

// NewOutbox makes the outbox of a node, for reading it without the node's store.
func NewOutbox(rdb *redis.Client, prefix, nodeID string) *Outbox {
	return &Outbox{rdb: rdb, key: OutboxKey(prefix, nodeID)}
}

// Outbox is this node's outbox; events the relay removes from it are forgotten from memory too.
func (s *Store) Outbox() *Outbox {
	return &Outbox{rdb: s.rdb, key: OutboxKey(s.prefix, s.nodeID), store: s}
}

func (o *Outbox) lock() func() {
	if o.store == nil {
		return func() {}
	}
	o.store.rw.RLock()
	return o.store.rw.RUnlock
}

func (o *Outbox) forget(raws [][]byte) {
	if o.store != nil {
		o.store.dropPending(raws)
	}
}

// Peek returns up to n of the oldest events, as stored (JSON envelopes).
func (o *Outbox) Peek(ctx context.Context, n int) ([][]byte, error) {
	vals, err := o.rdb.LRange(ctx, o.key, 0, int64(n-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out, nil
}

// Remove drops published events.
func (o *Outbox) Remove(ctx context.Context, published [][]byte) error {
	defer o.lock()()
	_, err := o.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, b := range published {
			p.LRem(ctx, o.key, 1, b)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove published events: %w", err)
	}
	o.forget(published)
	return nil
}

// Park moves an unreadable entry to <outbox>:parked, where an operator can look at it.
func (o *Outbox) Park(ctx context.Context, raw []byte) error {
	defer o.lock()()
	_, err := o.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LRem(ctx, o.key, 1, raw)
		p.RPush(ctx, o.key+":parked", raw)
		return nil
	})
	if err != nil {
		return fmt.Errorf("park outbox entry: %w", err)
	}
	o.forget([][]byte{raw})
	return nil
}

// Len is the number of events waiting.
func (o *Outbox) Len(ctx context.Context) (int64, error) { return o.rdb.LLen(ctx, o.key).Result() }
