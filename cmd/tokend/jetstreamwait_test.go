package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events/eventstest"
)

// TestWaitForJetStream: a server with JetStream answers at once; one
// without never does, and the wait ends with ctx, saying why.
func TestWaitForJetStream(t *testing.T) {
	for _, tc := range []struct {
		name    string
		url     string
		wantErr string
	}{
		{"JetStream", eventstest.MustJetStream(t).ClientURL(), ""},
		{"no JetStream", eventstest.MustServer(t).ClientURL(), "jetstream did not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, err := jetstream.New(eventstest.MustConnect(t, tc.url))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			err = waitForJetStream(ctx, js, slog.New(slog.DiscardHandler))
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("waitForJetStream: %v, want %q", err, tc.wantErr)
			}
		})
	}
}
