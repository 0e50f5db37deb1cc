package api

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
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
