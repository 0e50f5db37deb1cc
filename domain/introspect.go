package domain

import "time"

// IssuedAtLeeway is how far before its family's creation an access token's
// iat may lie: iat is in whole seconds, and the instance that minted the
// token may have a clock a little behind the one that created the family.
const IssuedAtLeeway = time.Minute

// RefreshTokenActive reports whether t, a verified refresh token, is
// active at now in f, its family as of the family's last event: t is the
// family's current token (its generation and hash), not under a MAC key
// retired before the family was created, and the family is neither revoked
// nor expired. A rotated parent is inactive, even inside the reuse
// interval: only the current token may be presented without it counting
// as a reuse. A family whose subject was erased has no active token.
func (f Family) RefreshTokenActive(t Token, now time.Time) bool {
	return f.Exists() && t.FamilyID == f.ID && !t.KeyRetiredBefore(f.CreatedAt) && !f.SubjectErased &&
		t.Generation == f.Generation && SameHash(t.Hash(), f.CurrentHash) && f.StatusAt(now) == StatusActive
}

// AccessClaims are the claims of an access token whose signature verified,
// as introspection checks them against the token's family.
type AccessClaims struct {
	FamilyID  string // sid
	ClientID  string
	Subject   string
	Scope     []string
	Audience  []string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// AccessTokenActive reports whether an access token claiming c is active
// at now in f, the family c.FamilyID names, as of the family's last event:
// the token is unexpired, the family neither revoked nor expired, and the
// claims within the family: its client and subject, a scope within its
// grant, only its audiences, issued no earlier than the family was created
// (less IssuedAtLeeway). tokend mints nothing else, so a token claiming
// more was signed by someone holding a signing key, whatever it claims.
func (f Family) AccessTokenActive(c AccessClaims, now time.Time) bool {
	if !f.Exists() || f.SubjectErased || c.FamilyID != f.ID || !now.Before(c.ExpiresAt) || f.StatusAt(now) != StatusActive {
		return false
	}
	if c.ClientID != f.ClientID || c.Subject != f.Subject || !Subset(c.Scope, f.Scope) || !Subset(c.Audience, f.Audience) {
		return false
	}
	return !c.IssuedAt.Before(f.CreatedAt.Add(-IssuedAtLeeway))
}
