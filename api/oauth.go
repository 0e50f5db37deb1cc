package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/tokens"
)

// ClientDirectory finds registered OAuth clients (registry.Registry).
type ClientDirectory interface {
	Lookup(clientID string) (domain.Client, bool)
}

// OAuth serves the standard OAuth 2.0 endpoints in front of the same
// commands as NATS: the refresh_token grant (RFC 6749 section 6),
// revocation (RFC 7009), introspection (RFC 7662) and the server's metadata
// (RFC 8414). Every endpoint but the metadata authenticates the client
// against the registry.
type OAuth struct {
	svc     *Service
	clients ClientDirectory
	issuer  string
	verify  *assertionVerifier
	log     *slog.Logger
}

// OAuth endpoint paths.
const (
	PathToken      = "/oauth2/token"
	PathRevoke     = "/oauth2/revoke"
	PathIntrospect = "/oauth2/introspect"
	PathMetadata   = "/.well-known/oauth-authorization-server"
	PathJWKS       = "/.well-known/jwks.json"
)

// maxFormBytes bounds a request body; the largest valid one, a client
// assertion with a refresh token, is a few KiB.
const maxFormBytes = 64 << 10

// NewOAuth returns the OAuth endpoints of s for issuer, the public base URL
// of the OAuth listener (it is also the iss of access tokens).
func NewOAuth(s *Service, clients ClientDirectory, issuer string, log *slog.Logger) *OAuth {
	issuer = strings.TrimSuffix(issuer, "/")
	return &OAuth{svc: s, clients: clients, issuer: issuer, log: log,
		verify: newAssertionVerifier([]string{issuer + PathToken, issuer}, s.Now)}
}

// Handler returns the OAuth listener's routes.
func (o *OAuth) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathToken, o.token)
	mux.HandleFunc("POST "+PathRevoke, o.revoke)
	mux.HandleFunc("POST "+PathIntrospect, o.introspect)
	mux.HandleFunc("GET "+PathMetadata, o.metadata)
	mux.HandleFunc("GET "+PathJWKS, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		w.Write(o.svc.Access.JWKS())
	})
	return mux
}

// oauthError is an error response of RFC 6749 section 5.2.
type oauthError struct {
	status      int
	code        string
	description string
	retryAfter  time.Duration
}

func (e *oauthError) Error() string { return e.code + ": " + e.description }

// Error codes of RFC 6749 section 5.2 beyond the contract's.
const (
	errInvalidClient        = "invalid_client"
	errUnsupportedGrantType = "unsupported_grant_type"
)

func badRequest(format string, args ...any) *oauthError {
	return &oauthError{status: http.StatusBadRequest, code: domain.EInvalidRequest, description: fmt.Sprintf(format, args...)}
}

// errClientAuth is every failed client authentication: which check failed
// goes to the log, not to the caller.
var errClientAuth = &oauthError{status: http.StatusUnauthorized, code: errInvalidClient, description: "client authentication failed"}

// oauthErrorOf maps a command's error to its OAuth response.
func oauthErrorOf(err error) *oauthError {
	var oe *oauthError
	if errors.As(err, &oe) {
		return oe
	}
	code := domain.ErrorCode(err)
	e := &oauthError{status: httpStatus(code), code: code, description: domain.ErrorMessage(err)}
	var de *domain.Error
	if errors.As(err, &de) && de.RetryAfterMs > 0 {
		e.retryAfter = time.Duration(de.RetryAfterMs) * time.Millisecond
		if de.RateLimited {
			e.status = http.StatusTooManyRequests
		}
	}
	if code == domain.EInvalidClient {
		return errClientAuth
	}
	return e
}

