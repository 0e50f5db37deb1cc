// Package projections builds the SQLite read model from the TOKENS stream and
// answers lookups and audit queries from it.
package projections

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"net/url"
	"sort"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver

	"github.com/tokend/tokend/queries"
)

// DB is the read model: one writer connection (SQLite allows one writer at a
// time, so a pool would only queue on its lock) and a read-only pool, which
// WAL lets read while the writer writes.
type DB struct {
	writer, reader *sql.DB
	W, R           *queries.Queries
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string) (*DB, error) {
	pragmas := "_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(ON)"
	// The writer's page cache holds the index pages that random token and
	// family keys touch (SQLite's default 2 MiB re-read them from the file on
	// every insert); checkpoints every 64 MiB of WAL write a hot page once
	// for many commits. Readers share the OS page cache and keep small
	// caches of their own, so eight of them do not add up.
	writer, err := sql.Open("sqlite", "file:"+url.PathEscape(path)+"?"+pragmas+
		"&_pragma=cache_size(-32768)&_pragma=wal_autocheckpoint(16384)&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	writer.SetMaxOpenConns(1)
	if err := migrate(ctx, writer); err != nil {
		writer.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	reader, err := sql.Open("sqlite", "file:"+url.PathEscape(path)+"?mode=ro&"+pragmas+"&_pragma=cache_size(-4096)")
	if err != nil {
		writer.Close()
		return nil, err
	}
	reader.SetMaxOpenConns(8)
	db := &DB{writer: writer, reader: reader}
	if db.W, err = queries.Prepare(ctx, writer); err == nil {
		db.R, err = queries.Prepare(ctx, reader)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("prepare queries: %w", err)
	}
	return db, nil
}

// Close closes both pools.
func (db *DB) Close() error {
	if db.W != nil {
		db.W.Close()
	}
	if db.R != nil {
		db.R.Close()
	}
	db.reader.Close()
	return db.writer.Close()
}

// reset empties every table, which leaves the read model as a new
// database leaves it: each of them holds only what the stream gave it.
// Rows go in one transaction, so readers see the old model or an empty one.
func (db *DB) reset(ctx context.Context) error {
	tx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
	if err != nil {
		return err
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, table := range tables {
		if _, err := tx.ExecContext(ctx, `DELETE FROM "`+table+`"`); err != nil {
			return fmt.Errorf("empty %s: %w", table, err)
		}
	}
	return tx.Commit()
}

// migrate applies the migrations newer than the database's user_version,
// each in its own transaction with the version bump.
func migrate(ctx context.Context, db *sql.DB) error {
	names, err := fs.Glob(queries.Migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	for i := version; i < len(names); i++ {
		body, err := fs.ReadFile(queries.Migrations, names[i])
		if err != nil {
			return err
		}
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("%s: %w", names[i], err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}
