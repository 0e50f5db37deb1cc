// Package events stores token families in JetStream: the event envelope, the
// stream and KV configuration, and the family writer that appends fenced
// decisions one family at a time.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/domain"
)

// Envelope is an event as stored in the stream and served by audit queries.
// It holds token hashes only. Data.Family is the family's state after the
// event, so the writer loads a family from its last message alone.
type Envelope struct {
	ID       string    `json:"id"`
	Type     string    `json:"type"`
	Time     time.Time `json:"time"`
	FamilyID string    `json:"family_id"`
	Subject  string    `json:"subject"`
	ClientID string    `json:"client_id"`
	// PresentedBy is the client that presented the token when it is not
	// ClientID, the family's owner; empty otherwise.
	PresentedBy string `json:"presented_by,omitempty"`
	Generation  uint64 `json:"generation"`
	// PresentedGeneration is the presented token's generation (reused,
	// replay_detected, refresh.rejected), Generation the family's; 0 when
	// no token was presented. Both are left out when empty, so an event
	// without them is stored as before they existed.
	PresentedGeneration uint64 `json:"presented_generation,omitempty"`
	// DPoPJKT is the key thumbprint the family is bound to (RFC 9449), on
	// every event of a bound family, so that the last event alone says
	// it; PresentedJKT the other key of a token.key_mismatch.
	DPoPJKT      string         `json:"dpop_jkt,omitempty"`
	PresentedJKT string         `json:"presented_jkt,omitempty"`
	Reason       string         `json:"reason"`
	Context      domain.Context `json:"context,omitempty"`
	// PII, in an event written with personal data protection on
	// (Protector), holds the personal fields sealed: Subject is then the
	// subject's pseudonym and Context is empty until Protector.Reveal
	// opens it. Absent in events written without protection.
	// Kept as stored (pii.Sealed.Text): read models store it as it is,
	// and only Reveal parses it.
	PII  string `json:"pii,omitempty"`
	Data Data   `json:"data"`

	// Erased reports, after Protector.Reveal, that the personal fields
	// are gone (the subject was erased): Subject stays the pseudonym.
	Erased bool `json:"-"`
	// origin is what Reveal found, for the writer's next events of the
	// family (Protector.seal).
	origin origin
	// storedAt is when the stream stored the event, as loaded with it;
	// zero otherwise.
	storedAt time.Time
}

// Data is the type-specific part of an event plus the family snapshot.
type Data struct {
	TokenHash         string     `json:"token_hash,omitempty"`
	Scope             *string    `json:"scope,omitempty"`
	Audience          []string   `json:"audience,omitempty"`
	IdleExpiresAt     *time.Time `json:"idle_expires_at,omitempty"`
	AbsoluteExpiresAt *time.Time `json:"absolute_expires_at,omitempty"`
	Family            Snapshot   `json:"family"`
}

// Snapshot is the decider's view of a family after an event.
type Snapshot struct {
	Status            domain.Status `json:"status"`
	Generation        uint64        `json:"generation"`
	Scope             string        `json:"scope"`
	Audience          []string      `json:"audience"`
	CurrentHash       string        `json:"current_hash"`
	ParentHash        string        `json:"parent_hash,omitempty"`
	RotatedAt         time.Time     `json:"rotated_at,omitzero"`
	CreatedAt         time.Time     `json:"created_at"`
	LastUsedAt        time.Time     `json:"last_used_at"`
	IdleExpiresAt     time.Time     `json:"idle_expires_at"`
	AbsoluteExpiresAt time.Time     `json:"absolute_expires_at"`
	RevokedAt         time.Time     `json:"revoked_at,omitzero"`
	RevokedReason     string        `json:"revoked_reason,omitempty"`
	ArchivedAt        time.Time     `json:"archived_at,omitzero"`
}