// writeOAuthError answers with the JSON of RFC 6749 section 5.2; a client
// authentication failure also carries the challenge of section 5.2.
func writeOAuthError(w http.ResponseWriter, e *oauthError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="tokend", error="invalid_client"`)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((e.retryAfter+time.Second-1)/time.Second), 10))
	}
	noStore(w)
	writeJSON(w, e.status, map[string]string{"error": e.code, "error_description": e.description})
}

// noStore marks a response that holds tokens or depends on them (RFC 6749
// section 5.1).
func noStore(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
}

// form parses a POST body of application/x-www-form-urlencoded parameters,
// refusing repeated parameters (RFC 6749 section 3.2) other than those
// allowed to repeat.
func form(w http.ResponseWriter, r *http.Request, repeatable ...string) (map[string][]string, *oauthError) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		return nil, badRequest("the body must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return nil, badRequest("the body is not a valid form")
	}
	if len(r.URL.RawQuery) > 0 {
		return nil, badRequest("parameters go in the body, not the URL")
	}
	for k, v := range r.PostForm {
		if len(v) > 1 && !contains(repeatable, k) {
			return nil, badRequest("parameter %s given more than once", truncate(k))
		}
	}
	return r.PostForm, nil
}

// authenticate finds the registered client a request speaks for, by
// exactly one method of RFC 6749 section 2.3 / RFC 7523: HTTP Basic,
// client_id and client_secret in the body, a client assertion, or
// client_id alone for a public client. The method must be the one
// registered for the client.
func (o *OAuth) authenticate(r *http.Request, f map[string][]string) (domain.Client, *oauthError) {
	basicID, basicSecret, hasBasic, err := basicCredentials(r)
	if err != nil {
		return domain.Client{}, errClientAuth
	}
	get := func(k string) string { return first(f[k]) }
	postSecret, assertion := get("client_secret"), get("client_assertion")
	methods := 0
	for _, used := range []bool{hasBasic, postSecret != "", assertion != ""} {
		if used {
			methods++
		}
	}
	if methods > 1 {
		return domain.Client{}, badRequest("use exactly one client authentication method")
	}
	id := get("client_id")
	var method domain.AuthMethod
	switch {
	case hasBasic:
		if id != "" && id != basicID {
			return domain.Client{}, badRequest("client_id differs from the authenticated client")
		}
		id, method = basicID, domain.AuthSecretBasic
	case postSecret != "":
		method = domain.AuthSecretPost
	case assertion != "":
		if get("client_assertion_type") != clientAssertionType {
			return domain.Client{}, badRequest("client_assertion_type must be %s", clientAssertionType)
		}
		if id == "" {
			id = assertionIssuer(assertion)
		}
		method = domain.AuthPrivateKeyJWT
	default:
		method = domain.AuthNone
	}
	if id == "" {
		return domain.Client{}, errClientAuth
	}
	c, ok := o.clients.Lookup(id)
	refuse := func(why string) (domain.Client, *oauthError) {
		o.log.Info("oauth client authentication refused", "method", string(method), "registered", ok, "why", why)
		return domain.Client{}, errClientAuth
	}
	switch {
	case !ok:
		return refuse("unknown client")
	case c.AuthMethod != method:
		return refuse("not the client's registered method " + string(c.AuthMethod))
	case method == domain.AuthSecretBasic && !c.VerifySecret(basicSecret, o.svc.Now()):
		return refuse("wrong secret")
	case method == domain.AuthSecretPost && !c.VerifySecret(postSecret, o.svc.Now()):
		return refuse("wrong secret")
	case method == domain.AuthPrivateKeyJWT:
		var keys jose.JSONWebKeySet
		if err := json.Unmarshal(c.JWKS, &keys); err != nil {
			return refuse("unreadable registered JWKS")
		}
		if err := o.verify.verify(assertion, c.ID, keys); err != nil {
			return refuse(err.Error())
		}
	}
	return c, nil
}

// assertionIssuer reads the unverified iss of a client assertion, only to
// find the client whose keys then verify it.
func assertionIssuer(assertion string) string {
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	json.Unmarshal(payload, &c)
	return c.Iss
}

// requestContext is what the audit trail keeps of an HTTP caller.
func requestContext(r *http.Request) domain.Context {
	c := domain.Context{}
	if host, _, ok := strings.Cut(r.RemoteAddr, ":"); ok && host != "" {
		c["ip"] = strings.Trim(host, "[]")
	}
	if ua := r.UserAgent(); ua != "" {
		c["user_agent"] = ua[:min(len(ua), domain.MaxContextValue)]
	}
	if domain.ValidateContext(c) != nil {
		delete(c, "user_agent") // not printable, say
	}
	return c
}

// tokenResponse is the success of RFC 6749 section 5.1.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
	Scope        string `json:"scope"`
}

func (o *OAuth) token(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	resp, err := o.refresh(r.Context(), w, r)
	o.svc.Metrics.oauth("token", err, time.Since(start))
	if err != nil {
		writeOAuthError(w, oauthErrorOf(err))
		return
	}
	noStore(w)
	writeJSON(w, http.StatusOK, resp)
}

func (o *OAuth) refresh(ctx context.Context, w http.ResponseWriter, r *http.Request) (tokenResponse, error) {
	f, ferr := form(w, r, "resource")
	if ferr != nil {
		return tokenResponse{}, ferr
	}
	switch first(f["grant_type"]) {
	case "refresh_token":
	case "":
		return tokenResponse{}, badRequest("grant_type is required")
	default:
		return tokenResponse{}, &oauthError{status: http.StatusBadRequest, code: errUnsupportedGrantType,
			description: "only the refresh_token grant is served here"}
	}
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return tokenResponse{}, aerr
	}
	token := first(f["refresh_token"])
	if token == "" {
		return tokenResponse{}, badRequest("refresh_token is required")
	}
	req := tokens.RefreshRequest{Token: token, ClientID: client.ID, Context: requestContext(r)}
	if s, ok := f["scope"]; ok && first(s) != "" {
		scope, err := domain.ParseScope(first(s))
		if err != nil {
			return tokenResponse{}, err
		}
		req.Scope = scope
	}
	// RFC 8707: the resource selects the access token's audience; one
	// token has one, so one resource per request.
	switch res := f["resource"]; len(res) {
	case 0:
	case 1:
		if _, err := domain.ValidateAudiences(res); err != nil {
			return tokenResponse{}, &oauthError{status: http.StatusBadRequest, code: domain.EInvalidTarget, description: "resource is not a valid URI"}
		}
		req.Audience = res[0]
	default:
		return tokenResponse{}, &oauthError{status: http.StatusBadRequest, code: domain.EInvalidTarget,
			description: "one resource per request: each access token has one audience"}
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	g, err := o.svc.Tokens.Refresh(ctx, req)
	if err != nil {
		return tokenResponse{}, err
	}
	reply, err := o.svc.tokenReply(g)
	if err != nil {
		return tokenResponse{}, err
	}
	return tokenResponse{AccessToken: reply.AccessToken, TokenType: "Bearer", ExpiresIn: reply.ExpiresIn,
		RefreshToken: reply.RefreshToken, Scope: reply.Scope}, nil
}

// revoke is RFC 7009: 200 whatever the token, unless the client fails to
// authenticate. A refresh token revokes its family if it is the client's;
// so does an access token, whose family is its sid.
func (o *OAuth) revoke(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	err := o.revokeToken(w, r)
	o.svc.Metrics.oauth("revoke", err, time.Since(start))
	if err != nil {
		writeOAuthError(w, oauthErrorOf(err))
		return
	}
	noStore(w)
	w.WriteHeader(http.StatusOK)
}

func (o *OAuth) revokeToken(w http.ResponseWriter, r *http.Request) error {
	f, ferr := form(w, r)
	if ferr != nil {
		return ferr
	}
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return aerr
	}
	token := first(f["token"])
	if token == "" {
		return badRequest("token is required")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if strings.HasPrefix(token, "rt1.") {
		_, _, err := o.svc.Tokens.RevokeToken(ctx, token, client.ID, domain.ReasonRevoked, requestContext(r))
		return err
	}
	claims, err := o.svc.Access.Verify(token, o.svc.Now())
	if err != nil || claims.ClientID != client.ID {
		return nil // not a token of this client: nothing to do (RFC 7009 2.2)
	}
	_, _, err = o.svc.Tokens.RevokeFamily(ctx, claims.SID, domain.ReasonRevoked, requestContext(r))
	return err
}

// introspection is RFC 7662's answer.
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
	SID       string   `json:"sid,omitempty"`
}

// introspect is RFC 7662 for confidential clients (resource servers): a
// refresh token is active while it is its family's current one in a live
// family; an access token while it verifies, is unexpired and its family
// is neither revoked nor expired.
func (o *OAuth) introspect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	out, err := o.inspect(w, r)
	o.svc.Metrics.oauth("introspect", err, time.Since(start))
	if err != nil {
		writeOAuthError(w, oauthErrorOf(err))
		return
	}
	noStore(w)
	writeJSON(w, http.StatusOK, out)
}

func (o *OAuth) inspect(w http.ResponseWriter, r *http.Request) (introspection, error) {
	f, ferr := form(w, r)
	if ferr != nil {
		return introspection{}, ferr
	}
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return introspection{}, aerr
	}
	if client.Type != domain.ClientConfidential {
		o.log.Info("oauth introspection refused to a public client")
		return introspection{}, errClientAuth
	}
	token := first(f["token"])
	if token == "" {
		return introspection{}, badRequest("token is required")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if strings.HasPrefix(token, "rt1.") {
		in, err := o.svc.Reader.Introspect(ctx, token)
		if err != nil || !in.Active {
			return introspection{}, err
		}
		return introspection{Active: true, Scope: in.Scope, ClientID: in.ClientID, Sub: in.Subject, Aud: in.Audience,
			Iss: o.issuer, Exp: in.ExpiresAt.Unix(), Iat: in.IssuedAt.Unix(), TokenType: "refresh_token", SID: in.FamilyID}, nil
	}
	claims, err := o.svc.Access.Verify(token, o.svc.Now())
	if err != nil {
		return introspection{}, nil
	}
	fam, err := o.svc.Reader.Family(ctx, claims.SID)
	if err != nil || fam.Status != domain.StatusActive {
		return introspection{}, nil
	}
	return introspection{Active: true, Scope: claims.Scope, ClientID: claims.ClientID, Sub: claims.Subject,
		Aud: claims.Audience, Iss: claims.Issuer, Exp: claims.Expiry.Time().Unix(), Iat: claims.IssuedAt.Time().Unix(),
		Jti: claims.ID, TokenType: "access_token", SID: claims.SID}, nil
}

// metadata is RFC 8414: exactly what this listener serves.
func (o *OAuth) metadata(w http.ResponseWriter, _ *http.Request) {
	methods := []string{string(domain.AuthSecretBasic), string(domain.AuthSecretPost), string(domain.AuthPrivateKeyJWT), string(domain.AuthNone)}
	algs := make([]string, len(assertionAlgs))
	for i, a := range assertionAlgs {
		algs[i] = string(a)
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                o.issuer,
		"token_endpoint":                        o.issuer + PathToken,
		"revocation_endpoint":                   o.issuer + PathRevoke,
		"introspection_endpoint":                o.issuer + PathIntrospect,
		"jwks_uri":                              o.issuer + PathJWKS,
		"grant_types_supported":                 []string{"refresh_token"},
		"response_types_supported":              []string{},
		"token_endpoint_auth_methods_supported": methods,
		"token_endpoint_auth_signing_alg_values_supported":      algs,
		"revocation_endpoint_auth_methods_supported":            methods,
		"revocation_endpoint_auth_signing_alg_values_supported": algs,
		// Introspection answers confidential clients only.
		"introspection_endpoint_auth_methods_supported":            methods[:3],
		"introspection_endpoint_auth_signing_alg_values_supported": algs,
	})
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
