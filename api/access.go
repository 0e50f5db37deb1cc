// Package api serves tokend over NATS (the micro service "tokens") and HTTP:
// wire JSON in and out, domain errors mapped to the contract's codes.
package api

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

// AccessTokens mints RFC 9068 access tokens (JWT, typ at+jwt) signed with
// the deployment's current Ed25519 key, and publishes the public keys: those
// of the access-token signing keys and those of the SET keys, which sign
// the Security Event Tokens of the SSF transmitter. The keys are swapped
// atomically when they rotate (Follow); minting takes no lock.
type AccessTokens struct {
	issuer string
	ttl    time.Duration
	signer atomic.Pointer[signer]
}

// signer is one keyset's signing key and JWKS.
type signer struct {
	key    ed25519.PrivateKey
	header []byte // the JWS protected header, base64url-encoded: the same for every token
	jwks   []byte
	// public holds the access-token signing keys of jwks, for Verify:
	// never the SET keys, so that nothing they sign passes for an access
	// token.
	public jose.JSONWebKeySet
	// nextExpiry is when the first retired key of jwks expires and leaves
	// it; zero if none will.
	nextExpiry time.Time
}

// NewAccessTokens signs with the keyset's current signing key; the JWKS
// holds every signing key (EdDSA) and every SET key (RS256) of the keyset,
// next, current and retired, so tokens and SETs signed before a rotation
// still verify and resource servers and SSF receivers learn a staged key
// before anything is signed with it. Given the keys in effect
// (keys.LoadedKeys.Keys), as Follow does, it holds no key past its expiry.
func NewAccessTokens(ks keys.Keyset, issuer string, ttl time.Duration) (*AccessTokens, error) {
	a := &AccessTokens{issuer: issuer, ttl: ttl}
	if err := a.Use(ks); err != nil {
		return nil, err
	}
	return a, nil
}

// Use switches to the keyset ks.
func (a *AccessTokens) Use(ks keys.Keyset) error {
	cur, err := ks.CurrentSigning()
	if err != nil {
		return err
	}
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{string(jose.EdDSA), cur.ID, "at+jwt"})
	if err != nil {
		return err
	}
	var public jose.JSONWebKeySet
	var nextExpiry time.Time
	expires := func(at time.Time) {
		if !at.IsZero() && (nextExpiry.IsZero() || at.Before(nextExpiry)) {
			nextExpiry = at
		}
	}
	for _, k := range ks.Signing {
		public.Keys = append(public.Keys, jose.JSONWebKey{
			Key: k.Private().Public().(ed25519.PublicKey), KeyID: k.ID, Algorithm: string(jose.EdDSA), Use: "sig"})
		expires(k.ExpiresAt)
	}
	published := jose.JSONWebKeySet{Keys: slices.Clone(public.Keys)}
	for _, k := range ks.SET {
		key, err := k.Private()
		if err != nil {
			return fmt.Errorf("set key %s: %w", k.ID, err)
		}
		published.Keys = append(published.Keys, jose.JSONWebKey{Key: &key.PublicKey, KeyID: k.ID, Algorithm: string(jose.RS256), Use: "sig"})
		expires(k.ExpiresAt)
	}
	jwks, err := json.Marshal(published)
	if err != nil {
		return err
	}
	a.signer.Store(&signer{key: cur.Private(), header: base64.RawURLEncoding.AppendEncode(nil, header), jwks: jwks, public: public,
		nextExpiry: nextExpiry})
	return nil
}

// Follow keeps a on the keyring's keys in effect: as they rotate, are
// revoked, and expire.
func (a *AccessTokens) Follow(k *keys.Keyring) error {
	return k.OnChange(func(l *keys.LoadedKeys) error { return a.Use(l.Keys) })
}

// JWKS returns the public key set as JSON.
func (a *AccessTokens) JWKS() []byte { return a.signer.Load().jwks }

// JWKSMaxAge is how long resource servers may cache the JWKS.
const JWKSMaxAge = 5 * time.Minute

