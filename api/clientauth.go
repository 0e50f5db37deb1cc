package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/dpop"
)

// clientAssertionType is the only client_assertion_type of RFC 7523.
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionAlgs are the signature algorithms accepted in a client
// assertion: asymmetric only (a shared-secret JWT would be a
// client_secret_jwt, which tokend does not offer).
var assertionAlgs = []jose.SignatureAlgorithm{jose.EdDSA, dpop.AlgEd25519, jose.ES256, jose.ES384, jose.ES512, jose.RS256,
	jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}

// maxAssertionLifetime bounds exp - now of an accepted assertion. Common
// client libraries (authlib) make them live an hour, and the large hosted
// providers accept that; the jti cache keeps each for as long.
const maxAssertionLifetime = time.Hour

// assertionLeeway is the clock skew allowed between a client and tokend,
// on nbf, iat and exp alike.
const assertionLeeway = time.Minute

// basicCredentials returns the client_secret_basic credentials of r, if it
// carries any. RFC 6749 section 2.3.1 form-encodes id and secret before
// they are joined, so both are unescaped here.
func basicCredentials(r *http.Request) (id, secret string, ok bool, err error) {
	user, pass, ok := r.BasicAuth()
	if !ok {
		if strings.HasPrefix(strings.ToLower(r.Header.Get("Authorization")), "basic ") {
			return "", "", false, errors.New("malformed Basic credentials")
		}
		return "", "", false, nil
	}
	if id, err = url.QueryUnescape(user); err == nil {
		secret, err = url.QueryUnescape(pass)
	}
	if err != nil {
		return "", "", false, errors.New("malformed Basic credentials")
	}
	return id, secret, true, nil
}

// ReplayCache remembers used identifiers for every instance (jti.Cache):
// Seen records key until until and reports whether it was recorded before.
type ReplayCache interface {
	Seen(ctx context.Context, key string, until time.Time) (bool, error)
}

// assertionVerifier checks private_key_jwt client assertions (RFC 7523
// section 3): signed by a key of the client's registered JWKS, issued by and
// about the client, for this authorization server, unexpired, and never
// seen before (jti) by any instance.
type assertionVerifier struct {
	// audiences are the values aud may hold: the token endpoint's URL and
	// the issuer.
	audiences []string
	now       func() time.Time
	used      ReplayCache
}

func newAssertionVerifier(audiences []string, now func() time.Time, used ReplayCache) *assertionVerifier {
	return &assertionVerifier{audiences: audiences, now: now, used: used}
}

// errBadAssertion is every refused assertion: the reason is for the log,
// the caller gets invalid_client.
var errBadAssertion = errors.New("client assertion refused")

// errReplayCheck is an assertion that could not be checked for a replay:
// the caller may retry.
var errReplayCheck = errors.New("the jti cache is unavailable")

// verify checks assertion for clientID against keys and returns the
// reason it was refused (wrapping errBadAssertion or errReplayCheck), or
// nil.
func (v *assertionVerifier) verify(ctx context.Context, assertion, clientID string, keys jose.JSONWebKeySet) error {
	tok, err := jwt.ParseSigned(assertion, assertionAlgs)
	if err != nil || len(tok.Headers) != 1 {
		return errors.Join(errBadAssertion, errors.New("not a compact JWS"))
	}
	candidates := keys.Keys
	if kid := tok.Headers[0].KeyID; kid != "" {
		candidates = keys.Key(kid)
	}
	var claims jwt.Claims
	verified := false
	for _, k := range candidates {
		var key any = k.Key
		if tok.Headers[0].Algorithm == string(dpop.AlgEd25519) {
			key = dpop.Ed25519Verifier{Key: k.Key}
		}
		if k.IsPublic() && tok.Claims(key, &claims) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return errors.Join(errBadAssertion, errors.New("no registered key verifies the signature"))
	}
	now := v.now()
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: clientID, Subject: clientID, AnyAudience: v.audiences, Time: now}, assertionLeeway); err != nil {
		return errors.Join(errBadAssertion, err)
	}
	if claims.Expiry == nil || claims.ID == "" {
		return errors.Join(errBadAssertion, errors.New("exp and jti are required"))
	}
	exp := claims.Expiry.Time()
	if exp.Sub(now) > maxAssertionLifetime+assertionLeeway {
		return errors.Join(errBadAssertion, errors.New("expires too far in the future"))
	}
	// Remembered as long as the assertion could pass the checks above.
	replayed, err := v.used.Seen(ctx, "assertion\x00"+clientID+"\x00"+claims.ID, exp.Add(assertionLeeway))
	switch {
	case err != nil:
		return errors.Join(errReplayCheck, err)
	case replayed:
		return errors.Join(errBadAssertion, errors.New("jti already used"))
	}
	return nil
}

// authenticate finds the registered client a request speaks for, by
// exactly one method of RFC 6749 section 2.3 / RFC 7523: HTTP Basic,
// client_id and client_secret in the body, a client assertion, or
// client_id alone for a public client. A client with a secret may send it
// either way, Basic or in the body (section 2.3.1: the server MUST support
// Basic); every other method must be the one registered for the client.
func (o *OAuth) authenticate(r *http.Request, f map[string][]string) (domain.Client, *oauthError) {
	get := func(k string) string { return first(f[k]) }
	id := get("client_id")
	refuse := func(method domain.AuthMethod, registered bool, why string) (domain.Client, *oauthError) {
		// The client id is the caller's claim, not yet anyone's identity.
		o.log.Info("oauth client authentication refused", append([]any{"client_id", claimed(id), "method", string(method),
			"registered", registered, "why", why}, logAddress(r)...)...)
		return domain.Client{}, errClientAuth
	}
	basicID, basicSecret, hasBasic, err := basicCredentials(r)
	if err != nil {
		return refuse(domain.AuthSecretBasic, false, "malformed client_secret_basic credentials")
	}
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
		return refuse(method, false, "no client id")
	}
	c, ok := o.clients.Lookup(id)
	switch {
	case !ok:
		return refuse(method, ok, "unknown client")
	case c.AuthMethod != method && !(c.AuthMethod.UsesSecret() && method.UsesSecret()):
		return refuse(method, ok, "not the client's registered method "+string(c.AuthMethod))
	case method == domain.AuthSecretBasic && !c.VerifySecret(basicSecret, o.svc.Now()):
		return refuse(method, ok, "wrong secret")
	case method == domain.AuthSecretPost && !c.VerifySecret(postSecret, o.svc.Now()):
		return refuse(method, ok, "wrong secret")
	case method == domain.AuthPrivateKeyJWT:
		var keys jose.JSONWebKeySet
		if err := json.Unmarshal(c.JWKS, &keys); err != nil {
			return refuse(method, ok, "unreadable registered JWKS")
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		err := o.verify.verify(ctx, assertion, c.ID, keys)
		if errors.Is(err, errReplayCheck) {
			return domain.Client{}, &oauthError{status: http.StatusServiceUnavailable, code: domain.EUnavailable,
				description: "the client assertion cannot be checked right now, retry", retryAfter: time.Second, cause: err}
		}
		if err != nil {
			return refuse(method, ok, err.Error())
		}
	}
	return c, nil
}

// claimed makes a caller-supplied value fit for a log line: at most 64
// bytes, control and other unprintable characters replaced.
func claimed(s string) string {
	if len(s) > 64 {
		s = strings.ToValidUTF8(s[:64], "")
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
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
