// Package lifecycle runs a service's long-lived parts and stops them in the order that loses
// nothing. When ctx ends: /readyz turns 503 so no new work is routed here; the work (RPC servers,
// HTTP servers, subscribers, dispatchers) stops taking new items and finishes what it holds; then
// the trailing parts (outbox relays) stop, after a last pass over what that work committed; last
// the admin server stops. The first part to fail stops the others the same way.
package lifecycle

import (
	"context"
	"errors"
	"log/slog"

	"golang.org/x/sync/errgroup"

	"voipbin/pkg/telemetry"
)

var errTrailingStopped = errors.New("a trailing part stopped early")

// Task is one long-lived part: it runs until ctx ends, then returns nil once it has finished
// what it was doing.
type Task func(ctx context.Context) error

// Parts are what Run runs.
type Parts struct {
	// Admin serves /healthz, /readyz and /metrics for the whole life of the process.
	Admin *telemetry.Admin
	// Work takes requests and events.
	Work []Task
	// Trailing outlives Work, so that what Work committed while draining still leaves (the
	// outbox relay).
	Trailing []Task
}

// Run runs the parts until ctx ends or one of them fails, then stops them in order. It returns
// the first failure, or nil after a clean stop.
func Run(ctx context.Context, log *slog.Logger, p Parts) error {
	adminCtx, stopAdmin := context.WithCancel(context.WithoutCancel(ctx))
	adminDone := make(chan error, 1)
	go func() { adminDone <- p.Admin.Run(adminCtx, log) }()

	trailCtx, stopTrailing := context.WithCancel(context.WithoutCancel(ctx))
	trailing, trailCtx := errgroup.WithContext(trailCtx)
	for _, t := range p.Trailing {
		trailing.Go(func() error { return t(trailCtx) })
	}

	// The work is stopped explicitly too: when a trailing part fails, the watcher below may see
	// stopWork first and return nil, which would leave workCtx running.
	workParent, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	work, workCtx := errgroup.WithContext(workParent)
	for _, t := range p.Work {
		work.Go(func() error { return t(workCtx) })
	}
	stopWork := make(chan struct{})
	work.Go(func() error { // a failing trailing part stops the work too
		select {
		case <-trailCtx.Done():
			return errTrailingStopped
		case <-stopWork:
			return nil
		}
	})

	log.Info("started")
	select {
	case <-workCtx.Done():
	case <-trailCtx.Done():
	}
	p.Admin.Drain()
	log.Info("shutting down: finishing work in flight")
	close(stopWork)
	cancelWork()
	err := work.Wait()
	stopTrailing()
	if terr := trailing.Wait(); terr != nil || errors.Is(err, errTrailingStopped) {
		err = terr
	}
	stopAdmin()
	if aerr := <-adminDone; aerr != nil && err == nil {
		err = aerr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("stopped with an error", "error", err)
		return err
	}
	log.Info("stopped")
	return nil
}