// Wrap builds the envelope of e, with after as the family's state after it.
func Wrap(e domain.Event, after domain.Family) Envelope {
	env := Envelope{
		ID: e.ID, Type: string(e.Type), Time: e.Time.UTC(), FamilyID: e.FamilyID,
		Subject: e.Subject, ClientID: e.ClientID, PresentedBy: e.PresentedBy, Generation: e.Generation,
		PresentedGeneration: e.PresentedGeneration, Reason: e.Reason, Context: e.Context,
		DPoPJKT: e.DPoPJKT, PresentedJKT: e.PresentedJKT,
		Data: Data{TokenHash: e.TokenHash, Audience: e.Audience, Family: snapshotOf(after)},
	}
	switch e.Type {
	case domain.TokenIssued, domain.TokenRotated, domain.TokenReused:
		s := domain.ScopeString(e.Scope)
		env.Data.Scope = &s
	}
	if !e.IdleExpiresAt.IsZero() {
		t := e.IdleExpiresAt.UTC()
		env.Data.IdleExpiresAt = &t
	}
	if !e.AbsoluteExpiresAt.IsZero() {
		t := e.AbsoluteExpiresAt.UTC()
		env.Data.AbsoluteExpiresAt = &t
	}
	return env
}

func snapshotOf(f domain.Family) Snapshot {
	return Snapshot{
		Status: f.Status, Generation: f.Generation, Scope: domain.ScopeString(f.Scope), Audience: f.Audience,
		CurrentHash: f.CurrentHash, ParentHash: f.ParentHash, RotatedAt: f.RotatedAt.UTC(),
		CreatedAt: f.CreatedAt.UTC(), LastUsedAt: f.LastUsedAt.UTC(),
		IdleExpiresAt: f.IdleExpiresAt.UTC(), AbsoluteExpiresAt: f.AbsoluteExpiresAt.UTC(),
		RevokedAt: f.RevokedAt.UTC(), RevokedReason: f.RevokedReason, ArchivedAt: f.ArchivedAt.UTC(),
	}
}

// Event returns the domain event an envelope holds.
func (env Envelope) Event() domain.Event {
	e := domain.Event{
		ID: env.ID, Type: domain.EventType(env.Type), Time: env.Time, FamilyID: env.FamilyID,
		Subject: env.Subject, ClientID: env.ClientID, PresentedBy: env.PresentedBy, Generation: env.Generation,
		PresentedGeneration: env.PresentedGeneration, Reason: env.Reason, Context: env.Context,
		DPoPJKT: env.DPoPJKT, PresentedJKT: env.PresentedJKT,
		TokenHash: env.Data.TokenHash, Audience: env.Data.Audience,
	}
	if env.Data.Scope != nil {
		e.Scope = splitScope(*env.Data.Scope)
	}
	if env.Data.IdleExpiresAt != nil {
		e.IdleExpiresAt = *env.Data.IdleExpiresAt
	}
	if env.Data.AbsoluteExpiresAt != nil {
		e.AbsoluteExpiresAt = *env.Data.AbsoluteExpiresAt
	}
	return e
}

// Family returns the family state stored with the event.
func (env Envelope) Family() domain.Family {
	s := env.Data.Family
	return domain.Family{
		ID: env.FamilyID, Subject: env.Subject, ClientID: env.ClientID,
		Scope: splitScope(s.Scope), Audience: s.Audience, Status: s.Status,
		Generation: s.Generation, CurrentHash: s.CurrentHash, ParentHash: s.ParentHash,
		CreatedAt: s.CreatedAt, LastUsedAt: s.LastUsedAt,
		IdleExpiresAt: s.IdleExpiresAt, AbsoluteExpiresAt: s.AbsoluteExpiresAt,
		RevokedAt: s.RevokedAt, RevokedReason: s.RevokedReason, ArchivedAt: s.ArchivedAt,
		SubjectErased: env.Erased, DPoPJKT: env.DPoPJKT,
		RotatedAt: rotatedAt(env.Type, s.RotatedAt, env.storedAt),
	}
}

