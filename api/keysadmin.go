package api

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/tokend/tokend/keys"
)

// Subjects of key administration, relative to the prefix. Key material never
// leaves tokend: operators stage and promote keys here instead of reading
// the key bucket, which only tokend's NATS user may.
const (
	// SubjectKeysStage adds a next MAC key and a next signing key (one
	// instance answers).
	SubjectKeysStage = "admin.keys.stage"
	// SubjectKeysPromote makes the next keys current and retires the
	// current ones (one instance answers).
	SubjectKeysPromote = "admin.keys.promote"
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

// KeysStatus answers stage and promote (the keyset as written) and status
// (the keyset an instance has loaded). It never holds key material.
type KeysStatus struct {
	InstanceID string    `json:"instance_id"` // the micro service instance id, as $SRV.PING.tokens reports it
	Revision   uint64    `json:"revision"`    // the TOKENS_KEYS revision
	Keys       []KeyView `json:"keys"`        // MAC keys, then signing keys; each current, next, retired
}

// KeyView describes one key.
type KeyView struct {
	Kid       string `json:"kid"`
	Kind      string `json:"kind"`  // "mac" (refresh tokens) or "signing" (access tokens)
	State     string `json:"state"` // "next", "current" or "retired"
	CreatedAt string `json:"created_at"`
	RetiredAt string `json:"retired_at,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"` // retired keys: dropped at the first change after this
}

// addKeysAdmin registers the key administration endpoints on svc.
func (s *Service) addKeysAdmin(svc micro.Service, prefix string) error {
	ring := s.Tokens.Keyring()
	id := svc.Info().ID
	change := func(what string, apply func(context.Context, uint64) (*keys.LoadedKeys, error)) func(context.Context, []byte) (any, error) {
		return func(ctx context.Context, data []byte) (any, error) {
			var in KeysRequest
			if err := Decode(data, &in); err != nil {
				return nil, err
			}
			l, err := apply(ctx, in.Revision)
			if err != nil {
				return nil, err
			}
			s.Log.Info("keys "+what, "revision", l.Revision)
			return keysStatus(id, l), nil
		}
	}
	endpoints := []struct {
		name, subject string
		handle        func(context.Context, []byte) (any, error)
		opts          []micro.EndpointOpt
	}{
		{"keys_stage", SubjectKeysStage, change("staged", ring.Stage), nil},
		{"keys_promote", SubjectKeysPromote, change("promoted", ring.Promote), nil},
		{"keys_status", SubjectKeysStatus, func(context.Context, []byte) (any, error) {
			return keysStatus(id, ring.Loaded()), nil
		}, []micro.EndpointOpt{micro.WithEndpointQueueGroupDisabled()}},
	}
	// Key administration is rare and quick: a few slots of its own keep it
	// apart from both commands and queries.
	slots := make(chan struct{}, 4)
	for _, ep := range endpoints {
		handler := s.async(ep.name, context.Background(), requestTimeout, slots, ep.handle, func(string, error, time.Duration) {})
		if err := svc.AddEndpoint(ep.name, handler, append(ep.opts, micro.WithEndpointSubject(prefix+"."+ep.subject))...); err != nil {
			return err
		}
	}
	return nil
}

func keysStatus(instanceID string, l *keys.LoadedKeys) KeysStatus {
	out := KeysStatus{InstanceID: instanceID, Revision: l.Revision, Keys: []KeyView{}}
	infos := l.Keys.Infos()
	for _, kind := range []string{"mac", "signing"} {
		for _, i := range infos[kind] {
			v := KeyView{Kid: i.ID, Kind: kind, State: string(i.State), CreatedAt: rfc3339(i.CreatedAt)}
			if !i.RetiredAt.IsZero() {
				v.RetiredAt = rfc3339(i.RetiredAt)
			}
			if !i.ExpiresAt.IsZero() {
				v.ExpiresAt = rfc3339(i.ExpiresAt)
			}
			out.Keys = append(out.Keys, v)
		}
	}
	return out
}
