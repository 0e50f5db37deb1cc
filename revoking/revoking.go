// Package revoking marks, on every instance, the subjects and clients whose
// families are being revoked (KV bucket TOKENS_REVOKING).
package revoking

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events"
)

// Bucket is the KV bucket of revocations by subject or client in
// progress, shared by every instance.
const Bucket = "TOKENS_REVOKING"

// revokingMaxAge outlives any revoke request; a marker left behind by an
// instance that died mid-revoke expires with it.
const revokingMaxAge = 2 * time.Minute

// Revoking tracks the subjects and clients whose families are being
// revoked, on every instance. While one is, issuing a family for it is
// refused: a revoke by subject or client must cover every family issued
// before its reply, and families issued while it runs would otherwise
// keep it chasing them for as long as issuing goes on.
type Revoking struct {
	kv      jetstream.KeyValue
	watcher jetstream.KeyWatcher

	// SubjectName, if set, is what a subject's marker is named after in
	// place of the subject: its pseudonym with personal data protection
	// on, so the bucket holds no (unkeyed) hash of a person's identifier.
	// Set before the first Begin, the same on every instance.
	SubjectName func(subject string) string

	mu     sync.RWMutex
	active map[string]bool // marker keys present in the bucket
}

// Open creates or opens the bucket and follows it until Stop.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Revoking, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "tokend revocations by subject or client in progress",
		History:     1,
		TTL:         revokingMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	r := &Revoking{kv: kv, active: map[string]bool{}}
	if r.watcher, err = events.FollowBucket(ctx, kv, r.apply, func() {}); err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	return r, nil
}

// apply follows one change of the bucket.
func (r *Revoking) apply(e jetstream.KeyValueEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Operation() == jetstream.KeyValuePut {
		r.active[e.Key()] = true
	} else {
		delete(r.active, e.Key())
	}
}

// Stop stops following the bucket.
func (r *Revoking) Stop() { r.watcher.Stop() }

// Begin marks a revocation of subject or clientID (one of them set) as in
// progress on every instance; end removes the mark.
func (r *Revoking) Begin(ctx context.Context, subject, clientID string) (end func(), err error) {
	key := r.markerKey(subject, clientID)
	rev, err := r.kv.Put(ctx, key, nil)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	// This instance refuses issues at once, not when its watch catches up.
	r.mu.Lock()
	r.active[key] = true
	r.mu.Unlock()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// A later revoke of the same subject or client renewed the mark if
		// the revision moved, and ends it itself. A mark this fails to
		// remove expires after revokingMaxAge.
		r.kv.Delete(ctx, key, jetstream.LastRevision(rev))
	}, nil
}

// Blocks reports whether a family of subject and clientID may not be
// issued now because either is being revoked.
func (r *Revoking) Blocks(subject, clientID string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.active) > 0 && (r.active[r.markerKey(subject, "")] || r.active[r.markerKey("", clientID)])
}

// markerKey names a subject's or a client's marker by a hash: KV keys
// allow few characters, and names stay out of the bucket's subjects.
func (r *Revoking) markerKey(subject, clientID string) string {
	kind, name := "s", subject
	switch {
	case subject == "":
		kind, name = "c", clientID
	case r.SubjectName != nil:
		name = r.SubjectName(subject)
	}
	sum := sha256.Sum256([]byte(name))
	return kind + "_" + hex.EncodeToString(sum[:16])
}