// rotatedAt is when a rotation took effect: when the stream stored it, if
// that is between lateStore and maxLateStore after it was decided. A tokend
// frozen (stopped, paused, swapped out) between deciding a rotation and
// storing it would otherwise start the reuse interval before anyone could
// have the child, and a caller's retry of the lost reply would find it
// over at once. Below lateStore the two are the same moment give or take
// the clocks; past maxLateStore the decision's clock is not the store's (a
// test's), and no caller waits that long anyway.
func rotatedAt(typ string, decided, stored time.Time) time.Time {
	if late := stored.Sub(decided); domain.EventType(typ) == domain.TokenRotated && late > lateStore && late <= maxLateStore {
		return stored
	}
	return decided
}

const (
	lateStore    = time.Second
	maxLateStore = 15 * time.Minute
)

func splitScope(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, " ")
}

// Types lists every event type tokend writes, in the contract's order.
var Types = []string{
	string(domain.TokenIssued), string(domain.TokenRotated), string(domain.TokenReused),
	string(domain.ReplayDetected), string(domain.FamilyRevoked), string(domain.RefreshRejected),
	string(domain.FamilyArchived), string(domain.KeyMismatch),
}

// KnownType reports whether t is an event type tokend writes.
func KnownType(t string) bool { return slices.Contains(Types, t) }

// Encode returns the stored form of env. Its data.state holds only what of
// the family after the event the rest of the message does not already say
// (envelope_state.go): the snapshot repeated the event's hash, times,
// expiries and generation. HTML escaping is off: events are never embedded
// in HTML, and escaping turned every < > & of a user agent into six bytes.
func Encode(env Envelope) ([]byte, error) {
	m := &encodingEnvelope{storedEnvelope: storedEnvelope{Envelope: env}}
	m.Data = storedData{Data: &m.Envelope.Data, State: &m.state}
	compact(&m.state, &m.Envelope.Data.Family, &m.Envelope)
	return marshalStored(&m.storedEnvelope)
}

// EncodeFull returns env in the stored form of versions before data.state:
// the whole family after the event as data.family. Those versions read
// nothing else, so a deployment upgrading one instance at a time writes
// this form until every instance reads data.state (--event-state full).
// An event naming its presenter also holds presented_by and
// presented_generation, which those versions skip as unknown fields.
func EncodeFull(env Envelope) ([]byte, error) {
	m := storedEnvelope{Envelope: env}
	m.Data = storedData{Data: &m.Envelope.Data, Family: &m.Envelope.Data.Family}
	return marshalStored(&m)
}

// marshalStored is JSON without HTML escaping (see Encode).
func marshalStored(m *storedEnvelope) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// ErrMalformedEvent marks a message on an event subject that is not a
// tokend event (a misconfigured publisher, say).
var ErrMalformedEvent = errors.New("malformed event")

// Decode parses a stored event and checks it belongs on subject family.
// The family after the event is data.state if present, else (as stored
// before data.state) data.family.
func Decode(data []byte, familyID string) (Envelope, error) {
	var stored storedEnvelope
	stored.Data = storedData{Data: &stored.Envelope.Data, Family: &stored.Envelope.Data.Family}
	if err := json.Unmarshal(data, &stored); err != nil {
		return Envelope{}, fmt.Errorf("%w: %v", ErrMalformedEvent, err)
	}
	env := stored.Envelope
	if stored.Data.State != nil {
		env.Data.Family = expand(env, stored.Data.State)
	}
	if !KnownType(env.Type) || env.ID == "" || env.FamilyID != familyID || env.Generation == 0 || env.Data.Family.Status == "" {
		return Envelope{}, fmt.Errorf("%w: type %q, family %q", ErrMalformedEvent, env.Type, env.FamilyID)
	}
	return env, nil
}

// PeekType returns an encoded envelope's type without decoding the rest,
// when it comes before any nested value (as Encode writes it: second); ok
// is false otherwise, and Decode tells. For readers that skip most events
// by type, such as the SSF delivery, to which a full decode of every
// rotation would cost more than everything else it does.
func PeekType(data []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", false
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return "", false
		}
		value, err := dec.Token()
		if err != nil {
			return "", false
		}
		if key == "type" {
			s, ok := value.(string)
			return s, ok
		}
		if _, nested := value.(json.Delim); nested {
			return "", false
		}
	}
	return "", false
}
