package events

import (
	"slices"
	"time"

	"github.com/tokend/tokend/domain"
)

// storedEnvelope is an Envelope as stored: data holds the event's own
// fields and the family after it, as data.state (written by Encode) or, in
// messages stored before data.state, as the full snapshot data.family.
type storedEnvelope struct {
	Envelope
	Data storedData `json:"data"` // shadows Envelope.Data
}

// storedData points into its storedEnvelope's Envelope.Data, so a message
// is read into the envelope in place, not into a copy.
type storedData struct {
	*Data
	Family *Snapshot `json:"family,omitempty"` // shadows Data.Family; nil when encoding
	State  *state    `json:"state,omitempty"`
}

// encodingEnvelope holds a message being encoded and its state, whose
// fields point into Envelope.Data.Family: one allocation for all of it.
type encodingEnvelope struct {
	storedEnvelope
	state state
}

// state is a Snapshot without the repetition: a field is left out when it
// equals its default, derived from the rest of the message (stateDefaults
// and expand), and present otherwise, even when zero.
type state struct {
	Status            *domain.Status `json:"status,omitempty"`
	Generation        *uint64        `json:"generation,omitempty"`
	Scope             *string        `json:"scope,omitempty"`
	Audience          *[]string      `json:"audience,omitempty"`
	CurrentHash       *string        `json:"current_hash,omitempty"`
	ParentHash        *string        `json:"parent_hash,omitempty"`
	RotatedAt         *time.Time     `json:"rotated_at,omitempty"`
	CreatedAt         *time.Time     `json:"created_at,omitempty"`
	LastUsedAt        *time.Time     `json:"last_used_at,omitempty"`
	IdleExpiresAt     *time.Time     `json:"idle_expires_at,omitempty"`
	AbsoluteExpiresAt *time.Time     `json:"absolute_expires_at,omitempty"`
	RevokedAt         *time.Time     `json:"revoked_at,omitempty"`
	RevokedReason     *string        `json:"revoked_reason,omitempty"`
	ArchivedAt        *time.Time     `json:"archived_at,omitempty"`
}

// stateDefaults returns what the message says about the family after it,
// following domain.Evolve: the event's own data is the family's where the
// event set it, and the event's time is when it set it. last_used_at and
// status, which follow from other state fields, are left to expand.
func stateDefaults(env Envelope) Snapshot {
	d := env.Data
	s := Snapshot{Generation: env.Generation, Audience: d.Audience, CurrentHash: d.TokenHash}
	if len(s.Audience) == 0 {
		s.Audience = []string{}
	}
	if d.Scope != nil {
		s.Scope = *d.Scope
	}
	if d.IdleExpiresAt != nil {
		s.IdleExpiresAt = *d.IdleExpiresAt
	}
	if d.AbsoluteExpiresAt != nil {
		s.AbsoluteExpiresAt = *d.AbsoluteExpiresAt
	}
	switch domain.EventType(env.Type) {
	case domain.TokenIssued:
		s.CreatedAt = env.Time
	case domain.TokenRotated:
		s.RotatedAt = env.Time
	case domain.TokenReused, domain.ReplayDetected:
		// The presented token is the parent (always when reused; when
		// replayed, unless it is an older ancestor).
		s.ParentHash = d.TokenHash
	case domain.FamilyRevoked:
		s.RevokedAt, s.RevokedReason = env.Time, env.Reason
	case domain.FamilyArchived:
		s.ArchivedAt = env.Time
	}
	return s
}

// lastUsedDefault: a family is last used when it was issued or last rotated.
func lastUsedDefault(s Snapshot) time.Time {
	if s.RotatedAt.IsZero() {
		return s.CreatedAt
	}
	return s.RotatedAt
}

func statusDefault(s Snapshot) domain.Status {
	if s.RevokedAt.IsZero() {
		return domain.StatusActive
	}
	return domain.StatusRevoked
}

// compact sets s to the state of f, the snapshot of env. Times compare
// with ==, not Equal: a field is left out only if its default is the very
// same value, location included, so expand gives it back exactly.
func compact(s *state, f *Snapshot, env *Envelope) {
	def := stateDefaults(*env)
	s.Status = unless(&f.Status, statusDefault(*f))
	s.Generation = unless(&f.Generation, def.Generation)
	s.Scope = unless(&f.Scope, def.Scope)
	if !slices.Equal(f.Audience, def.Audience) {
		if f.Audience == nil {
			f.Audience = []string{} // null would read as left out
		}
		s.Audience = &f.Audience
	}
	s.CurrentHash = unless(&f.CurrentHash, def.CurrentHash)
	s.ParentHash = unless(&f.ParentHash, def.ParentHash)
	s.RotatedAt = unless(&f.RotatedAt, def.RotatedAt)
	s.CreatedAt = unless(&f.CreatedAt, def.CreatedAt)
	s.LastUsedAt = unless(&f.LastUsedAt, lastUsedDefault(*f))
	s.IdleExpiresAt = unless(&f.IdleExpiresAt, def.IdleExpiresAt)
	s.AbsoluteExpiresAt = unless(&f.AbsoluteExpiresAt, def.AbsoluteExpiresAt)
	s.RevokedAt = unless(&f.RevokedAt, def.RevokedAt)
	s.RevokedReason = unless(&f.RevokedReason, def.RevokedReason)
	s.ArchivedAt = unless(&f.ArchivedAt, def.ArchivedAt)
}

// expand is compact's inverse: the snapshot a stored state stands for.
func expand(env Envelope, s *state) Snapshot {
	f := stateDefaults(env)
	set(&f.Generation, s.Generation)
	set(&f.Scope, s.Scope)
	set(&f.Audience, s.Audience)
	set(&f.CurrentHash, s.CurrentHash)
	set(&f.ParentHash, s.ParentHash)
	set(&f.RotatedAt, s.RotatedAt)
	set(&f.CreatedAt, s.CreatedAt)
	set(&f.IdleExpiresAt, s.IdleExpiresAt)
	set(&f.AbsoluteExpiresAt, s.AbsoluteExpiresAt)
	set(&f.RevokedAt, s.RevokedAt)
	set(&f.RevokedReason, s.RevokedReason)
	set(&f.ArchivedAt, s.ArchivedAt)
	f.LastUsedAt = lastUsedDefault(f)
	set(&f.LastUsedAt, s.LastUsedAt)
	f.Status = statusDefault(f)
	set(&f.Status, s.Status)
	return f
}

// unless returns nil if *v is def, else v.
func unless[T comparable](v *T, def T) *T {
	if *v == def {
		return nil
	}
	return v
}

func set[T any](dst, v *T) {
	if v != nil {
		*dst = *v
	}
}
