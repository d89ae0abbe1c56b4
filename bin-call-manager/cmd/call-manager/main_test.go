package main

import (
	"bytes"
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

func TestRunMigrateAppliesTheMigrationsAndExits(t *testing.T) {
	dsn := testenv.MySQLDSN(t)
	env := map[string]string{"DATABASE_DSN": dsn, "RABBITMQ_ADDRESS": testenv.RabbitURL(), "REDIS_ADDRESS": testenv.RedisAddress()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	if err := run(ctx, []string{"migrate"}, func(k string) string { return env[k] }, &stderr); err != nil {
		t.Fatalf("run migrate: %v\n%s", err, stderr.String())
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, table := range []string{"call_calls", "call_outbox", "call_goose_db_version"} {
		var n int
		if err := db.QueryRow("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", table).Scan(&n); err != nil || n != 1 {
			t.Errorf("table %s: %d, %v", table, n, err)
		}
	}
	if !strings.Contains(stderr.String(), `"msg":"migration applied"`) {
		t.Errorf("no migration logged: %s", stderr.String())
	}
}

func TestRunReportsEveryConfigProblem(t *testing.T) {
	env := map[string]string{"CALL_DIAL_TIMEOUT": "soon"}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err == nil {
		t.Fatal("run with no configuration succeeded")
	}
	for _, name := range []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "CALL_DIAL_TIMEOUT"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}
