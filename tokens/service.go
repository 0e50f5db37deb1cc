// Package tokens is the application service of tokend: it runs the issue,
// refresh and revoke commands with the client registry's policy and the
// rate limits, mints tokens with the deployment's keys, and has the family
// writer (events) decide and append.
package tokens

import (
	"context"
	"crypto/rand"
	"errors"
	"time"

	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/dpop"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/ratelimit"
	"github.com/tokend/tokend/revoking"
)

// Service runs the token commands: it mints tokens, derives a rotated
// parent's child again inside the reuse interval, and has the writer decide
// and append.
type Service struct {
	writer  *events.Writer
	codec   *keys.Keyring // swapped atomically when keys rotate: see UseKeyring
	decider domain.Decider

	// Rate limits, set before the service is used; nil allows everything.
	// RefreshLimit is per family and spares what must never wait: the
	// just-rotated parent inside the reuse interval (a legitimate parallel
	// refresh or retry) and a detected replay (which ends the family).
	// IssueLimit is per client id. ForeignLimit is per presenting client id
	// and charges presentations of another client's token: charged to the
	// family, a foreign client could lock the owner out.
	RefreshLimit, IssueLimit, ForeignLimit *ratelimit.KeyedLimiter
	// OnRateLimited, if set, is told which limit refused a command.
	OnRateLimited func(limit string)
	// Revoking, if set, holds back issues for subjects and clients being
	// revoked (see RevokeAll).
	Revoking *revoking.Revoking

	// Clients, if set, is the client registry: a registered client's
	// lifetimes, allowed scopes and audiences and reaction to replay apply
	// to its families. With EnforceClients, commands for a client it does
	// not know are refused (invalid_client).
	Clients        ClientDirectory
	EnforceClients bool
	// OnSubjectReplay, if set, is told the subject of a replay detected for
	// a client whose on_replay is revoke_subject, to revoke the subject's
	// other families. It must not block.
	OnSubjectReplay func(subject string)

	// DPoP checks the proofs of refreshes (RFC 9449); without it a proof
	// is refused. DPoPRequireNonce makes every client's proofs carry a
	// server nonce, as a registered client's dpop_require_nonce does for
	// its own. TokenURL is the htu of a proof whose caller names none:
	// the deployment's token endpoint. OnProof, if set, is told each
	// proof refused, by reason (dpop.Reasons), and "" for each accepted.
	DPoP             *dpop.Verifier
	DPoPRequireNonce bool
	TokenURL         string
	OnProof          func(reason string)
}

// Policy returns the deployment's lifetimes, which registered clients may
// shorten.
func (s *Service) Policy() domain.Policy { return s.decider.Policy }

// ClientDirectory finds registered clients (Registry).
type ClientDirectory interface {
	Lookup(clientID string) (domain.Client, bool)
}

// errUnknownClient answers a command for a client the registry does not
// know when clients are enforced.
var errUnknownClient = domain.Errorf(domain.EInvalidClient, "unknown client")

// client returns the registered client clientID and the decider its
// policy calls for; ok is false (with no error) for an unregistered client
// while clients are not enforced.
func (s *Service) client(clientID string) (c domain.Client, d domain.Decider, ok bool, err error) {
	d = s.decider
	if s.Clients == nil {
		return c, d, false, nil
	}
	if c, ok = s.Clients.Lookup(clientID); !ok {
		if s.EnforceClients {
			return c, d, false, errUnknownClient
		}
		return c, d, false, nil
	}
	// A client's family never outlives the deployment's absolute lifetime:
	// retention is sized for it (the stream's MaxAge). Registration refuses
	// longer; this holds if the flag was lowered since.
	d.Policy = c.Policy(d.Policy)
	d.Policy.AbsoluteTTL = min(d.Policy.AbsoluteTTL, s.decider.Policy.AbsoluteTTL)
	return c, d, true, nil
}

// Names of the rate limits, as OnRateLimited reports them.
const (
	LimitRefreshPerFamily = "refresh_per_family"
	LimitIssuePerClient   = "issue_per_client"
	LimitForeignPerClient = "foreign_per_client"
)

// NewService returns a service deciding with policy at the times now returns.
func NewService(writer *events.Writer, codec *domain.TokenCodec, policy domain.Policy, now func() time.Time) *Service {
	return &Service{writer: writer, codec: keys.FixedKeys(codec), decider: domain.Decider{Policy: policy, Now: now, NewEventID: nuid.Next}}
}

