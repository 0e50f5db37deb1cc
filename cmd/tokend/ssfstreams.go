package main

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/signals"
)

// openStreams opens the SSF stream store (TOKENS_SSF_STREAMS) with its
// delivery secrets sealed under the deployment's current MAC key, and has
// it seal them again at every keyset change, expiries included, so that
// a rotation's retired key can expire without taking them along.
func openStreams(ctx context.Context, js jetstream.JetStream, replicas int, ring *keys.Keyring, outbox signals.Outbox, log *slog.Logger) (*signals.Store, error) {
	s, err := signals.Open(ctx, js, signals.Options{Replicas: replicas, Log: log, Keys: ring.Loaded(), Outbox: outbox})
	if err != nil {
		return nil, err
	}
	if err := ring.OnChange(func(l *keys.LoadedKeys) error { s.UseKeys(l); return nil }); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}
