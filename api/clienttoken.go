package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
)

// SSF receivers are registered clients (domain.Client.Receiver) that call
// the SSF management and poll endpoints with a bearer access token (CAEP
// interoperability profile 1.0, "OAuth Service"). They get it with the
// client_credentials grant (RFC 6749 section 4.4) at the token endpoint.
// The token is an RFC 9068 JWT like a family's access token, signed with
// the same key, but about the receiver itself: sub = client_id = the
// receiver, aud = the issuer (tokend is the resource server), and no sid,
// so neither kind of token is ever taken for the other.

// maxReceiverTokenTTL bounds a receiver token's lifetime: the interop
// profile asks for short-lived tokens, an hour at most.
const maxReceiverTokenTTL = time.Hour

// issuedAtLeeway is how far in the future a receiver token's iat may be:
// another instance, whose clock differs a little, may have minted it.
const issuedAtLeeway = time.Minute

// receiverClaims are the claims of a receiver token.
type receiverClaims struct {
	jwt.Claims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
}

// ReceiverTTL returns the lifetime of c's receiver tokens: its access_ttl,
// else the deployment's --access-ttl, and never more than either of that
// or an hour.
func (a *AccessTokens) ReceiverTTL(c domain.Client) time.Duration {
	return min(c.AccessTTLOr(a.ttl), a.ttl, maxReceiverTokenTTL)
}

// MintReceiverToken returns an access token for receiver c with scope,
// issued at now, and its lifetime.
func (a *AccessTokens) MintReceiverToken(c domain.Client, scope []string, now time.Time) (string, time.Duration, error) {
	ttl := a.ReceiverTTL(c)
	tok, err := a.sign(receiverClaims{
		Claims: jwt.Claims{
			Issuer:   a.issuer,
			Subject:  c.ID,
			Audience: jwt.Audience{a.issuer},
			Expiry:   jwt.NewNumericDate(now.Add(ttl)),
			IssuedAt: jwt.NewNumericDate(now),
			ID:       nuid.Next(),
		},
		ClientID: c.ID,
		Scope:    domain.ScopeString(scope),
	})
	return tok, ttl, err
}

// errNotReceiverToken is any token VerifyReceiverToken refuses.
var errNotReceiverToken = errors.New("not a valid receiver access token of this deployment")

// VerifyReceiverToken checks that token is an unexpired receiver token this
// deployment signed and returns the receiver's client id and the token's
// scopes. It refuses every family access token (they have a sid, and an
// API's audience), and AccessTokens.Verify refuses receiver tokens (they
// have no sid). Whether the client is still a receiver is the caller's to
// check, against the registry.
func (a *AccessTokens) VerifyReceiverToken(token string, now time.Time) (clientID string, scopes []string, err error) {
	c, scope, err := a.verifyReceiver(token, now)
	return c.ClientID, scope, err
}

func (a *AccessTokens) verifyReceiver(token string, now time.Time) (receiverClaims, []string, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 || tok.Headers[0].ExtraHeaders[jose.HeaderType] != "at+jwt" {
		return receiverClaims{}, nil, errNotReceiverToken
	}
	keys := a.signer.Load().public.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return receiverClaims{}, nil, errNotReceiverToken
	}
	var c receiverClaims
	var family struct {
		SID json.RawMessage `json:"sid"`
	}
	if err := tok.Claims(keys[0].Key, &c, &family); err != nil {
		return receiverClaims{}, nil, errNotReceiverToken
	}
	switch {
	case family.SID != nil, c.ClientID == "", c.Subject != c.ClientID, c.Issuer != a.issuer,
		len(c.Audience) != 1, c.Audience[0] != a.issuer,
		c.Expiry == nil, !now.Before(c.Expiry.Time()),
		c.IssuedAt == nil, c.IssuedAt.Time().After(now.Add(issuedAtLeeway)):
		return receiverClaims{}, nil, errNotReceiverToken
	}
	scope, err := domain.ParseScope(c.Scope)
	if err != nil || len(scope) == 0 || !domain.Subset(scope, domain.ReceiverScopes) {
		return receiverClaims{}, nil, errNotReceiverToken
	}
	return c, scope, nil
}

