package api

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

// Introspection, over NATS and HTTP, answers from the family's last event in
// the stream (tokens.Service.IntrospectRefresh and IntrospectAccess), not
// from the read model: once a revocation, rotation or issue is
// acknowledged, every instance's introspection reflects it.

// introspectRefresh answers tokens.query.introspect. Its as_of_seq is a
// stream position the answer reflects: the later of the family's last
// event and the read model's position when the family was read, and never
// below min_seq.
func (s *Service) introspectRefresh(ctx context.Context, token string, minSeq uint64) (wire.Introspection, error) {
	applied := s.Projector.Applied()
	in, err := s.Tokens.IntrospectRefresh(ctx, token)
	if err != nil {
		return wire.Introspection{}, err
	}
	if asOf := max(applied, in.Seq); minSeq > asOf {
		// min_seq lies beyond what this answer is known to reflect: once the
		// read model has it, the stream holds it, and a new read does too.
		if err := s.awaitSeq(ctx, minSeq); err != nil {
			return wire.Introspection{}, err
		}
		applied = s.Projector.Applied()
		if in, err = s.Tokens.IntrospectRefresh(ctx, token); err != nil {
			return wire.Introspection{}, err
		}
	}
	asOf := max(applied, in.Seq)
	s.Metrics.natsIntrospection(in.Active)
	if !in.Active {
		return wire.Introspection{AsOfSeq: asOf}, nil
	}
	f := in.Family
	scope := domain.ScopeString(f.Scope)
	// The current token was issued at the family's last rotation, or with
	// the family.
	return wire.Introspection{Active: true, FamilyID: f.ID, Sub: f.Subject, ClientID: f.ClientID, Scope: &scope,
		Aud: f.Audience, Exp: f.ExpiresAt().Unix(), Iat: f.LastUsedAt.Unix(), TokenType: "refresh_token",
		Cnf: wire.ConfirmationOf(f.DPoPJKT), AsOfSeq: asOf}, nil
}

