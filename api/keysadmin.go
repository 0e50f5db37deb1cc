package api

import (
	"context"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/registry"
)

// Subjects of key administration, relative to the prefix. Key material never
// leaves tokend: operators stage, promote and revoke keys here instead of
// reading the key bucket, which only tokend's NATS user may.
const (
	// SubjectKeysStage adds a next key of each kind: MAC, signing and SET
	// (one instance answers).
	SubjectKeysStage = "admin.keys.stage"
	// SubjectKeysPromote makes the next keys current and retires the
	// current ones (one instance answers).
	SubjectKeysPromote = "admin.keys.promote"
	// SubjectKeysRevoke removes a compromised key at once, whatever its
	// state, and makes another key current in the same change if it was
	// current (one instance answers).
	SubjectKeysRevoke = "admin.keys.revoke"
	// SubjectKeysStatus is answered by every instance (no queue group) with
	// the keyset revision it has loaded.
	SubjectKeysStatus = "admin.keys.status"
)

// KeysRequest is the body of a stage or promote request; {} is valid.
type KeysRequest struct {
	// Revision, if set, makes the change conditional: it happens only if
	// the stored keyset is still at this revision, else invalid_request.
	Revision uint64 `json:"revision,omitempty"`
}

// KeysRevokeRequest is the body of a revoke request.
type KeysRevokeRequest struct {
	Kid    string `json:"kid"`
	Reason string `json:"reason"` // why, for the log: required, at most 256 bytes
	// Revision, if set, makes the revocation conditional, as in KeysRequest.
	Revision uint64 `json:"revision,omitempty"`
	By       string `json:"by,omitempty"` // who revokes (required unless the NATS user is known)
}

// KeysRevoked answers revoke: the key status as written, the key removed,
// and, if it was current, the key current in its place.
type KeysRevoked struct {
	KeysStatus
	Revoked KeyView `json:"revoked"` // as it was before the revocation
	// Replacement is the key made current in place of a revoked current
	// key: the staged key of its kind, or a new one (Generated), which
	// resource servers learn at their next fetch of the JWKS.
	Replacement *KeyView `json:"replacement,omitempty"`
	Generated   bool     `json:"generated,omitempty"`
}

// KeysStatus answers stage and promote (the keyset as written) and status
// (the keyset an instance has loaded). It never holds key material.
type KeysStatus struct {
	InstanceID string    `json:"instance_id"` // the micro service instance id, as $SRV.PING.tokens reports it
	Revision   uint64    `json:"revision"`    // the TOKENS_KEYS revision
	Keys       []KeyView `json:"keys"`        // MAC keys, then signing keys, then SET keys; each current, next, retired
}

// KeyView describes one key.
type KeyView struct {
	Kid       string `json:"kid"`
	Kind      string `json:"kind"`  // "mac" (refresh tokens), "signing" (access tokens) or "set" (Security Event Tokens)
	State     string `json:"state"` // "next", "current" or "retired"
	CreatedAt string `json:"created_at"`
	// PromotedAt is when the key became current: it made every token of
	// its kind from then until RetiredAt (or now, if it is current).
	// Absent for staged keys and keys promoted before tokend recorded it.
	PromotedAt string `json:"promoted_at,omitempty"`
	RetiredAt  string `json:"retired_at,omitempty"`
	ExpiresAt  string `json:"expires_at,omitempty"` // retired keys: verifies until this, then leaves the JWKS
}

// addKeysAdmin registers the key administration endpoints on svc.
func (s *Service) addKeysAdmin(svc micro.Service, prefix string) error {
	ring := s.Tokens.Keyring()
	id := svc.Info().ID
	change := func(what string, apply func(context.Context, uint64) (*keys.LoadedKeys, error)) func(context.Context, []byte, registry.Actor) (any, error) {
		return func(ctx context.Context, data []byte, who registry.Actor) (any, error) {
			var in KeysRequest
			if err := Decode(data, &in); err != nil {
				return nil, err
			}
			l, err := apply(ctx, in.Revision)
			if err != nil {
				return nil, err
			}
			s.Log.Info("keys "+what, "revision", l.Revision, "nats_user", who.NATSUser)
			return keysStatus(id, l), nil
		}
	}
	endpoints := []adminEndpoint{
		{"keys_stage", SubjectKeysStage, change("staged", ring.Stage), nil},
		{"keys_promote", SubjectKeysPromote, change("promoted", ring.Promote), nil},
		{"keys_revoke", SubjectKeysRevoke, func(ctx context.Context, data []byte, who registry.Actor) (any, error) {
			return s.revokeKey(ctx, ring, id, data, who)
		}, nil},
		{"keys_status", SubjectKeysStatus, func(context.Context, []byte, registry.Actor) (any, error) {
			return keysStatus(id, ring.Loaded()), nil
		}, []micro.EndpointOpt{micro.WithEndpointQueueGroupDisabled()}},
	}
	return s.addAdminEndpoints(svc, prefix, requestTimeout, endpoints)
}

// revokeKey answers a revoke request. The revocation is logged as a
// warning, with who asked and why, on the instance that made it, and
// recorded as key.revoked; every instance logs the revision it then loads.
func (s *Service) revokeKey(ctx context.Context, ring *keys.Keyring, instanceID string, data []byte, who registry.Actor) (any, error) {
	var in KeysRevokeRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	if !domain.ValidID(in.Kid) {
		return nil, domain.Errorf(domain.EInvalidRequest, "kid is required: the id of the key to revoke (tokenctl keys list)")
	}
	if err := domain.ValidateName("reason", in.Reason); err != nil {
		return nil, err
	}
	by, err := actor(in.By, who)
	if err != nil {
		return nil, err
	}
	l, r, err := ring.Revoke(ctx, in.Kid, in.Revision)
	if err != nil {
		return nil, err
	}
	out := KeysRevoked{KeysStatus: keysStatus(instanceID, l), Revoked: keyView(r.Kind, r.Revoked), Generated: r.Generated}
	replacement := ""
	if r.Current != nil {
		v := keyView(r.Kind, *r.Current)
		out.Replacement, replacement = &v, v.Kid
	}
	s.Log.Warn("key revoked", "kid", r.Revoked.ID, "kind", r.Kind, "state", r.Revoked.State, "reason", in.Reason,
		"by", by, "nats_user", who.NATSUser, "revision", l.Revision, "current", replacement, "generated", r.Generated)
	s.Metrics.KeyRevoked(r.Kind)
	s.recordDeployment(ctx, events.KeyRevokedEvent(r.Revoked.ID, r.Kind, in.Reason, by, l.Revision, s.Now()))
	return out, nil
}

func keysStatus(instanceID string, l *keys.LoadedKeys) KeysStatus {
	out := KeysStatus{InstanceID: instanceID, Revision: l.Revision, Keys: []KeyView{}}
	infos := l.Keys.Infos()
	for _, kind := range keys.Kinds() {
		for _, i := range infos[kind] {
			out.Keys = append(out.Keys, keyView(kind, i))
		}
	}
	return out
}

func keyView(kind string, i keys.KeyInfo) KeyView {
	v := KeyView{Kid: i.ID, Kind: kind, State: string(i.State), CreatedAt: rfc3339(i.CreatedAt)}
	if !i.PromotedAt.IsZero() {
		v.PromotedAt = rfc3339(i.PromotedAt)
	}
	if !i.RetiredAt.IsZero() {
		v.RetiredAt = rfc3339(i.RetiredAt)
	}
	if !i.ExpiresAt.IsZero() {
		v.ExpiresAt = rfc3339(i.ExpiresAt)
	}
	return v
}
