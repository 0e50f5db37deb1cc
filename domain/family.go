package domain

import (
	"errors"
	"time"
)

// EventType names what happened to a family, as the contract spells it.
type EventType string

const (
	TokenIssued     EventType = "token.issued"
	TokenRotated    EventType = "token.rotated"
	TokenReused     EventType = "token.reused"
	ReplayDetected  EventType = "token.replay_detected"
	FamilyRevoked   EventType = "family.revoked"
	RefreshRejected EventType = "refresh.rejected"
	// FamilyArchived summarizes a family past its absolute expiry: its state
	// (carried by every stored event) outlives the history, which retention
	// drops.
	FamilyArchived EventType = "family.archived"
	// KeyMismatch records a DPoP proof by another key than the one its
	// family is bound to: the token was stolen, since only the thief lacks
	// the key. Like a replay it is followed by family.revoked, unless the
	// client's on_replay is audit_only.
	KeyMismatch EventType = "token.key_mismatch"
)

// Reasons recorded on family.revoked and refresh.rejected events.
const (
	ReasonReplayDetected = "replay_detected"
	ReasonRevoked        = "revoked"
	ReasonClientMismatch = "client_mismatch"
	ReasonExpired        = "expired"
	ReasonFamilyRevoked  = "family_revoked"
	ReasonInvalidScope   = "invalid_scope"
	ReasonInvalidTarget  = "invalid_target"
	ReasonUnknownToken   = "unknown_token"
	// ReasonRetiredKey refuses a token with a valid MAC under a key retired
	// before its family was created: tokend never made it, so whoever did
	// holds the retired key.
	ReasonRetiredKey = "retired_key"
	// ReasonSubjectErased revokes the families of a subject whose personal
	// data is erased (tokenctl subjects erase).
	ReasonSubjectErased = "subject_erased"
	// ReasonLostRotation refuses, and revokes the family of, a parent
	// presented again outside the reuse interval by a caller that says it
	// lost the reply of its earlier refresh (Refresh.Recover): the child
	// is out of its reach, and no one must be left holding a chain.
	ReasonLostRotation = "lost_rotation"
	// ReasonDPoPKeyMismatch revokes a family after token.key_mismatch.
	ReasonDPoPKeyMismatch = "dpop_key_mismatch"
	// ReasonDPoPProofMissing refuses a refresh without a DPoP proof of a
	// family bound to a key, or of a client registered with
	// dpop_bound_access_tokens.
	ReasonDPoPProofMissing = "dpop_proof_missing"
)

// Event is one fact about a family. Token fields hold hashes, never tokens.
type Event struct {
	ID         string
	Type       EventType
	Time       time.Time
	FamilyID   string
	Subject    string
	ClientID   string
	Generation uint64 // the family's generation after the event
	Reason     string
	Context    Context
	// PresentedBy is the client that presented the token when it is not the
	// family's own (refresh.rejected, client_mismatch); ClientID stays the
	// owner's.
	PresentedBy string
	// PresentedGeneration is the generation of the presented token (reused,
	// replay_detected, refresh.rejected), beside Generation, the family's:
	// "generation 1 replayed after generation 2 was used" reads off one event.
	PresentedGeneration uint64
	// DPoPJKT is the key thumbprint the family is bound to (RFC 9449),
	// on every event of a bound family; PresentedJKT is the other key a
	// proof was signed with (token.key_mismatch).
	DPoPJKT      string
	PresentedJKT string

	// TokenHash is the new current token (issued, rotated) or the presented
	// one (reused, replay_detected, refresh.rejected).
	TokenHash string
	// Scope is the grant (issued) or the scope handed out by this exchange
	// (rotated, reused).
	Scope []string
	// Audience is the grant's resources (issued) or the one chosen for this
	// exchange's access token (rotated, reused; empty when the family has none).
	Audience []string
	// IdleExpiresAt is set by issued and rotated; AbsoluteExpiresAt by issued.
	IdleExpiresAt     time.Time
	AbsoluteExpiresAt time.Time
}

