package migrate_test

import (
	"context"
	"sync"
	"testing"
	"testing/fstest"

	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

func TestUpAppliesOnceUnderConcurrentInstances(t *testing.T) {
	db := testenv.MySQL(t)
	fsys := fstest.MapFS{
		"00001_init.sql": {Data: []byte("-- +goose Up\nCREATE TABLE t1 (id INT PRIMARY KEY);\n-- +goose Down\nDROP TABLE t1;\n")},
		"00002_more.sql": {Data: []byte("-- +goose Up\nINSERT INTO t1 VALUES (1);\n-- +goose Down\nDELETE FROM t1;\n")},
	}
	var wg sync.WaitGroup
	applied := make(chan int, 4)
	for range 4 { // four instances starting at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := migrate.Up(context.Background(), db, fsys, "svc", testenv.Logger(t))
			if err != nil {
				t.Errorf("Up: %v", err)
			}
			applied <- n
		}()
	}
	wg.Wait()
	close(applied)
	total := 0
	for n := range applied {
		total += n
	}
	if total != 2 {
		t.Fatalf("migrations applied %d times in all, want 2", total)
	}
	var rows int
	if err := db.QueryRow("SELECT COUNT(*) FROM t1").Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("rows = %d (%v), want 1", rows, err)
	}
	// Another service keeps its own version table in the same database.
	other := fstest.MapFS{"00001_x.sql": {Data: []byte("-- +goose Up\nCREATE TABLE t2 (id INT);\n")}}
	if n, err := migrate.Up(context.Background(), db, other, "other", testenv.Logger(t)); err != nil || n != 1 {
		t.Fatalf("other service: n=%d err=%v, want 1 applied", n, err)
	}
}
