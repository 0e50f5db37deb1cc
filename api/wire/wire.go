// Package wire holds the JSON shapes of tokend's contract: the requests and
// replies of every command and query. It depends on nothing but the
// standard library and domain, so services can use the client package
// without linking the server.
package wire

import (
	"encoding/json"
	"time"

	"github.com/tokend/tokend/domain"
)

// MaxRequestBytes bounds every request body; the largest valid command is a
// few KiB.
const MaxRequestBytes = 64 << 10

// IssueRequest is the wire form of tokens.cmd.issue.
type IssueRequest struct {
	Subject  string         `json:"subject"`
	ClientID string         `json:"client_id"`
	Scope    string         `json:"scope"`
	Audience []string       `json:"audience"`
	Context  domain.Context `json:"context"`
	// DPoPJKT binds the family to a DPoP key (RFC 9449): the RFC 7638
	// SHA-256 thumbprint of the public key whose proof the authorization
	// server verified at its code exchange. Left out: a bearer family.
	DPoPJKT string `json:"dpop_jkt,omitempty"`
}

// RefreshRequest is the wire form of tokens.cmd.refresh.
type RefreshRequest struct {
	RefreshToken string         `json:"refresh_token"`
	ClientID     string         `json:"client_id"`
	Scope        *string        `json:"scope"`
	Audience     string         `json:"audience"`
	Context      domain.Context `json:"context"`
	// DPoPProof is a DPoP proof JWT (RFC 9449 section 4), as the client
	// sent it in its DPoP header. DPoPMethod and DPoPURL are the method and
	// URL of the request it was sent with, which a gateway forwards; left
	// out, POST and the deployment's token endpoint (issuer +
	// /oauth2/token).
	DPoPProof  string `json:"dpop_proof,omitempty"`
	DPoPMethod string `json:"dpop_htm,omitempty"`
	DPoPURL    string `json:"dpop_htu,omitempty"`
	// Recover says the caller lost the reply of an earlier refresh of this
	// token: if it was rotated longer ago than the reuse interval, the
	// family ends as a lost rotation rather than a replay.
	Recover bool `json:"recover,omitempty"`
}

// RevokeRequest is the wire form of tokens.cmd.revoke: exactly one selector.
type RevokeRequest struct {
	RefreshToken *string        `json:"refresh_token"`
	FamilyID     *string        `json:"family_id"`
	Subject      *string        `json:"subject"`
	ClientID     *string        `json:"client_id"`
	Reason       string         `json:"reason"`
	Context      domain.Context `json:"context"`
}

// TokenReply answers a successful issue or refresh.
type TokenReply struct {
	RefreshToken          string `json:"refresh_token"`
	FamilyID              string `json:"family_id"`
	TokenType             string `json:"token_type"`
	AccessToken           string `json:"access_token"`
	ExpiresIn             int64  `json:"expires_in"`
	Scope                 string `json:"scope"`
	RefreshTokenExpiresAt string `json:"refresh_token_expires_at"`
	Seq                   uint64 `json:"seq"`
	// DPoPNonce is the nonce the client's next DPoP proof should carry,
	// when the deployment uses nonces (RFC 9449 section 8.2).
	DPoPNonce string `json:"dpop_nonce,omitempty"`
	// ReuseIntervalMs is the family's reuse interval: how long after a
	// rotation presenting its parent again still returns the same child.
	// A caller retrying a refresh whose reply it lost has that long; 0:
	// reuse is off, and no retry of a rotated token is safe. Absent from
	// tokend before it was added (nil).
	ReuseIntervalMs *int64 `json:"reuse_interval_ms,omitempty"`
}

// RevokeReply answers a revoke; Seq is the last family.revoked event's, if any.
type RevokeReply struct {
	RevokedFamilies int    `json:"revoked_families"`
	Seq             uint64 `json:"seq,omitempty"`
}

// ErrorReply is the body of every failure.
type ErrorReply struct {
	Error        string `json:"error"`
	Description  string `json:"error_description"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
	// DPoPNonce goes with use_dpop_nonce: the nonce to put in a new proof.
	DPoPNonce string `json:"dpop_nonce,omitempty"`
}

// IntrospectRequest is the wire form of tokens.query.introspect.
type IntrospectRequest struct {
	RefreshToken string `json:"refresh_token"`
	MinSeq       uint64 `json:"min_seq"`
}

// FamilyRequest is the wire form of tokens.query.family.
type FamilyRequest struct {
	FamilyID string `json:"family_id"`
	MinSeq   uint64 `json:"min_seq"`
}

// AuditRequest is the wire form of tokens.query.audit.
type AuditRequest struct {
	FamilyID string `json:"family_id"`
	Subject  string `json:"subject"`
	ClientID string `json:"client_id"` // the family's owner
	// PresentedBy selects the events in which this client presented
	// another client's token. Left out when empty, so that a request
	// without it is one a tokend older than the field accepts.
	PresentedBy string   `json:"presented_by,omitempty"`
	Types       []string `json:"types"`
	Since       string   `json:"since"`
	Until       string   `json:"until"`
	Limit       *int     `json:"limit"`
	AfterSeq    uint64   `json:"after_seq"`
	MinSeq      uint64   `json:"min_seq"`
}

// Audit page sizes. A page ends at Limit events or once its events reach
// about MaxAuditPageBytes, whichever comes first, so a reply stays well
// under NATS's 1 MiB max payload.
const (
	DefaultAuditLimit = 100
	MaxAuditLimit     = 1000
	MaxAuditPageBytes = 256 << 10
)

// Introspection is an RFC 7662 answer for a refresh token.
type Introspection struct {
	Active    bool     `json:"active"`
	FamilyID  string   `json:"family_id,omitempty"`
	Sub       string   `json:"sub,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	Scope     *string  `json:"scope,omitempty"`
	Aud       []string `json:"aud,omitempty"`
	Exp       int64    `json:"exp,omitempty"`
	Iat       int64    `json:"iat,omitempty"`
	TokenType string   `json:"token_type,omitempty"`
	// Cnf names the DPoP key a token of a bound family is bound to (RFC
	// 9449 section 6.2); left out for a bearer family.
	Cnf     *Confirmation `json:"cnf,omitempty"`
	AsOfSeq uint64        `json:"as_of_seq"`
}