// Status is a family's stored status; expiry is derived from time (StatusAt).
type Status string

const (
	StatusActive  Status = "active"
	StatusRevoked Status = "revoked"
	StatusExpired Status = "expired"
)

// Family is the state the decider needs, folded from a family's events.
type Family struct {
	ID, Subject, ClientID string
	Scope, Audience       []string
	Status                Status // empty until issued
	Generation            uint64
	CurrentHash           string
	ParentHash            string
	RotatedAt             time.Time // when the parent was exchanged for the current token
	CreatedAt, LastUsedAt time.Time
	IdleExpiresAt         time.Time
	AbsoluteExpiresAt     time.Time
	RevokedAt             time.Time
	RevokedReason         string
	ArchivedAt            time.Time // zero until family.archived
	// SubjectErased reports that the subject's personal data is gone
	// (its data key destroyed: personal data protection): Subject is its
	// pseudonym. Not an event's doing but the key store's, so Evolve
	// keeps it. Such a family can never be used again: a token minted for
	// it would name the pseudonym as its subject.
	SubjectErased bool
	// DPoPJKT is the RFC 7638 thumbprint of the key every refresh of the
	// family must prove possession of; empty for a bearer family.
	DPoPJKT string
}

// Exists reports whether the family was issued.
func (f Family) Exists() bool { return f.Status != "" }

// ExpiresAt returns when the current token dies unless rotated: the earlier of
// idle and absolute expiry.
func (f Family) ExpiresAt() time.Time {
	if f.AbsoluteExpiresAt.Before(f.IdleExpiresAt) {
		return f.AbsoluteExpiresAt
	}
	return f.IdleExpiresAt
}

// StatusAt returns the family's status at now, expiry included.
func (f Family) StatusAt(now time.Time) Status {
	if f.Status == StatusActive && !now.Before(f.ExpiresAt()) {
		return StatusExpired
	}
	return f.Status
}

// Evolve applies one event to a family. It never fails: events are facts.
func Evolve(f Family, e Event) Family {
	switch e.Type {
	case TokenIssued:
		return Family{
			ID: e.FamilyID, Subject: e.Subject, ClientID: e.ClientID,
			Scope: e.Scope, Audience: e.Audience,
			Status: StatusActive, Generation: e.Generation, CurrentHash: e.TokenHash,
			CreatedAt: e.Time, LastUsedAt: e.Time,
			IdleExpiresAt: e.IdleExpiresAt, AbsoluteExpiresAt: e.AbsoluteExpiresAt,
			DPoPJKT: e.DPoPJKT,
		}
	case TokenRotated:
		f.Generation = e.Generation
		f.ParentHash, f.CurrentHash = f.CurrentHash, e.TokenHash
		f.RotatedAt, f.LastUsedAt = e.Time, e.Time
		f.IdleExpiresAt = e.IdleExpiresAt
	case FamilyRevoked:
		f.Status = StatusRevoked
		f.RevokedAt, f.RevokedReason = e.Time, e.Reason
	case FamilyArchived:
		f.ArchivedAt = e.Time
	}
	return f
}

// Fold evolves an empty family through events.
func Fold(events []Event) Family {
	var f Family
	for _, e := range events {
		f = Evolve(f, e)
	}
	return f
}

// Policy holds the lifetimes a deployment configures.
type Policy struct {
	ReuseInterval time.Duration // 0 disables reuse: every parent presentation is a replay
	IdleTTL       time.Duration
	AbsoluteTTL   time.Duration
}

// Decider decides commands against a family. Now and NewEventID are injected
// so decisions are reproducible in tests.
type Decider struct {
	Policy     Policy
	Now        func() time.Time
	NewEventID func() string
}

// Issue starts a family. Token is its generation-1 token, minted by the caller.
type Issue struct {
	Token    Token
	Subject  string
	ClientID string
	Scope    []string
	Audience []string
	Context  Context
	// DPoPJKT binds the family to a DPoP key; empty for a bearer family.
	DPoPJKT string
}

