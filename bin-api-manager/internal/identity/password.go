package identity

import (
	"context"
	"crypto/rand"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/crypto/bcrypt"

	"voipbin/pkg/apierr"
)

// ReasonPasswordChecksBusy answers a login or a password change that found every password-hashing
// slot taken for longer than HashLimit.Wait.
const ReasonPasswordChecksBusy = "PASSWORD_CHECKS_BUSY"

// ErrPasswordChecksBusy is returned when no hashing slot freed up in time (503, Retry-After 1).
var ErrPasswordChecksBusy = apierr.New(apierr.Unavailable, ReasonPasswordChecksBusy,
	"too many password checks in progress; retry in a moment")

// HashLimit bounds the CPU that password hashing may take: bcrypt is deliberately slow, and
// unbounded it lets a login flood starve every other request of CPU.
type HashLimit struct {
	// Concurrency is how many hashes run at once (0: half the usable cores, at least 1), so the
	// other cores stay free for everything else.
	Concurrency int
	// Wait is how long a hash waits for a slot before ErrPasswordChecksBusy (0: 1 s).
	Wait time.Duration
}

// DefaultHashConcurrency is HashLimit.Concurrency's default: half the usable cores, at least 1.
func DefaultHashConcurrency() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// Passwords hashes and checks passwords with bcrypt, a bounded number at a time, each on an OS
// thread of low scheduling priority (Linux), so that whatever else runs on the machine — other
// requests, Redis, the broker — goes first.
type Passwords struct {
	cost int
	// dummy is checked against when a login names no user, so a failed login costs the same
	// time whether or not the user exists.
	dummy []byte
	slots chan struct{}
	wait  time.Duration
}

// NewPasswords hashes at cost (bcrypt.MinCost … bcrypt.MaxCost) within limit.
func NewPasswords(cost int, limit HashLimit) (*Passwords, error) {
	if limit.Concurrency <= 0 {
		limit.Concurrency = DefaultHashConcurrency()
	}
	if limit.Wait <= 0 {
		limit.Wait = time.Second
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	dummy, err := bcrypt.GenerateFromPassword(secret, cost)
	if err != nil {
		return nil, fmt.Errorf("bcrypt cost %d: %w", cost, err)
	}
	return &Passwords{cost: cost, dummy: dummy, slots: make(chan struct{}, limit.Concurrency), wait: limit.Wait}, nil
}

// Concurrency is the number of hashes that may run at once.
func (p *Passwords) Concurrency() int { return cap(p.slots) }

// run runs f in a slot, on a thread of its own with low priority. It returns
// ErrPasswordChecksBusy when no slot freed up within the wait (or ctx's end, if sooner).
func (p *Passwords) run(ctx context.Context, f func()) error {
	t := time.NewTimer(p.wait)
	defer t.Stop()
	select {
	case p.slots <- struct{}{}:
	case <-t.C:
		return ErrPasswordChecksBusy
	case <-ctx.Done():
		return ErrPasswordChecksBusy
	}
	defer func() { <-p.slots }()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The goroutine ends while locked, so its thread, whose priority was lowered, ends with
		// it and never runs anything else. A new thread costs microseconds; a hash, milliseconds.
		runtime.LockOSThread()
		lowerThreadPriority()
		f()
	}()
	<-done
	return nil
}

// Hash makes the stored form of a password.
func (p *Passwords) Hash(ctx context.Context, password string) (string, error) {
	var h []byte
	var err error
	if rerr := p.run(ctx, func() { h, err = bcrypt.GenerateFromPassword([]byte(password), p.cost) }); rerr != nil {
		return "", rerr
	}
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// Verify reports whether password matches hash. An empty hash (no such user) is checked against
// a dummy hash of the same cost and never matches. The error is ErrPasswordChecksBusy.
func (p *Passwords) Verify(ctx context.Context, hash, password string) (bool, error) {
	against := []byte(hash)
	if hash == "" {
		against = p.dummy
	}
	var ok bool
	if err := p.run(ctx, func() { ok = bcrypt.CompareHashAndPassword(against, []byte(password)) == nil }); err != nil {
		return false, err
	}
	return ok && hash != "", nil
}