// limited returns the temporarily_unavailable answer of a refused command,
// or nil when limiter lets key through.
func (s *Service) limited(limiter *ratelimit.KeyedLimiter, name, key string) error {
	ok, wait := limiter.Allow(key)
	if ok {
		return nil
	}
	if s.OnRateLimited != nil {
		s.OnRateLimited(name)
	}
	return &domain.Error{Code: domain.EUnavailable, Message: "rate limited, retry later",
		RetryAfterMs: max(1, wait.Milliseconds()), RateLimited: true}
}

// Grant is the outcome of a successful issue or refresh.
type Grant struct {
	Token  domain.Token
	Family domain.Family
	// Scope and Audience are what this exchange's access token carries.
	Scope    []string
	Audience []string
	Seq      uint64
	// AccessTTL is the family's client's access-token lifetime; 0 for the
	// deployment's.
	AccessTTL time.Duration
	// DPoPJKT is the key the access token is bound to (its cnf.jkt): the
	// family's, or for a bearer family the key of the refresh's proof.
	// DPoPNonce is the nonce the client's next proof carries, when its
	// proofs need one.
	DPoPJKT   string
	DPoPNonce string
	// ReuseInterval is the family's: its client's, else the deployment's.
	ReuseInterval time.Duration
}

// IssueRequest starts a family.
type IssueRequest struct {
	Subject, ClientID string
	Scope, Audience   []string
	Context           domain.Context
	// DPoPJKT binds the family to a DPoP key (RFC 7638 thumbprint).
	DPoPJKT string
}

// Issue starts a new family and returns its first token.
func (s *Service) Issue(ctx context.Context, req IssueRequest) (Grant, error) {
	if err := s.limited(s.IssueLimit, LimitIssuePerClient, req.ClientID); err != nil {
		return Grant{}, err
	}
	if s.Revoking != nil && s.Revoking.Blocks(req.Subject, req.ClientID) {
		return Grant{}, &domain.Error{Code: domain.EUnavailable, Message: "the families of this subject or client are being revoked, retry",
			RetryAfterMs: 500}
	}
	client, decider, registered, err := s.client(req.ClientID)
	if err != nil {
		return Grant{}, err
	}
	if registered {
		if err := client.CheckGrant(req.Scope, req.Audience); err != nil {
			return Grant{}, err
		}
		if client.DPoPBound && req.DPoPJKT == "" {
			return Grant{}, domain.Errorf(domain.EInvalidRequest, "dpop_jkt is required: the client is registered with dpop_bound_access_tokens")
		}
	}
	familyID := domain.NewID(randomBytes(16))
	token := s.codec.Codec().Mint(familyID, 1, newSecret())
	d, err := s.writer.Handle(ctx, familyID, func(f domain.Family) ([]domain.Event, error) {
		return decider.Decide(f, domain.Issue{Token: token, Subject: req.Subject, ClientID: req.ClientID,
			Scope: req.Scope, Audience: req.Audience, Context: req.Context, DPoPJKT: req.DPoPJKT})
	})
	if err != nil {
		return Grant{}, err
	}
	return Grant{Token: token, Family: d.After, Scope: d.After.Scope, Audience: d.After.Audience[:min(1, len(d.After.Audience))],
		Seq: d.Seq, AccessTTL: client.AccessTTL, DPoPJKT: req.DPoPJKT, ReuseInterval: decider.Policy.ReuseInterval}, nil
}

// RefreshRequest exchanges a refresh token.
type RefreshRequest struct {
	Token    string
	ClientID string
	Scope    []string // nil: the whole grant
	Audience string   // empty: the family's first
	Context  domain.Context
	// DPoP is the request's DPoP proof; nil without one.
	DPoP *DPoPProof
	// Recover: the caller lost the reply of an earlier refresh of this
	// token (domain.Refresh.Recover).
	Recover bool
}

// DPoPProof is a DPoP proof (RFC 9449) and the request it came with.
type DPoPProof struct {
	Proof string
	// Method and URL are the request's, which the proof must name; empty:
	// POST and the service's TokenURL.
	Method, URL string
}

