package main

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// storeHolds reports whether any file of the embedded JetStream store
// under dataDir contains s.
func storeHolds(tb testing.TB, dataDir, s string) bool {
	tb.Helper()
	found := false
	err := filepath.WalkDir(filepath.Join(dataDir, "jetstream"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		found = found || bytes.Contains(data, []byte(s))
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return found
}

// TestStoreEncryptedAtRest: with --js-key-file the embedded store holds
// no event in the clear (without it, it does: the control); the same key
// reads it back after a restart, and another key is refused.
func TestStoreEncryptedAtRest(t *testing.T) {
	const marker = "subject-that-must-not-be-readable-on-disk"
	run := func(cfg Config) {
		app := MustApp(t, cfg, nil)
		mustIssue(t, eventstest.MustConnect(t, app.NATSURL()), marker, "web-app")
		app.Stop()
	}
	plain := testConfig(t)
	run(plain)
	if !storeHolds(t, plain.DataDir, marker) {
		t.Fatal("control: the unencrypted store does not hold the subject, so this test proves nothing")
	}

	encrypted := testConfig(t)
	keyFile := filepath.Join(t.TempDir(), "js.key")
	if err := os.WriteFile(keyFile, []byte("a-test-key-of-more-than-32-bytes-for-jetstream\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	encrypted.JSKeyFile = keyFile
	run(encrypted)
	if storeHolds(t, encrypted.DataDir, marker) {
		t.Fatal("the encrypted store holds the subject in the clear")
	}

	// The same key reads the families back.
	app := MustApp(t, encrypted, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	if page := auditPages(t, nc, wire.AuditRequest{Subject: marker}, 100); len(page) != 1 {
		t.Fatalf("after a restart with the key: %d events of the family, want 1", len(page))
	}
	app.Stop()

	if err := os.WriteFile(keyFile, []byte("another-key-of-more-than-32-bytes-for-jetstream"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	other, err := Start(context.Background(), encrypted, slog.New(slog.NewTextHandler(logs, nil)))
	if err == nil {
		other.Stop()
		t.Fatalf("started with another key:\n%s", logs)
	}
	if !strings.Contains(err.Error(), "--js-key-file") {
		t.Fatalf("with another key: %v; want an error naming --js-key-file", err)
	}

	short := testConfig(t)
	os.WriteFile(keyFile, []byte("short"), 0o600)
	short.JSKeyFile = keyFile
	if _, err := Start(context.Background(), short, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "32 bytes") {
		t.Fatalf("a short key: %v", err)
	}
}
