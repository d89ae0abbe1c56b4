// Command webhook-manager delivers signed events to customers' webhooks.
//
//	webhook-manager          serve until SIGINT/SIGTERM
//	webhook-manager migrate  apply the database migrations and exit
package main

import (
	"context"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-webhook-manager/internal/config"
	"voipbin/bin-webhook-manager/internal/mysql"
	"voipbin/bin-webhook-manager/internal/netguard"
	"voipbin/bin-webhook-manager/internal/rpcserver"
	"voipbin/bin-webhook-manager/internal/sender"
	"voipbin/bin-webhook-manager/internal/subscriber"
	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/bin-webhook-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/lifecycle"
	"voipbin/pkg/migrate"
	"voipbin/pkg/rpc"
	"voipbin/pkg/sqldb"
	"voipbin/pkg/telemetry"
)

const service = "webhook-manager"

// main runs the service; `<binary> vars` prints the variables its config reads (deploy/check).
func main() { lifecycle.Main(service, config.Vars, run) }

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	log := telemetry.NewLogger(stderr, service, telemetry.ParseLevel(cfg.LogLevel))

	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	db, err := migrate.Open(startCtx, cfg.DatabaseDSN, migrations.FS, "webhook", log)
	if err != nil {
		return err
	}
	defer db.Close()
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
		"mysql":    sqldb.Check(db),
		"rabbitmq": conn.Check,
		"redis":    func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
	})
	relay := event.NewRelay(db, conn, "webhook_outbox", log, event.RelayOptions{Registerer: reg})

	guard := netguard.New(cfg.AllowedNetworks, nil)
	hooks := mysql.NewWebhookStore(db)
	deliveries := mysql.NewDeliveryStore(db)
	dispatcher := webhook.NewDispatcher(deliveries, sender.New(guard.Control), log, webhook.DispatcherOptions{
		Workers:    cfg.Workers,
		Interval:   cfg.PollInterval,
		Timeout:    cfg.Timeout,
		Policy:     webhook.Policy{Base: cfg.RetryBase, Max: cfg.RetryMax, Window: cfg.RetryWindow},
		Registerer: reg,
	})
	svc := webhook.NewService(hooks, deliveries, guard, dispatcher.Kick)
	fanout := webhook.NewFanout(deliveries, dispatcher.Kick)
	rpcSrv := rpc.NewServer(conn, cfg.RPCQueue, log, rpc.ServerOptions{Registerer: reg})
	rpcserver.New(svc).Register(rpcSrv)
	events := subscriber.New(conn, log, subscriber.Options{Queue: cfg.EventQueue, Redis: rdb, Registerer: reg}, fanout.HandleBatch)

	return lifecycle.Run(ctx, log, lifecycle.Parts{
		Admin: admin,
		Work: []lifecycle.Task{
			rpcSrv.Run,
			events.Run,
			dispatcher.Run,
		},
		Trailing: []lifecycle.Task{relay.Run},
	})
}
