// Package migrations embeds the SQL migrations of the webhook manager's tables.
package migrations

import "embed"

// FS holds the migration files, applied in order by pkg/migrate.
//
//go:embed *.sql
var FS embed.FS