// Confirmation is RFC 7800's cnf claim as DPoP uses it (RFC 9449 section
// 6): JKT is the RFC 7638 SHA-256 thumbprint of the key.
type Confirmation struct {
	JKT string `json:"jkt"`
}

// ConfirmationOf is the cnf of a token of a family bound to the key jkt,
// nil for a bearer family ("") so that the member is left out.
func ConfirmationOf(jkt string) *Confirmation {
	if jkt == "" {
		return nil
	}
	return &Confirmation{JKT: jkt}
}

// FamilyView is a family and its chain of tokens.
type FamilyView struct {
	FamilyID      string     `json:"family_id"`
	Subject       string     `json:"subject"`
	ClientID      string     `json:"client_id"`
	Scope         string     `json:"scope"`
	Audience      []string   `json:"audience"`
	Status        string     `json:"status"`
	Generation    uint64     `json:"generation"`
	CreatedAt     time.Time  `json:"created_at"`
	LastUsedAt    time.Time  `json:"last_used_at"`
	ExpiresAt     time.Time  `json:"expires_at"`
	RevokedAt     *time.Time `json:"revoked_at"`
	RevokedReason string     `json:"revoked_reason"`
	// ArchivedAt is set once family.archived summarized the family: its
	// history may be gone from the stream, tokens included.
	ArchivedAt *time.Time  `json:"archived_at,omitempty"`
	Tokens     []TokenView `json:"tokens"`
	AsOfSeq    uint64      `json:"as_of_seq"`
	// Erased is set once the subject's personal data was erased
	// (personal data protection): Subject is then its pseudonym.
	Erased bool `json:"erased,omitempty"`
	// DPoPJKT is the thumbprint of the DPoP key (RFC 9449) every refresh
	// of the family must prove possession of; left out for a bearer family.
	DPoPJKT string `json:"dpop_jkt,omitempty"`
}

// TokenView is one generation of a family; the token itself is never kept.
type TokenView struct {
	Generation uint64     `json:"generation"`
	Status     string     `json:"status"`
	IssuedAt   time.Time  `json:"issued_at"`
	RotatedAt  *time.Time `json:"rotated_at"`
}

// AuditEvent is a stored event as security teams see it.
type AuditEvent struct {
	Seq      uint64    `json:"seq"`
	ID       string    `json:"id"`
	Type     string    `json:"type"`
	Time     time.Time `json:"time"`
	FamilyID string    `json:"family_id"`
	Subject  string    `json:"subject"`
	ClientID string    `json:"client_id"` // the family's owner
	// PresentedBy is the client that presented the owner's token, when it
	// is another; Context is then that client's request.
	PresentedBy string `json:"presented_by,omitempty"`
	Generation  uint64 `json:"generation"` // the family's
	// PresentedGeneration is the presented token's generation (reused,
	// replay_detected, refresh.rejected).
	PresentedGeneration uint64 `json:"presented_generation,omitempty"`
	// DPoPJKT is the key thumbprint the family is bound to, on every event
	// of a bound family; PresentedJKT the other key whose proof came with
	// the family's token (token.key_mismatch).
	DPoPJKT      string          `json:"dpop_jkt,omitempty"`
	PresentedJKT string          `json:"presented_jkt,omitempty"`
	Reason       string          `json:"reason"`
	Context      json.RawMessage `json:"context"`
	// Erased is set once the subject's personal data was erased: Subject
	// is then its pseudonym and Context {}.
	Erased bool `json:"erased,omitempty"`
	// ContextExpired is set once Context is past its retention
	// (--pii-context-retention): Context is then {}.
	ContextExpired bool `json:"context_expired,omitempty"`
}

// AuditPage is one page of events in ascending seq.
type AuditPage struct {
	Events       []AuditEvent `json:"events"`
	NextAfterSeq uint64       `json:"next_after_seq"`
	AsOfSeq      uint64       `json:"as_of_seq"`
}
