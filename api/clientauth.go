package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/tokend/tokend/domain"
)

// clientAssertionType is the only client_assertion_type of RFC 7523.
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionAlgs are the signature algorithms accepted in a client
// assertion: asymmetric only (a shared-secret JWT would be a
// client_secret_jwt, which tokend does not offer).
var assertionAlgs = []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384,
	jose.RS512, jose.PS256, jose.PS384, jose.PS512}

// maxAssertionLifetime bounds exp - now of an accepted assertion, so the
// replay cache needs to remember a jti only this long.
const maxAssertionLifetime = 10 * time.Minute

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

// assertionVerifier checks private_key_jwt client assertions (RFC 7523
// section 3): signed by a key of the client's registered JWKS, issued by and
// about the client, for this authorization server, unexpired, and never
// seen before (jti). The jti memory is per instance: an assertion replayed
// to another instance within its lifetime is not caught here, which is why
// lifetimes are capped at maxAssertionLifetime.
type assertionVerifier struct {
	// audiences are the values aud may hold: the token endpoint's URL and
	// the issuer.
	audiences []string
	now       func() time.Time

	mu        sync.Mutex
	seen      map[string]time.Time // client id + jti → when it may be forgotten
	lastPrune time.Time
}

func newAssertionVerifier(audiences []string, now func() time.Time) *assertionVerifier {
	return &assertionVerifier{audiences: audiences, now: now, seen: map[string]time.Time{}}
}

// errBadAssertion is every refused assertion: the reason is for the log,
// the caller gets invalid_client.
var errBadAssertion = errors.New("client assertion refused")

// verify checks assertion for clientID against keys and returns the
// reason it was refused (wrapping errBadAssertion), or nil.
func (v *assertionVerifier) verify(assertion, clientID string, keys jose.JSONWebKeySet) error {
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
		if k.IsPublic() && tok.Claims(k.Key, &claims) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return errors.Join(errBadAssertion, errors.New("no registered key verifies the signature"))
	}
	now := v.now()
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: clientID, Subject: clientID, AnyAudience: v.audiences, Time: now}, time.Minute); err != nil {
		return errors.Join(errBadAssertion, err)
	}
	if claims.Expiry == nil || claims.ID == "" {
		return errors.Join(errBadAssertion, errors.New("exp and jti are required"))
	}
	exp := claims.Expiry.Time()
	if exp.Sub(now) > maxAssertionLifetime {
		return errors.Join(errBadAssertion, errors.New("expires too far in the future"))
	}
	key := clientID + "\x00" + claims.ID
	v.mu.Lock()
	defer v.mu.Unlock()
	if now.Sub(v.lastPrune) > time.Second {
		for k, until := range v.seen {
			if now.After(until) {
				delete(v.seen, k)
			}
		}
		v.lastPrune = now
	}
	if _, replayed := v.seen[key]; replayed {
		return errors.Join(errBadAssertion, errors.New("jti already used"))
	}
	v.seen[key] = exp.Add(time.Minute)
	return nil
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
