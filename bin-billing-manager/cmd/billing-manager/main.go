// Command billing-manager holds billing accounts, the balance gate and call charges.
//
//	billing-manager          serve until SIGINT/SIGTERM
//	billing-manager migrate  apply the database migrations and exit
package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/redis/go-redis/v9"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/bin-billing-manager/internal/config"
	"voipbin/bin-billing-manager/internal/mysql"
	"voipbin/bin-billing-manager/internal/rpcserver"
	"voipbin/bin-billing-manager/internal/subscriber"
	"voipbin/bin-billing-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/event"
	"voipbin/pkg/lifecycle"
	"voipbin/pkg/migrate"
	"voipbin/pkg/rpc"
	"voipbin/pkg/sqldb"
	"voipbin/pkg/telemetry"
)

const service = "billing-manager"

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
	db, err := migrate.Open(startCtx, cfg.DatabaseDSN, migrations.FS, "billing", log)
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

	// The relay publishes to billing.events; declare it (again after every reconnection).
	if err := conn.Declare(startCtx, func(ch *amqp.Channel) error { return event.DeclareExchange(ch, event.ExchangeBilling) }); err != nil {
		return fmt.Errorf("declare %s: %w", event.ExchangeBilling, err)
	}

	reg := telemetry.NewRegistry()
	// Redis only dedupes events here (the database makes every handler idempotent), so billing
	// stays ready without it.
	admin := telemetry.NewAdmin(cfg.AdminAddress, reg, map[string]telemetry.Check{
		"mysql":    sqldb.Check(db),
		"rabbitmq": conn.Check,
	})
	relay := event.NewRelay(db, conn, mysql.OutboxTable, log, event.RelayOptions{Registerer: reg})
	store := mysql.NewStore(db, mysql.Options{OnCommit: relay.Kick})
	svc := billing.NewService(billing.Deps{Store: store, Reader: store, Policy: cfg.Policy})

	server := rpc.NewServer(conn, billingapi.Queue, log, rpc.ServerOptions{Workers: cfg.RPCWorkers, Registerer: reg})
	rpcserver.New(rpcserver.Deps{Gate: svc, Accounts: svc, Log: log, Registerer: reg}).Register(server)
	events := subscriber.New(subscriber.Deps{Opener: svc, Charger: svc, Log: log, Registerer: reg})
	sub := event.NewSubscriber(conn, log, event.SubscriberOptions{
		Queue: subscriber.Queue, Bindings: subscriber.Bindings(), Workers: cfg.EventWorkers,
		Dedupe: event.NewRedisDeduper(rdb, "billing:event:", 24*time.Hour), Registerer: reg,
	}, events.Handle)
	sweeper := mysql.NewSweeper(db, log, mysql.SweeperOptions{Registerer: reg})

	log.Info("serving", "queue", billingapi.Queue, "event_queue", subscriber.Queue,
		"rate_tel", cfg.Policy.Rates[billing.DestinationTel], "rate_sip", cfg.Policy.Rates[billing.DestinationSIP],
		"initial_balance", cfg.Policy.InitialBalance, "quota_slice", cfg.Policy.Slice.String(), "increment", cfg.Policy.Increment.String(),
		"reservation_ttl", cfg.Policy.ReservationTTL)
	return lifecycle.Run(ctx, log, lifecycle.Parts{
		Admin: admin,
		Work: []lifecycle.Task{
			server.Run,
			sub.Run,
			sweeper.Run,
		},
		Trailing: []lifecycle.Task{relay.Run},
	})
}