// clientTokenResponse is RFC 6749 section 5.1 for the client_credentials
// grant: no refresh token (section 4.4.3).
type clientTokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
}

// errUnauthorizedClient is RFC 6749 section 5.2's unauthorized_client.
const errUnauthorizedClient = "unauthorized_client"

// clientCredentials is the client_credentials grant (RFC 6749 section
// 4.4), for SSF receivers only: scope is a subset of the SSF scopes (all
// of them if absent); resource, if given, must be the issuer, the only
// audience such a token has.
func (o *OAuth) clientCredentials(r *http.Request, f map[string][]string) (clientTokenResponse, error) {
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return clientTokenResponse{}, aerr
	}
	if !client.IsReceiver() {
		o.log.Info("oauth client_credentials refused: the client is not an SSF receiver",
			append([]any{"client_id", client.ID, "type", client.Type}, logAddress(r)...)...)
		return clientTokenResponse{}, &oauthError{status: http.StatusBadRequest, code: errUnauthorizedClient,
			description: "the client_credentials grant is for clients registered as SSF receivers"}
	}
	scope, err := domain.ParseReceiverScope(first(f["scope"]))
	if err != nil {
		return clientTokenResponse{}, err
	}
	for _, res := range f["resource"] {
		if res != "" && res != o.issuer {
			return clientTokenResponse{}, &oauthError{status: http.StatusBadRequest, code: domain.EInvalidTarget,
				description: "a receiver's access token is for this server only: resource must be the issuer"}
		}
	}
	tok, ttl, err := o.svc.Access.MintReceiverToken(client, scope, o.svc.Now())
	if err != nil {
		return clientTokenResponse{}, err
	}
	return clientTokenResponse{AccessToken: tok, TokenType: "Bearer", ExpiresIn: int64(ttl / time.Second),
		Scope: domain.ScopeString(scope)}, nil
}

// bearerError is a refused bearer token, answered as RFC 6750 section 3
// says: 400 invalid_request, 401 invalid_token, 403 insufficient_scope,
// or 401 without an error code when the request carries no bearer token
// at all (section 3.1).
type bearerError struct {
	status      int
	code        string
	description string
	scope       string // the scope needed, for insufficient_scope
}

func (e *bearerError) Error() string { return e.code + ": " + e.description }

// writeBearerError answers a receiver refused by OAuth.receiver with its
// WWW-Authenticate challenge (RFC 6750 section 3), and the same in a JSON
// body.
func writeBearerError(w http.ResponseWriter, err error) {
	var e *bearerError
	if !errors.As(err, &e) {
		noStore(w)
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": domain.EServerError, "error_description": "internal error"})
		return
	}
	challenge := `Bearer realm="tokend"`
	body := map[string]string{"error_description": e.description}
	if e.code != "" {
		challenge += `, error="` + e.code + `", error_description="` + e.description + `"`
		body["error"] = e.code
	}
	if e.scope != "" {
		challenge += `, scope="` + e.scope + `"`
		body["scope"] = e.scope
	}
	w.Header().Set("WWW-Authenticate", challenge)
	noStore(w)
	writeJSON(w, e.status, body)
}

// b64token is RFC 6750 section 2.1's token syntax.
var b64token = regexp.MustCompile(`^[A-Za-z0-9\-._~+/]+=*$`)

