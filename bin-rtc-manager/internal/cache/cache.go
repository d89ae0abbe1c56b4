// Package cache keeps the rtc manager's state in Redis: each dialog as JSON under
// rtc:dialog:<call_id>, each node's set of live dialogs, and each node's outbox of rtc events. A
// dialog change and the events it emits are written in one MULTI/EXEC under WATCH, so an event is
// stored exactly when its change is, and the relay publishes it from there until RabbitMQ confirms.
package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-rtc-manager/internal/dialog"
	"voipbin/pkg/event"
)

// EndedTTL is how long an ended dialog stays readable.
const EndedTTL = 24 * time.Hour

// Store is the dialog store of one node; events it stores go to that node's outbox.
type Store struct {
	rdb    *redis.Client
	nodeID string
	prefix string
}

// NewStore makes the store; prefix namespaces every key ("rtc" in production, unique in tests).
func NewStore(rdb *redis.Client, prefix, nodeID string) *Store {
	return &Store{rdb: rdb, nodeID: nodeID, prefix: prefix}
}

func (s *Store) dialogKey(callID string) string { return s.prefix + ":dialog:" + callID }
func (s *Store) liveKey(nodeID string) string   { return s.prefix + ":node:" + nodeID + ":live" }

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
	return err
}

// Get reads a dialog, or returns dialog.ErrNotFound.
func (s *Store) Get(ctx context.Context, callID string) (*dialog.Dialog, error) {
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

// Update applies fn and stores the dialog with fn's events in the outbox, atomically; a concurrent
// change makes it run fn again on the new state.
func (s *Store) Update(ctx context.Context, callID string, fn func(d *dialog.Dialog) ([]dialog.Emitted, error)) (*dialog.Dialog, error) {
	key := s.dialogKey(callID)
	var out *dialog.Dialog
	txf := func(tx *redis.Tx) error {
		b, err := tx.Get(ctx, key).Bytes()
		if errors.Is(err, redis.Nil) {
			return dialog.ErrNotFound
		}
		if err != nil {
			return err
		}
		var d dialog.Dialog
		if err := json.Unmarshal(b, &d); err != nil {
			return fmt.Errorf("decode dialog: %w", err)
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
		if err == nil {
			out = &d
		}
		return err
	}
	for attempt := 0; attempt < 20; attempt++ {
		err := s.rdb.Watch(ctx, txf, key)
		if errors.Is(err, redis.TxFailedErr) {
			continue
		}
		if err != nil {
			if errors.Is(err, dialog.ErrNotFound) {
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
	return ids, nil
}

// Outbox is a node's list of stored, not yet published events, oldest first.
type Outbox struct {
	rdb *redis.Client
	key string
}

// NewOutbox makes the outbox of a node.
func NewOutbox(rdb *redis.Client, prefix, nodeID string) *Outbox {
	return &Outbox{rdb: rdb, key: OutboxKey(prefix, nodeID)}
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
	_, err := o.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, b := range published {
			p.LRem(ctx, o.key, 1, b)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove published events: %w", err)
	}
	return nil
}

// Park moves an unreadable entry to <outbox>:parked, where an operator can look at it.
func (o *Outbox) Park(ctx context.Context, raw []byte) error {
	_, err := o.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LRem(ctx, o.key, 1, raw)
		p.RPush(ctx, o.key+":parked", raw)
		return nil
	})
	if err != nil {
		return fmt.Errorf("park outbox entry: %w", err)
	}
	return nil
}

// Len is the number of events waiting.
func (o *Outbox) Len(ctx context.Context) (int64, error) { return o.rdb.LLen(ctx, o.key).Result() }
