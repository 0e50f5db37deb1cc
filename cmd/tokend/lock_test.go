package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
)

// TestDataDirIsLocked: a second tokend on the same --data-dir (other
// ports) refuses to start and names the directory and the holder's PID;
// once the first stops, the directory is free.
func TestDataDirIsLocked(t *testing.T) {
	first := testConfig(t)
	app := MustApp(t, first, nil)

	second := testConfig(t)
	second.DataDir = first.DataDir
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if other, err := Start(context.Background(), second, quiet); err == nil {
		other.Stop()
		t.Fatal("a second tokend started on a data directory in use")
	} else if want := fmt.Sprintf("data dir %s is in use by another tokend (pid %d)", first.DataDir, os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}

	app.Stop()
	again, err := Start(context.Background(), second, quiet)
	if err != nil {
		t.Fatalf("the data directory stayed locked after the first tokend stopped: %v", err)
	}
	again.Stop()
}
