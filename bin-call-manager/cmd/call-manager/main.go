// Command call-manager holds call records and the call state machine.
//
//	call-manager          serve until SIGINT/SIGTERM
//	call-manager migrate  apply the database migrations and exit
package main

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"voipbin/bin-call-manager/internal/cache"
	"voipbin/bin-call-manager/internal/call"
	"voipbin/bin-call-manager/internal/config"
	"voipbin/bin-call-manager/internal/mysql"
	"voipbin/bin-call-manager/internal/rpcserver"
	"voipbin/bin-call-manager/internal/subscriber"
	"voipbin/bin-call-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
	"voipbin/pkg/lifecycle"
	"voipbin/pkg/migrate"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
	"voipbin/pkg/sqldb"
	"voipbin/pkg/telemetry"
)

const service = "call-manager"

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
	db, err := migrate.Open(startCtx, cfg.DatabaseDSN, migrations.FS, "call", log)
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
	rdb := cache.NewClient(cfg.RedisAddress)
	defer rdb.Close()
	redis.SetLogger(cache.Logger{Log: log}) // the library's logger is process-wide; only main sets it
	rpcClient := rpc.NewClient(conn, log, rpc.ClientOptions{})
	defer rpcClient.Close()

	reg := telemetry.NewRegistry()
	// Redis is a cache: the service serves without it, so it is not a readiness check (its
	// failures show in call_cache_operations_total{result="error"}).
	admin := telemetry.NewAdmin(cfg.AdminAddress, reg, map[string]telemetry.Check{
		"mysql":    sqldb.Check(db),
		"rabbitmq": conn.Check,
	})
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Run(adminCtx, log) }()

	log.Info("started")
	err = serve(ctx, wiring{
		cfg: cfg.Call, log: log, reg: reg, db: db, conn: conn, rdb: rdb, caller: rpcClient,
		queue: callapi.Queue, rtcQueue: subscriber.Queue, rtcBindings: []event.Binding{subscriber.AllRTCEvents},
		onStop: func() {
			admin.Drain()
			log.Info("shutting down: finishing work in flight")
		},
	})
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

// wiring is what serve runs on. main fills it with the production names; tests with their own
// queues, a caller that reaches their stand-ins for billing and rtc, and a clock.
type wiring struct {
	cfg         config.Call
	log         *slog.Logger
	reg         prometheus.Registerer
	db          *sql.DB
	conn        *amqp.Conn
	rdb         *redis.Client
	caller      rpc.Caller // to billing and rtc
	queue       string     // the request queue served
	rtcQueue    string     // the durable queue of rtc events
	rtcBindings []event.Binding
	now         func() time.Time // nil: time.Now
	onStop      func()           // called once when work starts to stop (nil: nothing)
}

// serve builds the call manager on w and runs it until ctx ends (or a part fails): the RPC
// server, the rtc event subscriber, the reaper, the quota renewer and the cache's stale-entry
// cleaner, then lets the outbox relay publish what they committed before it returns.
func serve(ctx context.Context, w wiring) error {
	relay := event.NewRelay(w.db, w.conn, mysql.OutboxTable, w.log, event.RelayOptions{Registerer: w.reg})
	store := mysql.NewCallStore(w.db)
	calls := cache.New(w.rdb, w.log, cache.Options{TTL: w.cfg.CacheTTL, Registerer: w.reg})
	billing, rtc := billingapi.NewClient(w.caller), rtcapi.NewClient(w.caller)
	svc := call.NewService(call.Deps{
		Store: store, Requests: store, Due: store, Cache: calls,
		Gate: billing, RTC: rtc, Credit: billing, Enforcer: rtc, Renewals: store,
		Relay: relay, Log: w.log, Metrics: call.NewMetrics(w.reg), Now: w.now,
		Settings: call.Settings{DialTimeout: w.cfg.DialTimeout, MaxDuration: w.cfg.MaxDuration,
			ReaperGrace: w.cfg.ReaperGrace, ProbeInterval: w.cfg.ProbeInterval, RPCTimeout: w.cfg.RPCTimeout,
			CreateBudget: w.cfg.CreateBudget, GateBudget: w.cfg.GateBudget, DialBudget: w.cfg.DialBudget,
			QuotaLead: w.cfg.QuotaLead, QuotaInterval: w.cfg.QuotaInterval},
	})
	srv := rpc.NewServer(w.conn, w.queue, w.log, rpc.ServerOptions{Registerer: w.reg})
	rpcserver.Register(srv, svc)
	sub := subscriber.New(w.conn, w.log, svc, subscriber.Options{Queue: w.rtcQueue, Bindings: w.rtcBindings, Registerer: w.reg})

	// The relay outlives the work so events committed by requests in flight still leave.
	relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()

	work, workCtx := errgroup.WithContext(ctx)
	work.Go(func() error { return srv.Run(workCtx) })
	work.Go(func() error { return sub.Run(workCtx) })
	work.Go(func() error { return svc.RunReaper(workCtx, w.cfg.ReaperInterval) })
	work.Go(func() error { return svc.RunRenewer(workCtx, w.cfg.QuotaInterval) })
	work.Go(func() error { return calls.Run(workCtx) })
	work.Go(func() error { return svc.RunRequestPurge(workCtx, store, time.Hour) })
	work.Go(func() error {
		<-workCtx.Done()
		if w.onStop != nil {
			w.onStop()
		}
		return nil
	})
	err := work.Wait()
	stopRelay()
	if rerr := <-relayDone; rerr != nil && err == nil {
		err = rerr
	}
	return err
}
