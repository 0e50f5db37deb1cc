package main

import (
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/dpop"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

// useDPoP has svc check the DPoP proofs of refreshes (RFC 9449): their
// one-time ids in the cluster-wide cache, so that a proof is used once on
// every instance and across restarts, and nonces under the keyring's MAC
// keys, so that every instance makes and accepts the same ones with no
// state of their own.
func (a *App) useDPoP(svc *tokens.Service, ring *keys.Keyring, metrics *api.Metrics) error {
	algs, err := dpop.ParseAlgs(a.cfg.DPoPSigningAlgs)
	if err != nil {
		return err
	}
	svc.DPoP = &dpop.Verifier{Algs: algs, MaxAge: a.cfg.DPoPProofMaxAge, Skew: a.cfg.DPoPClockSkew, Now: time.Now,
		Replay: a.usedIDs, Keys: func() dpop.NonceKeys { return ring.Loaded() }}
	svc.DPoPRequireNonce = a.cfg.DPoPRequireNonce
	// Over NATS as over HTTP, a proof names the token endpoint unless the
	// caller says which request it came with.
	svc.TokenURL = a.issuer + api.PathToken
	svc.OnProof = metrics.DPoPProof
	return nil
}