// Refresh exchanges a presented token.
type Refresh struct {
	Presented Token
	ClientID  string
	// Scope is the requested down-scope; nil means the whole grant.
	Scope []string
	// Audience is the requested resource; empty means the family's first.
	Audience string
	Context  Context
	// Child is a fresh token of the next generation, used if this refresh rotates.
	Child Token
	// Reusable is the current token, derived again from the presented token
	// (TokenCodec.ChildOf) when that may be the just-rotated parent; zero
	// otherwise.
	Reusable Token
	// OnReplay is what a detected replay does; empty means
	// ReplayRevokeFamily. ReplayRevokeSubject revokes this family here and
	// leaves the subject's other families to the caller.
	OnReplay ReplayAction
	// ProofJKT is the thumbprint of the key of the request's verified DPoP
	// proof; empty without one. ProofRequired refuses a refresh without a
	// proof even of a bearer family (the client is registered with
	// dpop_bound_access_tokens).
	ProofJKT      string
	ProofRequired bool
	// Recover says the caller lost the reply of an earlier refresh of
	// this token (it timed out): the parent outside the reuse interval is
	// then a lost rotation, which ends the family, not a replay. Any older
	// ancestor is a replay whatever it says.
	Recover bool
}

// Revoke kills a family. Reason defaults to "revoked".
type Revoke struct {
	Reason  string
	Context Context
	// Token, when revoking by refresh token, must be one the family handed
	// out (current, parent or an ancestor); any other revokes nothing.
	Token *Token
	// ClientID, when set, restricts the revocation to a family of this
	// client: a client revokes only its own (RFC 7009 section 2.1).
	ClientID string
}

// Archive summarizes a family whose absolute lifetime is over, so its
// history can be dropped while its final state stays on record.
type Archive struct{}

// HandedOut reports whether a verified token of this family is one it handed
// out: the current token, the parent, or an older ancestor (a valid MAC with
// an older generation proves one).
func (f Family) HandedOut(t Token) bool {
	if !f.Exists() || t.FamilyID != f.ID || t.KeyRetiredBefore(f.CreatedAt) {
		return false
	}
	switch {
	case t.Generation == f.Generation:
		return SameHash(t.Hash(), f.CurrentHash)
	case t.Generation+1 == f.Generation:
		return SameHash(t.Hash(), f.ParentHash)
	}
	return t.Generation < f.Generation
}

// ErrFamilyExists is returned when an issue hits an existing family id.
var ErrFamilyExists = errors.New("family id already in use")

// Decide returns the events a command produces on f. For a refused refresh
// it returns both the events to record (refresh.rejected, or replay_detected
// with family.revoked) and the error to reply with once they are stored:
// ErrInvalidGrant, or EInvalidScope / EInvalidTarget errors. Invalid input
// yields an EInvalidRequest error and no events. Archive yields
// family.archived once the family's absolute expiry has passed, else nothing.
//
// The clock is read once: every check and every event of one decision
// happen at the same instant, so a decision never straddles an expiry or
// the end of the reuse interval.
func (d Decider) Decide(f Family, cmd any) ([]Event, error) {
	now := d.Now().UTC()
	switch c := cmd.(type) {
	case Issue:
		return d.issue(f, c, now)
	case Refresh:
		return d.refresh(f, c, now)
	case Revoke:
		return d.revoke(f, c, now)
	case Archive:
		return d.archive(f, now), nil
	}
	return nil, errors.New("unknown command")
}

func (d Decider) event(f Family, t EventType, ctx Context, now time.Time) Event {
	return Event{ID: d.NewEventID(), Type: t, Time: now, FamilyID: f.ID, Subject: f.Subject,
		ClientID: f.ClientID, Generation: f.Generation, Context: ctx, DPoPJKT: f.DPoPJKT}
}

