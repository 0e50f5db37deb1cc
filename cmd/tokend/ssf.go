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
// issuer, as for access tokens.
func (a *App) openSSF(ctx context.Context, ring *keys.Keyring, subjects events.Subjects, metrics *api.Metrics) (*signals.Store, *signals.Engine, error) {
	engine := signals.NewEngine(signals.EngineOptions{
		JS:        a.js,
		Subjects:  subjects,
		Replicas:  a.cfg.StreamReplicas,
		Mapper:    signals.Mapper{Issuer: a.issuer},
		Signer:    setSigner{ring},
		Receivers: a.clients.Lookup,
		Metrics:   metrics,
		Log:       a.log.With("component", "ssf"),
	})
	streams, err := signals.Open(ctx, a.js, signals.Options{Replicas: a.cfg.StreamReplicas, Log: a.log.With("component", "ssf"),
		OnChange: engine.Changed})
	if err != nil {
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