// introspection is RFC 7662's answer. TokenType is the RFC 6749 section
// 7.1 type, Bearer, for access tokens; refresh tokens have none. TokenUse
// says which kind of token it is.
type introspection struct {
	Active    bool     `json:"active"`
	Scope     string   `json:"scope,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	Sub       string   `json:"sub,omitempty"`
	Aud       []string `json:"aud,omitempty"`
	Iss       string   `json:"iss,omitempty"`
	Exp       int64    `json:"exp,omitempty"`
	Iat       int64    `json:"iat,omitempty"`
	Jti       string   `json:"jti,omitempty"`
	TokenType string   `json:"token_type,omitempty"`
	TokenUse  string   `json:"token_use,omitempty"`
	SID       string   `json:"sid,omitempty"`
	// Cnf is the DPoP key the token is bound to (RFC 9449 section 6.2).
	Cnf *wire.Confirmation `json:"cnf,omitempty"`
}

// How the caller of an HTTP introspection relates to the token: the caller
// label of tokend_oauth_introspections_total.
const (
	// callerOwnClient is the client the token was issued to.
	callerOwnClient = "own_client"
	// callerResourceServer is a client registered as a resource server for
	// one of an access token's audiences.
	callerResourceServer = "resource_server"
	// callerNotAllowed is any other client: it learns nothing.
	callerNotAllowed = "not_allowed"
	// callerUnknown: the token did not verify or names no family, so it is
	// no client's.
	callerUnknown = "unknown"
)

// introspect is RFC 7662 for confidential clients. A refresh token is
// introspectable by its own client, an access token by its own client and
// by clients registered as resource servers for one of its audiences;
// anything else answers {"active": false}, as an inactive token does, and
// is logged.
func (o *OAuth) introspect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	out, caller, err := o.inspect(w, r)
	o.svc.Metrics.oauth("introspect", err, time.Since(start))
	if err != nil {
		o.answerError(w, "introspect", err)
		return
	}
	o.svc.Metrics.oauthIntrospection(caller, out.Active)
	noStore(w)
	writeJSON(w, http.StatusOK, out)
}

func (o *OAuth) inspect(w http.ResponseWriter, r *http.Request) (introspection, string, error) {
	f, ferr := form(w, r)
	if ferr != nil {
		return introspection{}, "", ferr
	}
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return introspection{}, "", aerr
	}
	if client.Type != domain.ClientConfidential {
		o.log.Info("oauth introspection refused to a public client", append([]any{"client_id", client.ID}, logAddress(r)...)...)
		return introspection{}, "", errClientAuth
	}
	token := first(f["token"])
	if token == "" {
		return introspection{}, "", badRequest("token is required")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if strings.HasPrefix(token, "rt1.") {
		return o.inspectRefresh(ctx, r, client, token)
	}
	return o.inspectAccess(ctx, r, client, token)
}

// inspectRefresh reads the family whatever the caller, so a refusal takes
// as long as an inactive token's answer.
func (o *OAuth) inspectRefresh(ctx context.Context, r *http.Request, client domain.Client, token string) (introspection, string, error) {
	in, err := o.svc.Tokens.IntrospectRefresh(ctx, token)
	switch {
	case err != nil:
		return introspection{}, "", err
	case !in.Family.Exists():
		return introspection{}, callerUnknown, nil
	case in.Family.ClientID != client.ID:
		o.refused(r, client, in.Family.ID)
		return introspection{}, callerNotAllowed, nil
	case !in.Active:
		return introspection{}, callerOwnClient, nil
	}
	f := in.Family
	return introspection{Active: true, Scope: domain.ScopeString(f.Scope), ClientID: f.ClientID, Sub: f.Subject, Aud: f.Audience,
		Iss: o.issuer, Exp: f.ExpiresAt().Unix(), Iat: f.LastUsedAt.Unix(), TokenUse: "refresh_token", SID: f.ID,
		Cnf: wire.ConfirmationOf(f.DPoPJKT)}, callerOwnClient, nil
}

// inspectAccess decides who may see the token from its verified claims,
// then checks them against the family.
func (o *OAuth) inspectAccess(ctx context.Context, r *http.Request, client domain.Client, token string) (introspection, string, error) {
	claims, err := o.svc.Access.Verify(token, o.svc.Now())
	if err != nil {
		out, caller := o.inspectReceiver(r, client, token)
		return out, caller, nil
	}
	caller := callerNotAllowed
	switch {
	case claims.ClientID == client.ID:
		caller = callerOwnClient
	case slices.ContainsFunc(claims.Audience, func(aud string) bool { return slices.Contains(client.Resources, aud) }):
		caller = callerResourceServer
	default:
		o.refused(r, client, claims.SID)
		return introspection{}, caller, nil
	}
	scope, err := domain.ParseScope(claims.Scope)
	if err != nil {
		return introspection{}, caller, nil
	}
	in, err := o.svc.Tokens.IntrospectAccess(ctx, accessClaims(claims, scope))
	if err != nil || !in.Active {
		return introspection{}, caller, err
	}
	tokenType := "Bearer"
	if claims.Confirmation != nil {
		tokenType = "DPoP"
	}
	return introspection{Active: true, Scope: claims.Scope, ClientID: claims.ClientID, Sub: claims.Subject,
		Aud: claims.Audience, Iss: claims.Issuer, Exp: claims.Expiry.Time().Unix(), Iat: claims.IssuedAt.Time().Unix(),
		Jti: claims.ID, TokenType: tokenType, TokenUse: "access_token", SID: claims.SID, Cnf: claims.Confirmation}, caller, nil
}

func accessClaims(c AccessClaims, scope []string) domain.AccessClaims {
	a := domain.AccessClaims{FamilyID: c.SID, ClientID: c.ClientID, Subject: c.Subject, Scope: scope, Audience: c.Audience}
	if c.IssuedAt != nil {
		a.IssuedAt = c.IssuedAt.Time()
	}
	if c.Expiry != nil {
		a.ExpiresAt = c.Expiry.Time()
	}
	return a
}

// refused logs an introspection of another client's token: whoever holds
// a client's credentials could otherwise test stolen tokens unseen.
func (o *OAuth) refused(r *http.Request, client domain.Client, familyID string) {
	o.log.Info("oauth introspection refused: the token is not the caller's",
		append([]any{"client_id", client.ID, "family_id", familyID}, logAddress(r)...)...)
}
