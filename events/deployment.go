package events

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Types of deployment events: events about no single family, stored on
// <prefix>.ops.<kind> (the revocations) or <prefix>.ssf.<stream_id> (events
// addressed to one SSF stream). They feed the SSF transmitter (signals).
const (
	// SubjectRevoked: a revoke by subject finished.
	SubjectRevoked = "subject.revoked"
	// SubjectErased: a subject's personal data was erased (its data key
	// destroyed, every family revoked). The event holds no personal data:
	// the subject is named by its pseudonym.
	SubjectErased = "subject.erased"
	// ClientRevoked: a revoke by client finished.
	ClientRevoked = "client.revoked"
	// KeyRevoked: a key was revoked (tokenctl keys revoke).
	KeyRevoked = "key.revoked"
	// SSFVerification: a receiver asked for a verification event on its
	// stream (SSF 1.0 section 8.1.4).
	SSFVerification = "ssf.verification"
	// SSFStreamUpdated: a stream's status changed (SSF 1.0 section 8.1.5).
	SSFStreamUpdated = "ssf.stream_updated"
)

// DeploymentTypes lists every deployment event type.
var DeploymentTypes = []string{SubjectRevoked, SubjectErased, ClientRevoked, KeyRevoked, SSFVerification, SSFStreamUpdated}

// VerificationTTL is how long a verification event stays in the stream: it
// proves a stream works now, and is worth nothing a day later.
const VerificationTTL = 24 * time.Hour

// DeploymentEvent is a deployment event as stored in the stream. It never
// holds a token or secret. Which fields are set depends on Type.
type DeploymentEvent struct {
	// ID is unique per event and the message's Nats-Msg-Id. The revocation
	// events derive it from what they record, so a retried append is
	// dropped as a duplicate (see the constructors).
	ID   string    `json:"id"`
	Type string    `json:"type"`
	Time time.Time `json:"time"`

	// Subject is the revoked subject (subject.revoked), or the erased
	// subject's pseudonym (subject.erased). With personal data protection
	// on, subject.revoked holds the pseudonym too, and the subject sealed
	// in PII (Protector.SealDeployment).
	Subject string `json:"subject,omitempty"`
	PII     string `json:"pii,omitempty"`
	// ClientID is the revoked client (client.revoked).
	ClientID string `json:"client_id,omitempty"`
	// Reason is why (revocations), or the new status's reason
	// (ssf.stream_updated, optional there).
	Reason string `json:"reason,omitempty"`
	// RevokedFamilies and Seq are the revoke's reply (subject.revoked,
	// client.revoked): the families this call revoked, and the stream
	// position up to which every family of the subject or client is
	// revoked.
	RevokedFamilies int    `json:"revoked_families,omitempty"`
	Seq             uint64 `json:"seq,omitempty"`

	// Kid and Kind name the revoked key (key.revoked); By is who revoked
	// it (or erased the subject), as the operator said or the NATS user.
	Kid  string `json:"kid,omitempty"`
	Kind string `json:"kind,omitempty"`
	By   string `json:"by,omitempty"`

	// StreamID is the SSF stream the event is addressed to (ssf.*).
	StreamID string `json:"stream_id,omitempty"`
	// State is the receiver's verification state (ssf.verification,
	// optional).
	State string `json:"state,omitempty"`
	// Status is the stream's new status (ssf.stream_updated).
	Status string `json:"status,omitempty"`
}

// SubjectRevokedEvent records a finished revoke of subject's families: the
// revoke's reason and its reply (families revoked by this call, position).
// Its id derives from the subject, the reason and the position, not the
// count: a caller retrying a revoke whose reply it lost revokes nothing
// more, and ends at the same position unless families were issued or
// revoked since, so its event is the first one's duplicate, which the
// stream drops (within its 2-minute window; past it, or at another
// position, the receivers get a second, equally true signal, and
// revocation signals are idempotent for them).
func SubjectRevokedEvent(subject, reason string, families int, seq uint64, at time.Time) DeploymentEvent {
	return DeploymentEvent{ID: derivedID(SubjectRevoked, subject, reason, strconv.FormatUint(seq, 10)),
		Type: SubjectRevoked, Time: at.UTC(), Subject: subject, Reason: reason, RevokedFamilies: families, Seq: seq}
}

// SubjectErasedEvent records the erasure of the subject with that
// pseudonym: why, who asked, and how many families the erasure revoked.
// Erasing an erased subject again changes nothing, so the pseudonym and
// the reason identify the event: a retried erasure's event is the first
// one's duplicate.
func SubjectErasedEvent(pseudonym, reason, by string, families int, at time.Time) DeploymentEvent {
	return DeploymentEvent{ID: derivedID(SubjectErased, pseudonym, reason),
		Type: SubjectErased, Time: at.UTC(), Subject: pseudonym, Reason: reason, By: by, RevokedFamilies: families}
}

// ClientRevokedEvent is SubjectRevokedEvent for a revoke by client.
func ClientRevokedEvent(clientID, reason string, families int, seq uint64, at time.Time) DeploymentEvent {
	return DeploymentEvent{ID: derivedID(ClientRevoked, clientID, reason, strconv.FormatUint(seq, 10)),
		Type: ClientRevoked, Time: at.UTC(), ClientID: clientID, Reason: reason, RevokedFamilies: families, Seq: seq}
}

// KeyRevokedEvent records the revocation of key kid of kind, which wrote
// keyset revision revision: a key is revoked once, so kid and revision
// identify the event.
func KeyRevokedEvent(kid, kind, reason, by string, revision uint64, at time.Time) DeploymentEvent {
	return DeploymentEvent{ID: derivedID(KeyRevoked, kid, strconv.FormatUint(revision, 10)),
		Type: KeyRevoked, Time: at.UTC(), Kid: kid, Kind: kind, Reason: reason, By: by}
}

