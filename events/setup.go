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
func (s Subjects) FamilyOf(subject string) string { return lastToken(subject, s.Prefix+".evt.") }

// Ops returns the subject of the deployment events of a kind
// (subject_revoked, client_revoked, key_revoked: OpsKind).
func (s Subjects) Ops(kind string) string { return s.Prefix + ".ops." + kind }

// AllOps returns the wildcard matching every Ops subject.
func (s Subjects) AllOps() string { return s.Prefix + ".ops.*" }

// OpsKindOf returns the kind of an Ops subject, or "" if it is not one.
func (s Subjects) OpsKindOf(subject string) string { return lastToken(subject, s.Prefix+".ops.") }

// SSF returns the subject of the events addressed to one SSF stream
// (verification, stream updated).
func (s Subjects) SSF(streamID string) string { return s.Prefix + ".ssf." + streamID }

// AllSSF returns the wildcard matching every SSF subject.
func (s Subjects) AllSSF() string { return s.Prefix + ".ssf.*" }

// StreamOf returns the SSF stream id of an SSF subject, or "" if it is not
// one.
func (s Subjects) StreamOf(subject string) string { return lastToken(subject, s.Prefix+".ssf.") }

// lastToken returns what follows prefix in subject, "" if subject does not
// start with it or has nothing after it.
func lastToken(subject, prefix string) string {
	if len(subject) <= len(prefix) || subject[:len(prefix)] != prefix {
		return ""
	}
	return subject[len(prefix):]
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
// per-message TTLs and MaxAge, which neither needs. Besides the families'
// events it holds the deployment events (Ops and SSF subjects): the outbox
// the SSF transmitter delivers from.
func StreamConfig(subjects Subjects, limits StreamLimits) jetstream.StreamConfig {
	maxBytes := limits.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:               StreamName,
		Description:        "tokend refresh-token family events and deployment events",
		Subjects:           []string{subjects.Events(), subjects.AllOps(), subjects.AllSSF()},
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
// their retention limits and the deployment events' subjects).
func Setup(ctx context.Context, js jetstream.JetStream, subjects Subjects, limits StreamLimits) (jetstream.Stream, error) {
	stream, err := js.CreateOrUpdateStream(ctx, StreamConfig(subjects, limits))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	return stream, nil
}

// LastEventSeq returns the stream sequence of the newest family event, 0
// if there is none: deployment events are not the read model's, so they
// never count as its lag. It is where a caught-up read model stands: in a stream written
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
