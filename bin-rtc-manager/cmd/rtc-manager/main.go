// Command rtc-manager speaks SIP: it dials, rings, answers and hangs up calls for the call manager.
//
//	rtc-manager          serve until SIGINT/SIGTERM
//	rtc-manager migrate  no-op (the rtc manager keeps its dialog state in Redis, not MySQL)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"voipbin/bin-rtc-manager/internal/config"
	"voipbin/pkg/amqp"
	"voipbin/pkg/telemetry"
)

const service = "rtc-manager"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", service, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(stderr, service, telemetry.ParseLevel(cfg.LogLevel))

	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if len(args) > 0 && args[0] == "migrate" {
		return nil
	}

	conn, err := amqp.Dial(startCtx, cfg.RabbitMQAddress, log)
	if err != nil {
		return err
	}
	defer conn.Close()
	rdb := redis.NewClient(&redis.Options{Addr: cfg.RedisAddress})
	defer rdb.Close()

	reg := telemetry.NewRegistry()
	admin := telemetry.NewAdmin(cfg.AdminAddress, reg, map[string]telemetry.Check{
		"rabbitmq": conn.Check,
		"redis":    func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
	})

	// Work stops when ctx ends; the admin server outlives it so /readyz reports the drain.
	work, workCtx := errgroup.WithContext(ctx)
	work.Go(func() error { <-workCtx.Done(); return nil })

	adminCtx, stopAdmin := context.WithCancel(context.Background())
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Run(adminCtx, log) }()

	log.Info("started")
	<-workCtx.Done()
	admin.Drain()
	log.Info("shutting down: finishing work in flight")
	err = work.Wait()
	stopAdmin()
	if aerr := <-adminDone; aerr != nil && err == nil {
		err = aerr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("stopped")
	return nil
}
