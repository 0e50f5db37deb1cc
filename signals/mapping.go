package signals

import (
	"context"
	"fmt"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// Event types tokend sends (docs/protocol.md, "Security events (SSF)").
const (
	// TypeSessionRevoked is CAEP 1.0 section 3.1: a family (a session),
	// or all of a user's or a client's, was revoked.
	TypeSessionRevoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	// TypeCredentialCompromise is RISC 1.0 section 2.7: a session's refresh
	// token was presented where it should not have been (a replay, another
	// client, a forgery with a retired key): it was likely stolen.
	TypeCredentialCompromise = "https://schemas.openid.net/secevent/risc/event-type/credential-compromise"
	// TypeKeyRevoked is tokend's own: an operator revoked one of the
	// deployment's keys (tokenctl keys revoke). Neither CAEP nor RISC has
	// an event for a transmitter's own key.
	TypeKeyRevoked = "https://tokend.dev/secevent/key-revoked"
	// TypeVerification is SSF 1.0 section 8.1.4.1.
	TypeVerification = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	// TypeStreamUpdated is SSF 1.0 section 8.1.5.
	TypeStreamUpdated = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
	// TypeAccountPurged is RISC 1.0 section 2.1: a subject's personal data
	// was erased (tokenctl subjects erase), its sessions revoked.
	TypeAccountPurged = "https://schemas.openid.net/secevent/risc/event-type/account-purged"
)

// EventsSupported lists the event types tokend sends, for
// events_supported. Verification and stream updated go to their stream
// whether requested or not (Stream.Wants).
var EventsSupported = []string{TypeSessionRevoked, TypeCredentialCompromise, TypeAccountPurged, TypeKeyRevoked, TypeVerification, TypeStreamUpdated}

// CredentialTypeRefreshToken is the credential_type of tokend's
// credential-compromise events. CAEP's list (which RISC refers to) has no
// OAuth token and allows "any other credential type supported mutually".
const CredentialTypeRefreshToken = "refresh_token"

// Values of initiating_entity (CAEP 1.0 section 2).
const (
	InitiatedByAdmin  = "admin"
	InitiatedByUser   = "user"
	InitiatedByPolicy = "policy"
)

// Signal is one SSF event derived from a tokend event: what a SET carries
// besides the claims of its stream (iss, aud, jti, iat).
type Signal struct {
	// Type is the event type URI, the key of the SET's events claim.
	Type string
	// Subject is the SET's sub_id.
	Subject Subject
	// Event is the event object, the value under Type: one of
	// SessionRevoked, CredentialCompromise, KeyRevoked, Verification,
	// StreamUpdated.
	Event any
	// Time is when the tokend event happened: the SET's toe.
	Time time.Time
	// Txn is the tokend event's id: the SET's txn, which joins it to
	// tokend's audit trail and the stream.
	Txn string
	// Visibility says which receivers may be told.
	Visibility Visibility
}

// Visibility is who a signal concerns, for the delivery to decide which
// receivers may see it. A receiver registered for all events (a SIEM) sees
// every signal except those addressed to another's stream.
type Visibility struct {
	// Client is the client whose families (sessions) the signal is about:
	// its own receivers may see it. Empty for signals about no client's
	// families in particular.
	Client string
	// Deployment marks a signal every receiver may see (key.revoked: a
	// revoked key concerns everyone who verifies tokend's tokens or SETs).
	Deployment bool
	// Stream is the one stream a signal is addressed to (verification,
	// stream updated); no other stream gets it.
	Stream string
}

// SessionRevoked is the event object of TypeSessionRevoked.
type SessionRevoked struct {
	InitiatingEntity string            `json:"initiating_entity"`
	ReasonAdmin      map[string]string `json:"reason_admin"`
	ReasonUser       map[string]string `json:"reason_user,omitempty"`
	EventTimestamp   int64             `json:"event_timestamp"`
	// TokendReason is tokend's reason for the revocation (the
	// family.revoked or revoke request reason): a tokend extension member.
	TokendReason string `json:"tokend_reason"`
	// RevokedFamilies is, for a revocation of all of a user's or a
	// client's sessions, how many this revocation ended: a tokend
	// extension member.
	RevokedFamilies *int `json:"revoked_families,omitempty"`
}

// CredentialCompromise is the event object of TypeCredentialCompromise.
type CredentialCompromise struct {
	CredentialType string            `json:"credential_type"`
	ReasonAdmin    map[string]string `json:"reason_admin"`
	ReasonUser     map[string]string `json:"reason_user,omitempty"`
	EventTimestamp int64             `json:"event_timestamp"`
	// tokend extension members: tokend's reason (replay_detected,
	// dpop_key_mismatch, client_mismatch, retired_key), the generation of the refresh token
	// presented and the session's generation at that moment.
	TokendReason        string `json:"tokend_reason"`
	PresentedGeneration uint64 `json:"presented_generation"`
	CurrentGeneration   uint64 `json:"current_generation"`
}

// KeyRevoked is the event object of TypeKeyRevoked.
type KeyRevoked struct {
	// Kid is the revoked key's id; KeyUse what it was for: "mac" (refresh
	// tokens), "signing" (access tokens) or "set" (SETs).
	Kid              string            `json:"kid"`
	KeyUse           string            `json:"key_use"`
	InitiatingEntity string            `json:"initiating_entity"`
	ReasonAdmin      map[string]string `json:"reason_admin"`
	EventTimestamp   int64             `json:"event_timestamp"`
}

// AccountPurged is the event object of TypeAccountPurged. Its subject is
// the erased subject's pseudonym (opaque): the event it comes from holds
// no personal data.
type AccountPurged struct {
	ReasonAdmin     map[string]string `json:"reason_admin"`
	EventTimestamp  int64             `json:"event_timestamp"`
	RevokedFamilies int               `json:"revoked_families"`
}

// Verification is the event object of TypeVerification.
type Verification struct {
	State string `json:"state,omitempty"`
}

// StreamUpdated is the event object of TypeStreamUpdated.
type StreamUpdated struct {
	Status Status `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// Mapper turns tokend's events into signals. Family and Deployment are
// pure; Message opens sealed personal fields first.
type Mapper struct {
	// Issuer is tokend's issuer: the iss of the iss_sub subjects.
	Issuer string
	// Protector, set with personal data protection on, opens the sealed
	// subjects of the events mapped.
	Protector *events.Protector
}

// Message maps a message of the TOKENS stream, by its subject: a family
// event or a deployment event. Anything else there is
// events.ErrMalformedEvent.
func (m Mapper) Message(ctx context.Context, subjects events.Subjects, subject string, data []byte) ([]Signal, error) {
	if family := subjects.FamilyOf(subject); family != "" {
		if t, ok := events.PeekType(data); ok && !familyEventSignals(domain.EventType(t)) {
			return nil, nil // most events, rotations first: not worth decoding
		}
		env, err := events.Decode(data, family)
		if err != nil {
			return nil, err
		}
		if env.PII != "" {
			if m.Protector == nil {
				return nil, events.ErrSealedWithoutKey
			}
			if err := m.Protector.Reveal(ctx, &env); err != nil {
				return nil, err
			}
		}
		return m.Family(env), nil
	}
	key := subjects.OpsKindOf(subject)
	if key == "" {
		key = subjects.StreamOf(subject)
	}
	if key == "" {
		return nil, fmt.Errorf("%w: subject %q is not one of tokend's", events.ErrMalformedEvent, subject)
	}
	ev, err := events.DecodeDeployment(data, key)
	if err != nil {
		return nil, err
	}
	erased := false
	if ev.PII != "" {
		if m.Protector == nil {
			return nil, events.ErrSealedWithoutKey
		}
		if erased, err = m.Protector.RevealDeployment(ctx, &ev); err != nil {
			return nil, err
		}
	}
	return m.Deployment(ev, erased), nil
}

// familyEventSignals reports whether events of type t may map to a
// signal (Family).
func familyEventSignals(t domain.EventType) bool {
	return t == domain.FamilyRevoked || t == domain.ReplayDetected || t == domain.KeyMismatch || t == domain.RefreshRejected
}

// Family maps a family event: family.revoked to a session revoked;
// token.replay_detected, token.key_mismatch, and refresh.rejected for
// client_mismatch or retired_key, to a credential compromise; the other events to nothing
// (docs/protocol.md says why).
func (m Mapper) Family(env events.Envelope) []Signal {
	sig := Signal{Time: env.Time, Txn: env.ID, Visibility: Visibility{Client: env.ClientID}, Subject: m.session(env)}
	switch domain.EventType(env.Type) {
	case domain.FamilyRevoked:
		sig.Type = TypeSessionRevoked
		sig.Event = SessionRevoked{InitiatingEntity: initiator(env.Reason, false), ReasonAdmin: en(sessionRevokedReason(env.Reason)),
			ReasonUser: en(revokedForUser(env.Reason)), EventTimestamp: env.Time.Unix(), TokendReason: env.Reason}
	case domain.ReplayDetected:
		sig.Type = TypeCredentialCompromise
		sig.Event = m.compromise(env, domain.ReasonReplayDetected, fmt.Sprintf(
			"Refresh token replay: generation %d of this session's refresh token was presented after it had been rotated (the session is at generation %d). Someone else likely holds it.",
			env.PresentedGeneration, env.Generation))
	case domain.KeyMismatch:
		sig.Type = TypeCredentialCompromise
		sig.Event = m.compromise(env, domain.ReasonDPoPKeyMismatch, fmt.Sprintf(
			"DPoP key mismatch: a refresh token of this session (generation %d; the session is at %d) was presented with a proof by another key than the one the session is bound to. Someone else holds the token without the key.",
			env.PresentedGeneration, env.Generation))
	case domain.RefreshRejected:
		switch env.Reason {
		case domain.ReasonClientMismatch:
			sig.Type = TypeCredentialCompromise
			sig.Event = m.compromise(env, env.Reason, fmt.Sprintf(
				"A refresh token of this session (generation %d; the session is at %d) was presented by another client, and refused. The session was not revoked: another client can never end it. The token likely leaked.",
				env.PresentedGeneration, env.Generation))
		case domain.ReasonRetiredKey:
			sig.Type = TypeCredentialCompromise
			sig.Event = m.compromise(env, env.Reason, fmt.Sprintf(
				"A refresh token for this session (generation %d; the session is at %d) made with a key retired before the session began was presented, and refused: a forgery by someone holding that key and this session's id. The session was not revoked.",
				env.PresentedGeneration, env.Generation))
		default:
			return nil
		}
	default:
		return nil
	}
	return []Signal{sig}
}

func (m Mapper) compromise(env events.Envelope, reason, admin string) CredentialCompromise {
	return CredentialCompromise{CredentialType: CredentialTypeRefreshToken, ReasonAdmin: en(admin),
		ReasonUser:     en("Your session may have been taken over. Sign out and in again, and review recent activity."),
		EventTimestamp: env.Time.Unix(), TokendReason: reason,
		PresentedGeneration: env.PresentedGeneration, CurrentGeneration: env.Generation}
}

// session is the subject of a family's signals: the user (the family's
// subject at tokend), the session (the family) and the application (the
// family's client).
func (m Mapper) session(env events.Envelope) Subject {
	user, session, app := m.user(env.Subject, env.Erased), Opaque(env.FamilyID), Opaque(env.ClientID)
	return Subject{Format: FormatComplex, User: &user, Session: &session, Application: &app}
}

// user is the subject identifier of a user: iss_sub, or once the user's
// personal data is erased, its pseudonym (opaque), which is all that is
// left of it.
func (m Mapper) user(subject string, erased bool) Subject {
	if erased {
		return Opaque(subject)
	}
	return IssSub(m.Issuer, subject)
}

// Deployment maps a deployment event: subject.revoked and client.revoked
// to a session revoked for all of the user's or the client's sessions,
// subject.erased to an account purged, key.revoked to a key revoked, and
// the SSF events to theirs. erased reports that subject.revoked's subject
// is the pseudonym of an erased subject.
func (m Mapper) Deployment(ev events.DeploymentEvent, erased bool) []Signal {
	sig := Signal{Time: ev.Time, Txn: ev.ID}
	switch ev.Type {
	case events.SubjectErased:
		// Like subject.revoked, only receivers of every event are told.
		sig.Type, sig.Subject = TypeAccountPurged, Opaque(ev.Subject)
		sig.Event = AccountPurged{ReasonAdmin: en("Personal data erased at the data subject's request: " + ev.Reason),
			EventTimestamp: ev.Time.Unix(), RevokedFamilies: ev.RevokedFamilies}
	case events.SubjectRevoked:
		user := m.user(ev.Subject, erased)
		// A user may hold sessions with many clients: only receivers of
		// every event are told; each client's receivers learn of their own
		// sessions from the families' session revoked.
		sig.Type, sig.Subject = TypeSessionRevoked, Subject{Format: FormatComplex, User: &user}
		sig.Event = m.wideRevoke(ev, "All sessions of this user revoked")
	case events.ClientRevoked:
		app := Opaque(ev.ClientID)
		sig.Type, sig.Subject, sig.Visibility = TypeSessionRevoked, Subject{Format: FormatComplex, Application: &app}, Visibility{Client: ev.ClientID}
		sig.Event = m.wideRevoke(ev, "All sessions of this client revoked")
	case events.KeyRevoked:
		sig.Type, sig.Subject, sig.Visibility = TypeKeyRevoked, Opaque(ev.Kid), Visibility{Deployment: true}
		sig.Event = KeyRevoked{Kid: ev.Kid, KeyUse: ev.Kind, InitiatingEntity: InitiatedByAdmin,
			ReasonAdmin:    en(fmt.Sprintf("Key revoked: %s. Stop trusting anything it signed or authenticated.", ev.Reason)),
			EventTimestamp: ev.Time.Unix()}
	case events.SSFVerification:
		sig.Type, sig.Subject, sig.Visibility = TypeVerification, Opaque(ev.StreamID), Visibility{Stream: ev.StreamID}
		sig.Event = Verification{State: ev.State}
	case events.SSFStreamUpdated:
		sig.Type, sig.Subject, sig.Visibility = TypeStreamUpdated, Opaque(ev.StreamID), Visibility{Stream: ev.StreamID}
		sig.Event = StreamUpdated{Status: Status(ev.Status), Reason: ev.Reason}
	default:
		return nil
	}
	return []Signal{sig}
}

func (m Mapper) wideRevoke(ev events.DeploymentEvent, what string) SessionRevoked {
	n := ev.RevokedFamilies
	return SessionRevoked{InitiatingEntity: initiator(ev.Reason, true), ReasonAdmin: en(what + ": " + ev.Reason),
		ReasonUser: en(revokedForUser(ev.Reason)), EventTimestamp: ev.Time.Unix(), TokendReason: ev.Reason, RevokedFamilies: &n}
}

// initiator returns who ended a session by reason: replay and key
// mismatch detection, and a lost rotation, are tokend's policy; the default reason revoked is what a logout records
// (RFC 7009 revocation, a revoke by token or family without a reason) and
// stands for the user, unless it ended every session of a user or client,
// which is an administrative act; a reason given is a service's or
// operator's.
func initiator(reason string, wide bool) string {
	switch {
	case reason == domain.ReasonReplayDetected || reason == domain.ReasonDPoPKeyMismatch || reason == domain.ReasonLostRotation:
		return InitiatedByPolicy
	case reason == domain.ReasonRevoked && !wide:
		return InitiatedByUser
	}
	return InitiatedByAdmin
}

func sessionRevokedReason(reason string) string {
	switch reason {
	case domain.ReasonReplayDetected:
		return "Session revoked: its refresh token was replayed (presented again after rotation), so it was likely stolen"
	case domain.ReasonDPoPKeyMismatch:
		return "Session revoked: its refresh token was presented with a DPoP proof by another key than the session's, so it was likely stolen"
	case domain.ReasonLostRotation:
		return "Session revoked: a refresh's reply was lost and its new refresh token went out of reach (the reuse interval ended)"
	case domain.ReasonRevoked:
		return "Session revoked: logout or token revocation"
	}
	return "Session revoked: " + reason
}

func revokedForUser(reason string) string {
	if reason == domain.ReasonReplayDetected || reason == domain.ReasonDPoPKeyMismatch {
		return "Your session was ended to protect your account. Please sign in again."
	}
	return "Your session was ended. Please sign in again."
}

// en is a localizable message (CAEP 1.0 section 2) in English.
func en(msg string) map[string]string { return map[string]string{"en": msg} }