func (d Decider) archive(f Family, now time.Time) []Event {
	if !f.Exists() || !f.ArchivedAt.IsZero() || now.Before(f.AbsoluteExpiresAt) {
		return nil
	}
	return []Event{d.event(f, FamilyArchived, nil, now)}
}

func (d Decider) issue(f Family, c Issue, now time.Time) ([]Event, error) {
	if f.Exists() {
		return nil, ErrFamilyExists
	}
	if err := ValidateName("subject", c.Subject); err != nil {
		return nil, err
	}
	if err := ValidateName("client_id", c.ClientID); err != nil {
		return nil, err
	}
	if err := ValidateContext(c.Context); err != nil {
		return nil, err
	}
	if c.DPoPJKT != "" && !ValidThumbprint(c.DPoPJKT) {
		return nil, Errorf(EInvalidRequest, "dpop_jkt must be the base64url SHA-256 thumbprint of a key (RFC 7638), 43 characters")
	}
	if c.Token.Generation != 1 {
		return nil, errors.New("issue needs a generation-1 token")
	}
	f = Family{ID: c.Token.FamilyID, Subject: c.Subject, ClientID: c.ClientID, Generation: 1, DPoPJKT: c.DPoPJKT}
	e := d.event(f, TokenIssued, c.Context, now)
	e.TokenHash = c.Token.Hash()
	e.Scope, e.Audience = c.Scope, c.Audience
	e.IdleExpiresAt = e.Time.Add(d.Policy.IdleTTL)
	e.AbsoluteExpiresAt = e.Time.Add(d.Policy.AbsoluteTTL)
	return []Event{e}, nil
}

func (d Decider) revoke(f Family, c Revoke, now time.Time) ([]Event, error) {
	reason := c.Reason
	if reason == "" {
		reason = ReasonRevoked
	}
	if err := ValidateName("reason", reason); err != nil {
		return nil, err
	}
	if err := ValidateContext(c.Context); err != nil {
		return nil, err
	}
	if !f.Exists() || f.Status == StatusRevoked || (c.Token != nil && !f.HandedOut(*c.Token)) ||
		(c.ClientID != "" && c.ClientID != f.ClientID) {
		return nil, nil
	}
	e := d.event(f, FamilyRevoked, c.Context, now)
	e.Reason = reason
	return []Event{e}, nil
}

