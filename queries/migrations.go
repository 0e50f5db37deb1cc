package queries

import "embed"

// Migrations holds the schema as numbered migrations, applied in name order;
// sqlc reads the same files as the schema.
//
//go:embed migrations/*.sql
var Migrations embed.FS
