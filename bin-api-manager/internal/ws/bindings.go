package ws

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"voipbin/pkg/event"
)

// Binder changes the bindings of this instance's event queue; *event.Subscriber is one.
type Binder interface {
	Bind(ctx context.Context, b event.Binding) error
	Unbind(ctx context.Context, b event.Binding) error
}

// bindings keeps one queue binding per scope (a customer id, or "*") on every exchange while at
// least one connection holds the scope. Broker calls for one scope are serialized; different
// scopes proceed in parallel, so ten thousand customers connecting at once do not queue behind
// each other.
type bindings struct {
	binder    Binder
	exchanges []string
	onChange  func(delta int) // bound scopes gauge

	mu       sync.Mutex
	entries  map[string]*bindingEntry
	detached bool // the queue is gone: releases only count
}

type bindingEntry struct {
	users int // holders plus waiters; the entry is removed at 0 (guarded by bindings.mu)

	mu   sync.Mutex // serializes broker calls for the scope
	refs int        // holders (guarded by mu)
}

func newBindings(b Binder, exchanges []string, onChange func(int)) *bindings {
	return &bindings{binder: b, exchanges: exchanges, onChange: onChange, entries: map[string]*bindingEntry{}}
}

func (b *bindings) entry(scope string) *bindingEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[scope]
	if e == nil {
		e = &bindingEntry{}
		b.entries[scope] = e
	}
	e.users++
	return e
}

func (b *bindings) done(scope string, e *bindingEntry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e.users--; e.users == 0 {
		delete(b.entries, scope)
	}
}

// acquire takes a reference on scope, binding it first if nobody held it. It returns once the
// broker has the binding, so events published afterwards reach this instance.
func (b *bindings) acquire(ctx context.Context, scope string) error {
	e := b.entry(scope)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.refs == 0 {
		if err := b.bind(ctx, scope); err != nil {
			b.done(scope, e)
			return err
		}
		b.onChange(1)
	}
	e.refs++
	return nil
}

// release drops a reference on scope, unbinding it when it was the last one. An unbind that fails
// leaves a binding that brings events nobody matches; they are discarded by the fan-out, and the
// binding is gone at the next reconnection (the subscriber forgets it either way).
func (b *bindings) release(ctx context.Context, scope string) error {
	b.mu.Lock()
	e := b.entries[scope]
	b.mu.Unlock()
	if e == nil {
		return fmt.Errorf("release of scope %q that is not held", scope)
	}
	e.mu.Lock()
	var err error
	e.refs--
	if e.refs == 0 {
		err = b.unbind(ctx, scope)
		b.onChange(-1)
	}
	e.mu.Unlock()
	b.done(scope, e)
	return err
}

// bind binds scope on every exchange, undoing the ones done if a later one fails.
func (b *bindings) bind(ctx context.Context, scope string) error {
	key := bindingKey(scope)
	for i, ex := range b.exchanges {
		if err := b.binder.Bind(ctx, event.Binding{Exchange: ex, Key: key}); err != nil {
			// The subscriber records a binding before applying it: forget this one and the ones
			// done, or a later reconnection would apply bindings nobody holds. Best effort: a
			// binding left behind only brings events the fan-out matches to nobody.
			for _, undo := range b.exchanges[:i+1] {
				_ = b.binder.Unbind(ctx, event.Binding{Exchange: undo, Key: key})
			}
			return fmt.Errorf("bind %s on %s: %w", key, ex, err)
		}
	}
	return nil
}

// detach stops unbinding: after the consumer stopped, its queue is gone with its bindings.
func (b *bindings) detach() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.detached = true
}

func (b *bindings) unbind(ctx context.Context, scope string) error {
	b.mu.Lock()
	detached := b.detached
	b.mu.Unlock()
	if detached {
		return nil
	}
	key := bindingKey(scope)
	var errs error
	for _, ex := range b.exchanges {
		if err := b.binder.Unbind(ctx, event.Binding{Exchange: ex, Key: key}); err != nil {
			errs = errors.Join(errs, fmt.Errorf("unbind %s from %s: %w", key, ex, err))
		}
	}
	return errs
}

// held reports the number of references on scope (for tests).
func (b *bindings) held(scope string) int {
	b.mu.Lock()
	e := b.entries[scope]
	b.mu.Unlock()
	if e == nil {
		return 0
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refs
}