// Refresh rotates the presented token, or returns the same child when it is
// the just-rotated parent inside the reuse interval. Refusals are recorded
// before the error is returned.
func (s *Service) Refresh(ctx context.Context, req RefreshRequest) (Grant, error) {
	client, decider, _, err := s.client(req.ClientID)
	if err != nil {
		return Grant{}, err
	}
	presented, codec, err := s.codec.Parse(ctx, req.Token)
	if err != nil {
		return Grant{}, err
	}
	nonces := s.DPoPRequireNonce || client.DPoPRequireNonce
	var proof dpop.Proof
	if req.DPoP != nil {
		// After the token's MAC, which costs no I/O: a proof records its
		// jti in the cluster-wide cache.
		if proof, err = s.verifyProof(ctx, *req.DPoP, nonces); err != nil {
			return Grant{}, err
		}
	}
	// The child is derived, not random: a retry of this parent, here or on
	// another instance, derives the same one (ChildOf below).
	child, err := codec.MintChild(presented)
	if err != nil {
		return Grant{}, err
	}
	var reusable domain.Token
	charged := false // a decision re-run after a fence conflict is not charged twice
	d, err := s.writer.Handle(ctx, presented.FamilyID, func(f domain.Family) ([]domain.Event, error) {
		cmd := domain.Refresh{Presented: presented, ClientID: req.ClientID, Scope: req.Scope,
			Audience: req.Audience, Context: req.Context, OnReplay: client.OnReplay,
			ProofJKT: proof.JKT, ProofRequired: client.DPoPBound, Recover: req.Recover}
		switch {
		case presented.Generation == f.Generation:
			cmd.Child = child
		case presented.Generation+1 == f.Generation && req.ClientID == f.ClientID && decider.Policy.ReuseInterval > 0 &&
			domain.SameHash(presented.Hash(), f.ParentHash):
			reusable = s.codec.ChildOf(ctx, codec, presented, f.CurrentHash)
			cmd.Reusable = reusable
		}
		events, err := decider.Decide(f, cmd)
		if len(events) > 0 && !charged {
			if err := s.charge(events[0], req.ClientID); err != nil {
				return nil, err
			}
			charged = true
		}
		return events, err
	})
	if len(d.Events) > 0 {
		s.observeProof(d.Events[0])
	}
	if len(d.Events) > 0 && (d.Events[0].Type == domain.ReplayDetected || d.Events[0].Type == domain.KeyMismatch) &&
		client.OnReplay == domain.ReplayRevokeSubject && s.OnSubjectReplay != nil {
		s.OnSubjectReplay(d.After.Subject)
	}
	if err != nil {
		return Grant{}, s.withNonce(err, nonces)
	}
	last := d.Events[len(d.Events)-1]
	g := Grant{Family: d.After, Scope: last.Scope, Audience: last.Audience, Seq: d.Seq, Token: child, AccessTTL: client.AccessTTL,
		DPoPJKT: proof.JKT, ReuseInterval: decider.Policy.ReuseInterval}
	if nonces && s.DPoP != nil {
		// The rotation is stored: failing now would lose its reply. A
		// reply without a nonce costs the client one round trip.
		g.DPoPNonce, _ = s.DPoP.Nonce()
	}
	if last.Type == domain.TokenReused {
		g.Token = reusable
	}
	return g, nil
}

// charge applies the rate limit a refresh's first event falls under:
// rotations and the owner's refused refreshes count against the family, a
// foreign client's presentations and tokens under a key retired before the
// family against the presenting client. Reuses and replays
// are never limited.
func (s *Service) charge(first domain.Event, presenter string) error {
	switch {
	case first.Type == domain.RefreshRejected && (first.Reason == domain.ReasonClientMismatch || first.Reason == domain.ReasonRetiredKey):
		// Whoever presents another's token, or one made with a leaked key,
		// must not spend the owner's budget.
		return s.limited(s.ForeignLimit, LimitForeignPerClient, presenter)
	case first.Type == domain.TokenRotated || first.Type == domain.RefreshRejected:
		return s.limited(s.RefreshLimit, LimitRefreshPerFamily, first.FamilyID)
	}
	return nil
}

// RevokeFamily revokes one family; it reports 0 for unknown or already
// revoked families (RFC 7009: not an error).
func (s *Service) RevokeFamily(ctx context.Context, familyID, reason string, c domain.Context) (int, uint64, error) {
	if !domain.ValidID(familyID) {
		return 0, 0, domain.Errorf(domain.EInvalidRequest, "family_id is not a valid family id")
	}
	return s.revoke(ctx, familyID, domain.Revoke{Reason: reason, Context: c})
}

