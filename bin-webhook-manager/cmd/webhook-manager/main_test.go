package main

import (
	"bytes"
	"context"
	"database/sql"
	"strings"
	"testing"

	"voipbin/pkg/testenv"
)

func TestRunMigrateAppliesTheTablesAndExits(t *testing.T) {
	dsn := testenv.MySQLDSN(t)
	env := map[string]string{"DATABASE_DSN": dsn, "RABBITMQ_ADDRESS": testenv.RabbitURL(), "REDIS_ADDRESS": testenv.RedisAddress()}
	var logs bytes.Buffer
	if err := run(context.Background(), []string{"migrate"}, func(k string) string { return env[k] }, &logs); err != nil {
		t.Fatalf("migrate: %v\n%s", err, logs.String())
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, table := range []string{"webhook_outbox", "webhook_webhooks", "webhook_deliveries", "webhook_attempts"} {
		if _, err := db.Exec("SELECT 1 FROM " + table + " LIMIT 1"); err != nil {
			t.Errorf("table %s: %v", table, err)
		}
	}
}

func TestRunReportsEveryConfigurationProblem(t *testing.T) {
	env := map[string]string{"WEBHOOK_ALLOWED_NETWORKS": "nope", "WEBHOOK_TIMEOUT": "x"}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err == nil {
		t.Fatal("run started without configuration")
	}
	for _, name := range []string{"DATABASE_DSN", "RABBITMQ_ADDRESS", "REDIS_ADDRESS", "WEBHOOK_ALLOWED_NETWORKS", "WEBHOOK_TIMEOUT"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
}
