// Package jti remembers the one-time identifiers (jti) of signed requests
// that were already used, on every instance and across restarts: the KV
// bucket TOKENS_JTI, each entry expiring on its own once the request it
// names could no longer be accepted anyway. Client assertions (RFC 7523)
// use it today; DPoP proofs (RFC 9449) are meant to share it.
package jti

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket holds one entry per used identifier, for every instance. One
// bucket serves every kind of identifier: callers keep them apart by the
// key they pass to Seen.
const Bucket = "TOKENS_JTI"

// markerTTL is how long the bucket keeps the marker an expired entry
// leaves behind. Nothing reads the markers, so the shortest the server
// allows.
const markerTTL = time.Second

// Cache records used identifiers in the bucket.
type Cache struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// Open creates the bucket, or opens the one another instance created,
// with replicas copies (those of the event stream).
func Open(ctx context.Context, js jetstream.JetStream, replicas int, now func() time.Time) (*Cache, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "tokend one-time identifiers (jti) already used, each until its request expires",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		// Required for the per-entry TTL of Seen.
		LimitMarkerTTL: markerTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	return &Cache{kv: kv, now: now}, nil
}

// Seen records key as used until at least until and reports whether it
// had been recorded already, by any instance: a replay. The record is
// atomic, so of two instances recording the same key at once exactly one
// gets false. An error means the bucket could not say; the caller must
// then refuse the request rather than accept it unchecked.
func (c *Cache) Seen(ctx context.Context, key string, until time.Time) (bool, error) {
	_, err := c.kv.Create(ctx, entryKey(key), nil, jetstream.KeyTTL(ttlUntil(c.now(), until)))
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, jetstream.ErrKeyExists) || wrongLastSequence(err):
		return true, nil
	}
	return false, fmt.Errorf("kv %s: %w", Bucket, err)
}

// ttlUntil is the entry's TTL: the server keeps whole seconds and
// truncates, so round up to keep the entry at least until until; at least
// one second, the least the server accepts.
func ttlUntil(now, until time.Time) time.Duration {
	ttl := until.Sub(now)
	if ttl <= time.Second {
		return time.Second
	}
	return (ttl + time.Second - 1).Truncate(time.Second)
}

// wrongLastSequence reports the conflict of two instances recreating the
// same expired entry at once (Create's second attempt is not mapped to
// ErrKeyExists); replicated buckets answer it with 10164.
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// entryKey names an entry by a hash of key: KV keys allow few characters,
// and client ids and identifiers stay out of the bucket's subjects.
func entryKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}
