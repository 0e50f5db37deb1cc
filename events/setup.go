package events

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names fixed by the contract.
const (
	StreamName = "TOKENS"
	KeysBucket = "TOKENS_KEYS"
	// ReuseBucket holds each rotated parent's child, sealed under a key only
	// the parent's holder can derive, for the reuse interval and no longer.
	ReuseBucket = "TOKENS_REUSE"
)

// Subjects derives every subject from the configured prefix.
type Subjects struct{ Prefix string }

// Family returns the event subject of a family.
func (s Subjects) Family(familyID string) string { return s.Prefix + ".evt." + familyID }

// Events returns the wildcard matching every family subject.
func (s Subjects) Events() string { return s.Prefix + ".evt.*" }

// FamilyOf returns the family id of an event subject, or "" if it is not one.
func (s Subjects) FamilyOf(subject string) string {
	p := s.Prefix + ".evt."
	if len(subject) <= len(p) || subject[:len(p)] != p {
		return ""
	}
	return subject[len(p):]
}

// StreamConfig returns the TOKENS stream's configuration. Events are never
// discarded to make room (DiscardNew): a full store refuses appends instead
// of silently dropping the history a family's state is read from.
func StreamConfig(subjects Subjects, replicas int, maxBytes int64) jetstream.StreamConfig {
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:               StreamName,
		Description:        "tokend refresh-token family events",
		Subjects:           []string{subjects.Events()},
		Storage:            jetstream.FileStorage,
		Replicas:           replicas,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardNew,
		MaxBytes:           maxBytes,
		Duplicates:         2 * time.Minute,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		DenyDelete:         true,
		DenyPurge:          true,
	}
}

// Setup creates or updates the stream and the reuse bucket. A reuse interval
// of 0 needs no bucket and returns a nil KeyValue.
func Setup(ctx context.Context, js jetstream.JetStream, subjects Subjects, replicas int, maxBytes int64, reuseInterval time.Duration) (jetstream.Stream, jetstream.KeyValue, error) {
	stream, err := js.CreateOrUpdateStream(ctx, StreamConfig(subjects, replicas, maxBytes))
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	if reuseInterval <= 0 {
		return stream, nil, nil
	}
	reuse, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      ReuseBucket,
		Description: "sealed children of just-rotated refresh tokens, kept for the reuse interval",
		History:     1,
		// The child is sealed just before its rotation is appended; the
		// second of slack covers that gap so it outlives the interval.
		TTL:          reuseInterval + time.Second,
		Storage:      jetstream.FileStorage,
		Replicas:     replicas,
		MaxValueSize: 1024,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("kv %s: %w", ReuseBucket, err)
	}
	return stream, reuse, nil
}
