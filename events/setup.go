package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names fixed by the contract.
const (
	StreamName = "TOKENS"
	KeysBucket = "TOKENS_KEYS"
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
// AllowMsgTTL stays on only because earlier versions kept sealed children
// in this stream with a TTL, and the server refuses to turn it off again.
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
		AllowMsgTTL:        true,
		DenyDelete:         true,
		DenyPurge:          true,
	}
}

// Setup creates or updates the TOKENS stream.
func Setup(ctx context.Context, js jetstream.JetStream, subjects Subjects, replicas int, maxBytes int64) (jetstream.Stream, error) {
	stream, err := js.CreateOrUpdateStream(ctx, StreamConfig(subjects, replicas, maxBytes))
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
