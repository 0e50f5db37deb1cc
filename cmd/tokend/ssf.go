package main

import (
	"context"
	"crypto"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/signals"
)

// openSSF opens the SSF streams (TOKENS_SSF_STREAMS) and starts the
// delivery engine that follows them. Delivery is always on, with no flag:
// a stream exists only because a receiver or an operator asked for it,
// and push and webhook streams need no listener of this instance (polls
// come through the OAuth listener, --oauth-http). Every SET's iss is the
// issuer, as for access tokens. The streams' delivery secrets are sealed
// under the current MAC key and sealed again at every keyset change,
// expiries included, so that a rotation's retired key can expire without
// taking them along.
func (a *App) openSSF(ctx context.Context, ring *keys.Keyring, outbox signals.Outbox, subjects events.Subjects, metrics *api.Metrics) (*signals.Store, *signals.Engine, error) {
	log := a.log.With("component", "ssf")
	// The engine and the store know each other: the store tells the engine
	// of every change, the engine asks the store to open secrets, which it
	// does only once started, after Open.
	var streams *signals.Store
	engine := signals.NewEngine(signals.EngineOptions{
		JS:        a.js,
		Subjects:  subjects,
		Replicas:  a.cfg.StreamReplicas,
		Mapper:    signals.Mapper{Issuer: a.issuer, Protector: a.protector},
		Signer:    setSigner{ring},
		Receivers: a.clients.Lookup,
		Secrets:   func(st signals.Stream) (signals.DeliverySecrets, error) { return streams.DeliverySecrets(st) },
		Metrics:   metrics,
		Log:       log,
	})
	streams, err := signals.Open(ctx, a.js, signals.Options{Replicas: a.cfg.StreamReplicas, Log: log,
		Keys: ring.Loaded(), Outbox: outbox, OnChange: engine.Changed})
	if err != nil {
		return nil, nil, err
	}
	if err := ring.OnChange(func(l *keys.LoadedKeys) error { streams.UseKeys(l); return nil }); err != nil {
		streams.Stop()
		return nil, nil, err
	}
	if err := engine.Start(ctx); err != nil {
		streams.Stop()
		return nil, nil, err
	}
	return streams, engine, nil
}

// setSigner signs SETs with the deployment's current SET key.
type setSigner struct{ ring *keys.Keyring }

func (s setSigner) SETKey() (string, crypto.Signer, error) {
	kid, key, err := s.ring.Loaded().SETSigner()
	if err != nil {
		return "", nil, err
	}
	return kid, key, nil
}