// receiver authenticates the SSF receiver calling r with an access token
// of the client_credentials grant in the Authorization header (RFC 6750
// section 2.1), and checks that its client is still registered as a
// receiver and that the token grants needScope (domain.ReceiverScopeAllows).
// A token in the URL or a form body (sections 2.2 and 2.3) is refused:
// the interop profile forbids the query, and the header is the one way
// this server reads. Errors are *bearerError; answer them with
// writeBearerError. The reason of a refusal is logged, never the token.
func (o *OAuth) receiver(r *http.Request, needScope string) (domain.Client, error) {
	refuse := func(status int, code, why, description string) (domain.Client, error) {
		o.log.Info("ssf receiver token refused", append([]any{"why", why}, logAddress(r)...)...)
		return domain.Client{}, &bearerError{status: status, code: code, description: description}
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		r.Body = http.MaxBytesReader(nil, r.Body, maxFormBytes)
	}
	if err := r.ParseForm(); err != nil {
		return refuse(http.StatusBadRequest, domain.EInvalidRequest, "unreadable query or form", "the query or form body is malformed")
	}
	if r.Form.Has("access_token") {
		return refuse(http.StatusBadRequest, domain.EInvalidRequest, "token in the query or body",
			"send the access token in the Authorization header (Bearer), never in the URL or the body")
	}
	auth := r.Header.Values("Authorization")
	if len(auth) > 1 {
		return refuse(http.StatusBadRequest, domain.EInvalidRequest, "several Authorization headers", "send one Authorization header")
	}
	scheme, token, _ := strings.Cut(strings.TrimSpace(first(auth)), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		// No bearer credentials at all: no error code (section 3.1).
		return refuse(http.StatusUnauthorized, "", "no bearer token", "a bearer access token is required (grant_type=client_credentials)")
	}
	if token = strings.TrimLeft(token, " "); !b64token.MatchString(token) {
		return refuse(http.StatusBadRequest, domain.EInvalidRequest, "malformed bearer token", "the bearer token is malformed")
	}
	claims, scope, err := o.svc.Access.verifyReceiver(token, o.svc.Now())
	if err != nil {
		return refuse(http.StatusUnauthorized, "invalid_token", "not a valid receiver token", "the access token is not valid")
	}
	client, ok := o.clients.Lookup(claims.ClientID)
	if !ok || !client.IsReceiver() {
		// Removing the client or its role revokes its tokens at once.
		o.log.Info("ssf receiver token refused", append([]any{"why", "the client is no longer a receiver", "client_id", claims.ClientID,
			"registered", ok}, logAddress(r)...)...)
		return domain.Client{}, &bearerError{status: http.StatusUnauthorized, code: "invalid_token",
			description: "the token's client is no longer an SSF receiver"}
	}
	if !domain.ReceiverScopeAllows(scope, needScope) {
		o.log.Info("ssf receiver token refused", append([]any{"why", "insufficient scope", "client_id", client.ID,
			"need", needScope}, logAddress(r)...)...)
		return domain.Client{}, &bearerError{status: http.StatusForbidden, code: "insufficient_scope",
			description: "the access token does not grant " + needScope, scope: needScope}
	}
	return client, nil
}

// inspectReceiver introspects a receiver token (RFC 7662): active to its
// own client while the token is valid and the client still a receiver;
// inactive to any other client, resource servers included (the token's
// only audience is this server).
func (o *OAuth) inspectReceiver(r *http.Request, caller domain.Client, token string) (introspection, string) {
	c, _, err := o.svc.Access.verifyReceiver(token, o.svc.Now())
	switch {
	case err != nil:
		return introspection{}, callerUnknown
	case c.ClientID != caller.ID:
		o.log.Info("oauth introspection refused: the token is not the caller's",
			append([]any{"client_id", caller.ID, "receiver", c.ClientID}, logAddress(r)...)...)
		return introspection{}, callerNotAllowed
	case !caller.IsReceiver():
		return introspection{}, callerOwnClient
	}
	return introspection{Active: true, Scope: c.Scope, ClientID: c.ClientID, Sub: c.Subject, Aud: c.Audience, Iss: c.Issuer,
		Exp: c.Expiry.Time().Unix(), Iat: c.IssuedAt.Time().Unix(), Jti: c.ID, TokenType: "Bearer", TokenUse: "access_token"}, callerOwnClient
}
