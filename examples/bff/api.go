package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// api is the demo resource server, what any service behind the BFF would
// be: it takes the access tokens tokend mints for its audience and checks
// them against tokend's published keys. It knows nothing of sessions or
// cookies.
type api struct {
	issuer   string // tokend's --issuer
	audience string // this API's URL
	keys     *keySet
}

// me answers who the caller is, from a verified access token carrying
// api:read.
func (a *api) me(w http.ResponseWriter, r *http.Request) {
	c, err := a.verify(r)
	switch {
	case errors.Is(err, errInvalidToken):
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_token"})
		return
	case err != nil: // tokend's keys unreachable
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "temporarily_unavailable"})
		return
	}
	if !slices.Contains(strings.Fields(c.Scope), "api:read") {
		w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_scope", scope="api:read"`)
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "insufficient_scope"})
		return
	}
	writeJSON(w, http.StatusOK, identity{Subject: c.Subject, ClientID: c.ClientID, Scope: c.Scope, FamilyID: c.SID,
		IssuedAt: c.IssuedAt.Time(), ExpiresAt: c.Expiry.Time()})
}

// identity is the API's answer.
type identity struct {
	Subject   string    `json:"sub"`
	ClientID  string    `json:"client_id"`
	Scope     string    `json:"scope"`
	FamilyID  string    `json:"family_id"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// claims are those of tokend's access tokens (RFC 9068).
type claims struct {
	jwt.Claims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	SID      string `json:"sid"` // the token family
	// Cnf binds the token to a DPoP key (RFC 9449 section 6).
	Cnf *struct {
		JKT string `json:"jkt"`
	} `json:"cnf"`
}

// leeway absorbs clock skew between tokend and the API (and JWT times are
// whole seconds).
const leeway = 5 * time.Second

var errInvalidToken = errors.New("invalid access token")

// verify checks the request's access token: an at+jwt signed by one of
// tokend's keys, from tokend's issuer, for this API, not expired. A token
// bound to a DPoP key (cnf.jkt) is taken only as "DPoP <token>" with a
// proof by that key for this request (RFC 9449 section 7.1), never as a
// bearer token; any other only as "Bearer <token>".
func (a *api) verify(r *http.Request) (claims, error) {
	scheme, raw, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if scheme != "Bearer" && scheme != "DPoP" {
		return claims{}, errInvalidToken
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 || tok.Headers[0].ExtraHeaders[jose.HeaderType] != "at+jwt" {
		return claims{}, errInvalidToken
	}
	key, err := a.keys.key(r.Context(), tok.Headers[0].KeyID)
	if err != nil {
		return claims{}, err
	}
	var c claims
	if err := tok.Claims(key.Key, &c); err != nil {
		return claims{}, errInvalidToken
	}
	want := jwt.Expected{Issuer: a.issuer, AnyAudience: jwt.Audience{a.audience}, Time: time.Now()}
	if c.Expiry == nil || c.ValidateWithLeeway(want, leeway) != nil {
		return claims{}, errInvalidToken
	}
	bound := c.Cnf != nil
	if bound != (scheme == "DPoP") || bound && a.checkProof(r, raw, c.Cnf.JKT) != nil {
		return claims{}, errInvalidToken
	}
	return c, nil
}

// proofAlgs are the algorithms of the DPoP proofs taken, tokend's too.
var proofAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}

// proofMaxAge bounds how old a DPoP proof's iat may be.
const proofMaxAge = time.Minute

// checkProof checks the request's DPoP proof (RFC 9449 section 4.3) for
// token, bound to the key of thumbprint jkt: signed by that key, for this
// request's method and for the API's own URL of me (its audience + /me,
// compared as is), recent, and hashing token. A resource server on the
// internet also refuses a jti it has seen within proofMaxAge; this demo,
// called by its own BFF, leaves that out.
func (a *api) checkProof(r *http.Request, token, jkt string) error {
	values := r.Header.Values("DPoP")
	if len(values) != 1 {
		return errInvalidToken
	}
	jws, err := jose.ParseSigned(values[0], proofAlgs)
	if err != nil || len(jws.Signatures) != 1 {
		return errInvalidToken
	}
	h := jws.Signatures[0].Protected
	if h.ExtraHeaders[jose.HeaderType] != "dpop+jwt" || h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() {
		return errInvalidToken
	}
	payload, err := jws.Verify(h.JSONWebKey)
	if err != nil {
		return errInvalidToken
	}
	thumb, err := h.JSONWebKey.Thumbprint(crypto.SHA256)
	if err != nil || base64.RawURLEncoding.EncodeToString(thumb) != jkt {
		return errInvalidToken
	}
	var p struct {
		JTI string `json:"jti"`
		HTM string `json:"htm"`
		HTU string `json:"htu"`
		IAT int64  `json:"iat"`
		ATH string `json:"ath"`
	}
	if json.Unmarshal(payload, &p) != nil || p.JTI == "" || p.HTM != r.Method || p.HTU != a.audience+"/me" {
		return errInvalidToken
	}
	iat, now := time.Unix(p.IAT, 0), time.Now()
	sum := sha256.Sum256([]byte(token))
	if iat.Before(now.Add(-proofMaxAge-leeway)) || iat.After(now.Add(leeway)) ||
		p.ATH != base64.RawURLEncoding.EncodeToString(sum[:]) {
		return errInvalidToken
	}
	return nil
}

// keySet caches tokend's JWKS. A key id it does not know (tokend rotated
// its keys) makes it fetch the set again, at most once per minRefetch, so
// that tokens with made-up key ids cannot flood tokend.
type keySet struct {
	fetch func(context.Context) (json.RawMessage, error) // client.Client.Keys: tokens.keys over NATS
	now   func() time.Time

	mu      sync.Mutex
	set     jose.JSONWebKeySet
	fetched time.Time
}

const minRefetch = time.Second

func (k *keySet) key(ctx context.Context, kid string) (jose.JSONWebKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if keys := k.set.Key(kid); len(keys) == 1 {
		return keys[0], nil
	}
	if !k.fetched.IsZero() && k.now().Sub(k.fetched) < minRefetch {
		return jose.JSONWebKey{}, errInvalidToken
	}
	raw, err := k.fetch(ctx)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return jose.JSONWebKey{}, err
	}
	k.set, k.fetched = set, k.now()
	if keys := k.set.Key(kid); len(keys) == 1 {
		return keys[0], nil
	}
	return jose.JSONWebKey{}, errInvalidToken
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