// JWKSCacheControl returns the Cache-Control header of the JWKS served at
// now: cacheable for JWKSMaxAge, or only until its first key expires, so
// that resource servers drop an expired key when tokend does.
func (a *AccessTokens) JWKSCacheControl(now time.Time) string {
	age := JWKSMaxAge
	if next := a.signer.Load().nextExpiry; !next.IsZero() {
		age = max(0, min(age, next.Sub(now)))
	}
	return fmt.Sprintf("public, max-age=%d", int(age/time.Second))
}

// MaxTTL returns the deployment's access-token lifetime (--access-ttl):
// the longest an access token lives, which a retired signing key stays
// published for (keys.Lifetimes.Access).
func (a *AccessTokens) MaxTTL() time.Duration { return a.ttl }

// TTL returns the lifetime of a grant's access token: its client's, else
// the deployment's, and never longer than the deployment's: a token must
// not outlive its signing key, which stays published for the deployment's
// lifetime after it retires. Registration refuses longer lifetimes; this
// holds if --access-ttl was lowered since.
func (a *AccessTokens) TTL(g tokens.Grant) time.Duration {
	if g.AccessTTL > 0 {
		return min(g.AccessTTL, a.ttl)
	}
	return a.ttl
}

// Mint returns a signed access token for a grant, issued at now.
func (a *AccessTokens) Mint(g tokens.Grant, now time.Time) (string, error) {
	c := AccessClaims{
		Claims: jwt.Claims{
			Issuer:   a.issuer,
			Subject:  g.Family.Subject,
			Audience: jwt.Audience(g.Audience),
			Expiry:   jwt.NewNumericDate(now.Add(a.TTL(g))),
			IssuedAt: jwt.NewNumericDate(now),
			ID:       nuid.Next(),
		},
		ClientID: g.Family.ClientID,
		Scope:    domain.ScopeString(g.Scope),
		SID:      g.Family.ID,
	}
	c.Confirmation = wire.ConfirmationOf(g.DPoPJKT)
	return a.sign(c)
}

// sign returns claims as a compact JWS (RFC 7515 section 7.1) signed with
// the current key, under the access tokens' header (typ at+jwt).
func (a *AccessTokens) sign(claims any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	// The JWS is assembled here rather than by go-jose's signer, which
	// rebuilt and re-encoded the constant header and copied the token
	// three times: a fifth of the cost of minting, the rest being the
	// Ed25519 signature itself. Tests verify the result with go-jose, as a
	// resource server would.
	enc := base64.RawURLEncoding
	sg := a.signer.Load()
	tok := make([]byte, 0, len(sg.header)+2+enc.EncodedLen(len(payload))+enc.EncodedLen(ed25519.SignatureSize))
	tok = append(tok, sg.header...)
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, payload)
	sig := ed25519.Sign(sg.key, tok)
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, sig)
	return string(tok), nil
}

// AccessClaims are the claims of a verified access token.
type AccessClaims struct {
	jwt.Claims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	SID      string `json:"sid"` // the family id
	// Confirmation binds the token to a DPoP key (RFC 9449 section 6):
	// it is sent with a proof by that key, as token type DPoP.
	Confirmation *wire.Confirmation `json:"cnf,omitempty"`
}

// errNotOurs is any token Verify refuses.
var errNotOurs = errors.New("not a valid access token of this deployment")

// Verify checks that token is an unexpired access token this deployment
// signed (EdDSA, with any signing key of its JWKS, retired ones included,
// none past its expiry or revoked; never a SET key) and returns its claims.
func (a *AccessTokens) Verify(token string, now time.Time) (AccessClaims, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(tok.Headers) != 1 || tok.Headers[0].ExtraHeaders[jose.HeaderType] != "at+jwt" {
		return AccessClaims{}, errNotOurs
	}
	keys := a.signer.Load().public.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		return AccessClaims{}, errNotOurs
	}
	var c AccessClaims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		return AccessClaims{}, errNotOurs
	}
	if c.Expiry == nil || c.SID == "" || c.ValidateWithLeeway(jwt.Expected{Issuer: a.issuer, Time: now}, 0) != nil {
		return AccessClaims{}, errNotOurs
	}
	return c, nil
}
