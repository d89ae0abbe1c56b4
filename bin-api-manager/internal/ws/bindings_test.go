package ws

import (
	"context"
	"errors"
	"sync"
	"testing"

	"voipbin/pkg/event"
)

// fakeBinder records the bindings a real queue would have.
type fakeBinder struct {
	mu     sync.Mutex
	bound  map[event.Binding]bool
	calls  int
	failOn map[string]bool // exchange → Bind fails
}

func newFakeBinder() *fakeBinder {
	return &fakeBinder{bound: map[event.Binding]bool{}, failOn: map[string]bool{}}
}

func (f *fakeBinder) Bind(_ context.Context, b event.Binding) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.bound[b] = true // like event.Subscriber: recorded even when applying it fails
	if f.failOn[b.Exchange] {
		return errors.New("broker said no")
	}
	return nil
}

func (f *fakeBinder) Unbind(_ context.Context, b event.Binding) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	delete(f.bound, b)
	return nil
}

func (f *fakeBinder) snapshot() (map[event.Binding]bool, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[event.Binding]bool{}
	for k, v := range f.bound {
		m[k] = v
	}
	return m, f.calls
}

var testExchanges = []string{event.ExchangeCall, event.ExchangeBilling}

func TestBindingsReferenceCounting(t *testing.T) {
	ctx := context.Background()
	fb := newFakeBinder()
	gauge := 0
	b := newBindings(fb, testExchanges, func(d int) { gauge += d })

	for range 3 {
		if err := b.acquire(ctx, custA); err != nil {
			t.Fatal(err)
		}
	}
	bound, calls := fb.snapshot()
	want := map[event.Binding]bool{
		{Exchange: event.ExchangeCall, Key: event.CustomerKey(custA)}:    true,
		{Exchange: event.ExchangeBilling, Key: event.CustomerKey(custA)}: true,
	}
	if len(bound) != 2 || !bound[event.Binding{Exchange: event.ExchangeCall, Key: event.CustomerKey(custA)}] ||
		!bound[event.Binding{Exchange: event.ExchangeBilling, Key: event.CustomerKey(custA)}] {
		t.Fatalf("bound after 3 acquires = %v, want %v", bound, want)
	}
	if calls != 2 {
		t.Errorf("broker calls after 3 acquires of one scope = %d, want 2 (one per exchange)", calls)
	}
	if gauge != 1 || b.held(custA) != 3 {
		t.Errorf("gauge = %d, held = %d; want 1 and 3", gauge, b.held(custA))
	}

	for i := range 2 {
		if err := b.release(ctx, custA); err != nil {
			t.Fatal(err)
		}
		if bound, _ := fb.snapshot(); len(bound) != 2 {
			t.Fatalf("after release %d of 3: bound = %v, want both bindings kept", i+1, bound)
		}
	}
	if err := b.release(ctx, custA); err != nil {
		t.Fatal(err)
	}
	if bound, _ := fb.snapshot(); len(bound) != 0 {
		t.Errorf("after the last release: bound = %v, want none", bound)
	}
	if gauge != 0 || b.held(custA) != 0 || len(b.entries) != 0 {
		t.Errorf("after the last release: gauge = %d, held = %d, entries = %d; want 0, 0, 0", gauge, b.held(custA), len(b.entries))
	}
	if err := b.release(ctx, custA); err == nil {
		t.Error("release of a scope not held: want an error")
	}
}

func TestBindingsFailureLeavesNothingBound(t *testing.T) {
	ctx := context.Background()
	fb := newFakeBinder()
	fb.failOn[event.ExchangeBilling] = true // the second exchange fails after the first succeeded
	gauge := 0
	b := newBindings(fb, testExchanges, func(d int) { gauge += d })

	if err := b.acquire(ctx, custA); err == nil {
		t.Fatal("acquire with a failing broker: want an error")
	}
	if bound, _ := fb.snapshot(); len(bound) != 0 {
		t.Errorf("after a failed acquire: bound = %v, want none (not even the recorded ones)", bound)
	}
	if gauge != 0 || b.held(custA) != 0 || len(b.entries) != 0 {
		t.Errorf("after a failed acquire: gauge = %d, held = %d, entries = %d; want 0", gauge, b.held(custA), len(b.entries))
	}

	fb.mu.Lock()
	fb.failOn = map[string]bool{}
	fb.mu.Unlock()
	if err := b.acquire(ctx, custA); err != nil {
		t.Fatalf("acquire once the broker is back: %v", err)
	}
	if bound, _ := fb.snapshot(); len(bound) != 2 {
		t.Errorf("after a later acquire: bound = %v, want both", bound)
	}
}

func TestBindingsConcurrent(t *testing.T) {
	ctx := context.Background()
	fb := newFakeBinder()
	var gaugeMu sync.Mutex
	gauge := 0
	b := newBindings(fb, testExchanges, func(d int) { gaugeMu.Lock(); gauge += d; gaugeMu.Unlock() })
	scopes := []string{custA, custB, "*"}

	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := scopes[i%len(scopes)]
			for range 20 {
				if err := b.acquire(ctx, s); err != nil {
					t.Error(err)
					return
				}
				if err := b.release(ctx, s); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if bound, _ := fb.snapshot(); len(bound) != 0 {
		t.Errorf("after balanced acquires and releases: bound = %v, want none", bound)
	}
	if gauge != 0 || len(b.entries) != 0 {
		t.Errorf("gauge = %d, entries = %d; want 0, 0", gauge, len(b.entries))
	}

	// Held across the storm, a scope stays bound however others come and go.
	if err := b.acquire(ctx, custA); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := scopes[i%len(scopes)]
			if err := b.acquire(ctx, s); err == nil {
				_ = b.release(ctx, s)
			}
		}()
	}
	wg.Wait()
	if bound, _ := fb.snapshot(); !bound[event.Binding{Exchange: event.ExchangeCall, Key: event.CustomerKey(custA)}] || len(bound) != 2 {
		t.Errorf("with custA held: bound = %v, want custA's two bindings only", bound)
	}
}

func TestBindingsDetached(t *testing.T) {
	ctx := context.Background()
	fb := newFakeBinder()
	b := newBindings(fb, testExchanges, func(int) {})
	if err := b.acquire(ctx, custA); err != nil {
		t.Fatal(err)
	}
	_, before := fb.snapshot()
	b.detach()
	if err := b.release(ctx, custA); err != nil {
		t.Fatal(err)
	}
	if _, after := fb.snapshot(); after != before {
		t.Errorf("release after detach made %d broker calls, want none", after-before)
	}
	if b.held(custA) != 0 {
		t.Errorf("held after release = %d, want 0", b.held(custA))
	}
}