// RevokeToken revokes the family of a refresh token it handed out; with
// clientID set, only if the family is that client's. Anything else,
// malformed or forged tokens included, revokes nothing.
func (s *Service) RevokeToken(ctx context.Context, token, clientID, reason string, c domain.Context) (int, uint64, error) {
	if err := domain.ValidateName("reason", orDefault(reason)); err != nil {
		return 0, 0, err
	}
	t, _, err := s.codec.Parse(ctx, token)
	if domain.ErrorCode(err) == domain.EUnavailable {
		return 0, 0, err // the keys could not be reloaded: the token may well be valid
	}
	if err != nil {
		return 0, 0, nil
	}
	return s.revoke(ctx, t.FamilyID, domain.Revoke{Reason: reason, Context: c, Token: &t, ClientID: clientID})
}

func (s *Service) revoke(ctx context.Context, familyID string, cmd domain.Revoke) (int, uint64, error) {
	d, err := s.writer.Handle(ctx, familyID, func(f domain.Family) ([]domain.Event, error) {
		return s.decider.Decide(f, cmd)
	})
	if err != nil || len(d.Events) == 0 {
		return 0, 0, err
	}
	return 1, d.Seq, nil
}

// Archive appends family.archived to a family past its absolute expiry;
// it reports false when there was nothing to do (not expired yet, already
// archived, unknown).
func (s *Service) Archive(ctx context.Context, familyID string) (bool, error) {
	d, err := s.writer.Handle(ctx, familyID, func(f domain.Family) ([]domain.Event, error) {
		return s.decider.Decide(f, domain.Archive{})
	})
	return len(d.Events) > 0, err
}

func orDefault(reason string) string {
	if reason == "" {
		return domain.ReasonRevoked
	}
	return reason
}

func newSecret() (s [domain.SecretSize]byte) {
	rand.Read(s[:])
	return s
}

// UseKeyring makes s mint and verify with k's keys, following its changes.
// Call it before s is used.
func (s *Service) UseKeyring(k *keys.Keyring) { s.codec = k }

// Keyring returns the keys s mints and verifies with.
func (s *Service) Keyring() *keys.Keyring { return s.codec }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// verifyProof checks a refresh's DPoP proof for the token endpoint.
func (s *Service) verifyProof(ctx context.Context, p DPoPProof, nonceRequired bool) (dpop.Proof, error) {
	if s.DPoP == nil {
		return dpop.Proof{}, domain.Errorf(domain.EInvalidDPoPProof, "DPoP is not offered here")
	}
	r := dpop.Request{Proof: p.Proof, Method: p.Method, URL: p.URL, NonceRequired: nonceRequired}
	if r.Method == "" {
		r.Method = "POST"
	}
	if r.URL == "" {
		r.URL = s.TokenURL
	}
	proof, err := s.DPoP.Verify(ctx, r)
	if s.OnProof != nil && domain.ErrorCode(err) != domain.EUnavailable {
		s.OnProof(dpop.ReasonOf(err))
	}
	return proof, err
}

// Reasons OnProof reports beside dpop's: the decider's refusals.
const (
	ProofMissing     = "missing"
	ProofKeyMismatch = "key_mismatch"
)

// observeProof reports the refusals the decider makes of a proof: none
// where one was needed, or one by another key than the family's.
func (s *Service) observeProof(first domain.Event) {
	switch {
	case s.OnProof == nil:
	case first.Type == domain.KeyMismatch:
		s.OnProof(ProofKeyMismatch)
	case first.Type == domain.RefreshRejected && first.Reason == domain.ReasonDPoPProofMissing:
		s.OnProof(ProofMissing)
	}
}

// withNonce gives an invalid_dpop_proof the nonce a client whose proofs
// need one retries with, so that one round trip fixes both.
func (s *Service) withNonce(err error, nonces bool) error {
	if !nonces || domain.ErrorCode(err) != domain.EInvalidDPoPProof || s.DPoP == nil {
		return err
	}
	var de *domain.Error
	if !errors.As(err, &de) {
		return err
	}
	nonce, nerr := s.DPoP.Nonce()
	if nerr != nil {
		return err
	}
	e := *de
	e.DPoPNonce = nonce
	return &e
}