func (d Decider) refresh(f Family, c Refresh, now time.Time) ([]Event, error) {
	if err := ValidateContext(c.Context); err != nil {
		return nil, err
	}
	p := c.Presented
	if !f.Exists() || p.FamilyID != f.ID {
		return nil, ErrInvalidGrant // nothing to record against: no such family
	}
	presented := p.Hash()
	presentedBy := ""
	if c.ClientID != f.ClientID {
		presentedBy = c.ClientID
	}
	reject := func(reason string, err error) ([]Event, error) {
		e := d.event(f, RefreshRejected, c.Context, now)
		e.Reason, e.TokenHash = reason, presented
		e.PresentedBy, e.PresentedGeneration = presentedBy, p.Generation
		return []Event{e}, err
	}
	// A token under a key retired before the family existed does not verify
	// for it, whatever else it claims: tokend never made it.
	if p.KeyRetiredBefore(f.CreatedAt) {
		return reject(ReasonRetiredKey, ErrInvalidGrant)
	}
	// Ownership comes first: a foreign presentation never counts as replay.
	if c.ClientID != f.ClientID {
		return reject(ReasonClientMismatch, ErrInvalidGrant)
	}
	if f.Status == StatusRevoked {
		return reject(ReasonFamilyRevoked, ErrInvalidGrant)
	}
	if f.StatusAt(now) == StatusExpired {
		return reject(ReasonExpired, ErrInvalidGrant)
	}
	if f.SubjectErased {
		// A live family whose subject's key is gone: the key bucket lost,
		// or restored without a key since erased again. An erasure itself
		// revokes first.
		revoked := d.event(f, FamilyRevoked, c.Context, now)
		revoked.Reason = ReasonSubjectErased
		return []Event{revoked}, ErrInvalidGrant
	}
	// Possession of the key comes before the token's state: a proof by
	// another key is theft whichever of the family's tokens it comes with,
	// and the just-rotated parent is handed its child again only with the
	// family's key.
	switch {
	case c.ProofJKT == "" && (f.DPoPJKT != "" || c.ProofRequired):
		return reject(ReasonDPoPProofMissing, Errorf(EInvalidDPoPProof, "a DPoP proof is required with this refresh token"))
	case f.DPoPJKT != "" && c.ProofJKT != f.DPoPJKT:
		mismatch := d.event(f, KeyMismatch, c.Context, now)
		mismatch.TokenHash, mismatch.PresentedGeneration = presented, p.Generation
		mismatch.PresentedJKT = c.ProofJKT
		if c.OnReplay == ReplayAuditOnly {
			return []Event{mismatch}, ErrInvalidGrant
		}
		revoked := d.event(f, FamilyRevoked, c.Context, now)
		revoked.Reason = ReasonDPoPKeyMismatch
		return []Event{mismatch, revoked}, ErrInvalidGrant
	}

	isCurrent := p.Generation == f.Generation && SameHash(presented, f.CurrentHash)
	isParent := p.Generation+1 == f.Generation && SameHash(presented, f.ParentHash)
	isAncestor := p.Generation+1 < f.Generation // a verified MAC proves it was ours
	switch {
	case isCurrent:
	case isParent && now.Before(f.RotatedAt.Add(d.Policy.ReuseInterval)):
		if !SameHash(c.Reusable.Hash(), f.CurrentHash) {
			// The child cannot be derived again: it was minted under a key no
			// longer held.
			return reject(ReasonExpired, ErrInvalidGrant)
		}
	case isParent && c.Recover:
		rejected, _ := reject(ReasonLostRotation, nil)
		revoked := d.event(f, FamilyRevoked, c.Context, now)
		revoked.Reason = ReasonLostRotation
		return append(rejected, revoked), ErrInvalidGrant
	case isParent || isAncestor:
		replay := d.event(f, ReplayDetected, c.Context, now)
		replay.TokenHash, replay.PresentedGeneration = presented, p.Generation
		if c.OnReplay == ReplayAuditOnly {
			// A rollout: the replay is recorded and refused, the family lives.
			return []Event{replay}, ErrInvalidGrant
		}
		revoked := d.event(f, FamilyRevoked, c.Context, now)
		revoked.Reason = ReasonReplayDetected
		return []Event{replay, revoked}, ErrInvalidGrant
	default:
		return reject(ReasonUnknownToken, ErrInvalidGrant)
	}

	scope := f.Scope
	if c.Scope != nil {
		if !Subset(c.Scope, f.Scope) {
			return reject(ReasonInvalidScope, Errorf(EInvalidScope, "requested scope exceeds the granted scope"))
		}
		scope = c.Scope
	}
	var audience []string
	switch {
	case c.Audience != "":
		if !contains(f.Audience, c.Audience) {
			return reject(ReasonInvalidTarget, Errorf(EInvalidTarget, "requested audience is not granted to this family"))
		}
		audience = []string{c.Audience}
	case len(f.Audience) > 0:
		audience = f.Audience[:1]
	}

	if !isCurrent {
		e := d.event(f, TokenReused, c.Context, now)
		e.TokenHash, e.Scope, e.Audience = presented, scope, audience
		e.PresentedGeneration = p.Generation
		return []Event{e}, nil
	}
	if c.Child.FamilyID != f.ID || c.Child.Generation != f.Generation+1 {
		return nil, errors.New("rotation needs a child token of the next generation")
	}
	f.Generation++
	e := d.event(f, TokenRotated, c.Context, now)
	e.TokenHash, e.Scope, e.Audience = c.Child.Hash(), scope, audience
	e.IdleExpiresAt = e.Time.Add(d.Policy.IdleTTL)
	return []Event{e}, nil
}
