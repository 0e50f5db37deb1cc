package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the event stream's name, fixed by the contract.
const StreamName = "TOKENS"

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

// StreamLimits size the TOKENS stream.
type StreamLimits struct {
	Replicas int
	// MaxBytes bounds the stream (0: only the account's limits). A full
	// stream refuses appends (DiscardNew) rather than drop history that
	// families' states are read from.
	MaxBytes int64
	// MaxAge removes any event older than this (0: none). Events carry their
	// own TTL (Retention); MaxAge is the backstop for events stored before
	// they did, so it must outlast every TTL.
	MaxAge time.Duration
}

// StreamConfig returns the TOKENS stream's configuration. DenyDelete and
// DenyPurge keep the history tamper-proof; retention works through
// per-message TTLs and MaxAge, which neither needs.
func StreamConfig(subjects Subjects, limits StreamLimits) jetstream.StreamConfig {
	maxBytes := limits.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:               StreamName,
		Description:        "tokend refresh-token family events",
		Subjects:           []string{subjects.Events()},
		Storage:            jetstream.FileStorage,
		Replicas:           limits.Replicas,
		Retention:          jetstream.LimitsPolicy,
		Discard:            jetstream.DiscardNew,
		MaxBytes:           maxBytes,
		MaxAge:             limits.MaxAge,
		Duplicates:         2 * time.Minute,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		AllowMsgTTL:        true,
		DenyDelete:         true,
		DenyPurge:          true,
	}
}

// Setup creates the TOKENS stream, or brings an existing one to the
// current configuration (this is how deployments of earlier versions get
// their retention limits).
func Setup(ctx context.Context, js jetstream.JetStream, subjects Subjects, limits StreamLimits) (jetstream.Stream, error) {
	stream, err := js.CreateOrUpdateStream(ctx, StreamConfig(subjects, limits))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	return stream, nil
}

// LastEventSeq returns the stream sequence of the newest event, 0 if there
// is none. It is where a caught-up read model stands: in a stream written
// by an earlier version the last sequence may belong to a sealed child,
// which the read model never applies.
func LastEventSeq(ctx context.Context, stream jetstream.Stream, subjects Subjects) (uint64, error) {
	msg, err := stream.GetLastMsgForSubject(ctx, subjects.Events())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return msg.Sequence, nil
}