// VerificationEvent asks for a verification event on stream streamID with
// the receiver's state ("" for none). Each request is an event of its own.
func VerificationEvent(streamID, state string, at time.Time) DeploymentEvent {
	return DeploymentEvent{ID: nuid.Next(), Type: SSFVerification, Time: at.UTC(), StreamID: streamID, State: state}
}

// StreamUpdatedEvent records that stream streamID took status (with
// reason) in its configuration's revision revision, which identifies it.
func StreamUpdatedEvent(streamID, status, reason string, revision uint64, at time.Time) DeploymentEvent {
	return DeploymentEvent{ID: derivedID(SSFStreamUpdated, streamID, strconv.FormatUint(revision, 10)),
		Type: SSFStreamUpdated, Time: at.UTC(), StreamID: streamID, Status: status, Reason: reason}
}

// derivedID is a 132-bit id derived from parts, in the alphabet of event ids.
func derivedID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return base64.RawURLEncoding.EncodeToString(h[:])[:22]
}

// OpsKind returns the <kind> of the subject <prefix>.ops.<kind> a
// revocation event of type t is stored on ("subject_revoked" for
// "subject.revoked"), "" for the types stored on a stream's subject.
func OpsKind(t string) string {
	switch t {
	case SubjectRevoked, SubjectErased, ClientRevoked, KeyRevoked:
		return strings.ReplaceAll(t, ".", "_")
	}
	return ""
}

// Deployment returns the stream subject ev is stored on.
func (s Subjects) Deployment(ev DeploymentEvent) string {
	if kind := OpsKind(ev.Type); kind != "" {
		return s.Ops(kind)
	}
	return s.SSF(ev.StreamID)
}

// key is the last token of ev's subject: its ops kind or its stream id.
func (ev DeploymentEvent) key() string {
	if kind := OpsKind(ev.Type); kind != "" {
		return kind
	}
	return ev.StreamID
}

// check reports what makes ev no deployment event stored under key.
func (ev DeploymentEvent) check(key string) error {
	var missing string
	switch {
	case ev.ID == "" || ev.Time.IsZero():
		missing = "id or time"
	case (ev.Type == SubjectRevoked || ev.Type == SubjectErased) && (ev.Subject == "" || ev.Reason == ""):
		missing = "subject or reason"
	case ev.Type == ClientRevoked && (ev.ClientID == "" || ev.Reason == ""):
		missing = "client_id or reason"
	case ev.Type == KeyRevoked && (ev.Kid == "" || ev.Kind == "" || ev.Reason == ""):
		missing = "kid, kind or reason"
	case (ev.Type == SSFVerification || ev.Type == SSFStreamUpdated) && !validStreamKey(ev.StreamID):
		missing = "a valid stream_id"
	case ev.Type == SSFStreamUpdated && ev.Status == "":
		missing = "status"
	case !slices.Contains(DeploymentTypes, ev.Type):
		return fmt.Errorf("%w: unknown deployment event type %q", ErrMalformedEvent, ev.Type)
	}
	if missing != "" {
		return fmt.Errorf("%w: %s without %s", ErrMalformedEvent, ev.Type, missing)
	}
	if ev.key() != key {
		return fmt.Errorf("%w: %s stored under %q", ErrMalformedEvent, ev.Type, key)
	}
	return nil
}

// validStreamKey reports whether id can be the last token of a subject and
// a consumer's name: one token of letters, digits, '-' and '_'.
func validStreamKey(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// DecodeDeployment parses a stored deployment event and checks it belongs
// under key, the last token of its subject (the ops kind, or the stream
// id). Anything else on those subjects is ErrMalformedEvent: only tokend
// may publish there. Unknown fields are ignored, so a later version may add
// some.
func DecodeDeployment(data []byte, key string) (DeploymentEvent, error) {
	var ev DeploymentEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		return DeploymentEvent{}, fmt.Errorf("%w: %v", ErrMalformedEvent, err)
	}
	if err := ev.check(key); err != nil {
		return DeploymentEvent{}, err
	}
	return ev, nil
}

// deploymentAttempts bounds the publishes of one deployment event: its
// Nats-Msg-Id makes a repeated publish a duplicate the stream drops, which
// is how an append whose acknowledgement was lost learns its outcome.
const deploymentAttempts = 3

// AppendDeployment stores ev on its subject, with ev.ID as Nats-Msg-Id
// and a TTL from the store's Retention, and returns its stream sequence.
// Appending the same event again within the stream's duplicate window (2
// minutes) stores nothing and returns the first sequence.
func (s *Store) AppendDeployment(ctx context.Context, ev DeploymentEvent) (uint64, error) {
	if s.Protector != nil && ev.Type == SubjectRevoked {
		if err := s.Protector.sealDeployment(ctx, &ev); err != nil {
			return 0, err
		}
	}
	if err := ev.check(ev.key()); err != nil {
		return 0, err
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return 0, err
	}
	m := nats.NewMsg(s.subjects.Deployment(ev))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, ev.ID)
	if ttl := s.Retention.DeploymentTTL(ev); ttl > 0 {
		m.Header.Set(jetstream.MsgTTLHeader, ttlHeader(ttl))
	}
	for range deploymentAttempts {
		var ack *jetstream.PubAck
		if ack, err = s.js.PublishMsg(ctx, m); err == nil {
			return ack.Sequence, nil
		}
		var apiErr *jetstream.APIError
		if ctx.Err() != nil || errors.As(err, &apiErr) {
			break // refused: another publish would be refused too
		}
	}
	return 0, fmt.Errorf("append %s: %w", ev.Type, err)
}
