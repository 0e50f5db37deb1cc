// Package dpop verifies DPoP proofs (RFC 9449): JWTs by which a client
// shows it holds the private key its tokens are bound to, one per
// request. It also makes and checks the server nonces proofs may have
// to carry (section 8), which need no state shared between instances.
package dpop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokend/tokend/domain"
)

// ReplayCache records the identifiers of proofs already used (jti.Cache).
type ReplayCache interface {
	// Seen records key as used until until and reports whether it was
	// recorded before; an error means it could not say.
	Seen(ctx context.Context, key string, until time.Time) (bool, error)
}

// NonceKeys gives the HMAC keys of server nonces: current mints, all
// verify (keys.LoadedKeys).
type NonceKeys interface {
	NonceKeys() (current []byte, all [][]byte)
}

// DefaultAlgs are the signature algorithms accepted unless the Verifier
// names fewer: every asymmetric JWS algorithm of RFC 7518 and RFC 8037
// but ECDSA over secp256k1. No other algorithm is ever accepted, not
// even when named: none and HMAC would let anyone make a proof.
var DefaultAlgs = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
}

// supportedAlgs is DefaultAlgs, apart from the exported variable.
var supportedAlgs = slices.Clone(DefaultAlgs)

const (
	// MaxProofSize bounds a proof: a header with a 4096-bit RSA key and
	// the claims fit several times over.
	MaxProofSize = 8 << 10
	// maxJTISize bounds the identifier the replay cache keeps.
	maxJTISize   = 256
	minRSABits   = 2048
	defaultAge   = 60 * time.Second
	defaultSkew  = 5 * time.Second
	proofType    = "dpop+jwt"
	replayPrefix = "dpop|"
)

// Verifier checks DPoP proofs. Its zero value needs Replay and, for
// nonces, Keys; it may be used concurrently.
type Verifier struct {
	// Algs is the allow-list of signature algorithms; nil: DefaultAlgs.
	Algs []jose.SignatureAlgorithm
	// MaxAge is how long after its iat a proof is accepted; 0: 60 s.
	MaxAge time.Duration
	// Skew is the clock difference tolerated either side of iat; 0: 5 s.
	Skew time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Replay remembers the proofs used, on every instance.
	Replay ReplayCache
	// Keys returns the nonce keys in use; nil: no nonces.
	Keys func() NonceKeys
}

// Request is what a proof must match.
type Request struct {
	Proof  string // the DPoP header's value, or dpop_proof
	Method string // the request's method, which htm must equal
	// URL is the request's absolute URL as the client addressed it,
	// which htu must equal once both are normalized (NormalizeURL).
	URL string
	// AccessToken is the access token the request presents: the proof
	// must carry its hash (ath). "": a token request, whose proof must
	// carry none.
	AccessToken string
	// NonceRequired makes a proof without a valid nonce refused with
	// use_dpop_nonce and a fresh nonce.
	NonceRequired bool
}

// Proof is a verified proof.
type Proof struct {
	JKT      string // the key's RFC 7638 SHA-256 thumbprint, base64url
	JTI      string
	IssuedAt time.Time
	Alg      string
	Nonce    string // the nonce it carried, "" none
}

// Refusal is the error of a proof refused: Reason names the check that
// failed, for metrics (missing, malformed, typ, alg, jwk, signature, htm,
// htu, iat, jti, ath, nonce, replay); Err is the reply, invalid_dpop_proof
// naming the check, or use_dpop_nonce with the nonce to retry with.
type Refusal struct {
	Reason string
	Err    *domain.Error
}

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// ReasonOf returns the Reason of a Refusal in err's chain, "" if none.
func ReasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ""
}

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Err: domain.Errorf(domain.EInvalidDPoPProof, "DPoP proof: "+format, args...)}
}

// Thumbprint returns k's RFC 7638 SHA-256 thumbprint in base64url, as
// cnf.jkt and dpop_jkt carry it.
func Thumbprint(k *jose.JSONWebKey) (string, error) {
	t, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(t), nil
}

// AlgValues returns the names of the algorithms accepted, for
// dpop_signing_alg_values_supported (RFC 9449 section 5.1).
func (v *Verifier) AlgValues() []string {
	var names []string
	for _, a := range v.algs() {
		if slices.Contains(supportedAlgs, a) {
			names = append(names, string(a))
		}
	}
	return names
}

func (v *Verifier) algs() []jose.SignatureAlgorithm {
	if v.Algs == nil {
		return supportedAlgs
	}
	return v.Algs
}

func (v *Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

func (v *Verifier) maxAge() time.Duration { return orDefault(v.MaxAge, defaultAge) }
func (v *Verifier) skew() time.Duration   { return orDefault(v.Skew, defaultSkew) }

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// privateMembers are the JWK members of private and symmetric keys
// (RFC 7518 section 6, RFC 8037 section 2).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// Verify checks r.Proof against r, in RFC 9449 section 4.3's order, and
// records its jti as used once every other check passed. A proof refused
// is a *Refusal; a replay cache that cannot answer is
// temporarily_unavailable, never an acceptance.
func (v *Verifier) Verify(ctx context.Context, r Request) (Proof, error) {
	if r.Proof == "" {
		return Proof{}, refuse("missing", "a DPoP proof is required")
	}
	if len(r.Proof) > MaxProofSize {
		return Proof{}, refuse("malformed", "longer than %d bytes", MaxProofSize)
	}
	header, err := parseHeader(r.Proof)
	if err != nil {
		return Proof{}, refuse("malformed", "not a compact JWS: %s", err)
	}
	var typ string
	if json.Unmarshal(header["typ"], &typ) != nil || typ != proofType {
		return Proof{}, refuse("typ", "typ must be %s", proofType)
	}
	var alg jose.SignatureAlgorithm
	if json.Unmarshal(header["alg"], &alg) != nil || !slices.Contains(v.algs(), alg) || !slices.Contains(supportedAlgs, alg) {
		return Proof{}, refuse("alg", "alg must be one of %s", strings.Join(v.AlgValues(), " "))
	}
	jwk, err := publicKey(header["jwk"], alg)
	if err != nil {
		return Proof{}, refuse("jwk", "jwk %s", err)
	}
	jws, err := jose.ParseSignedCompact(r.Proof, []jose.SignatureAlgorithm{alg})
	if err != nil {
		return Proof{}, refuse("malformed", "not a compact JWS")
	}
	payload, err := jws.Verify(jwk.Key)
	if err != nil {
		return Proof{}, refuse("signature", "the signature does not verify with jwk")
	}
	jkt, err := Thumbprint(jwk)
	if err != nil { // cannot happen: publicKey admits keys with thumbprints only
		return Proof{}, refuse("jwk", "jwk has no thumbprint")
	}
	c, err := parseClaims(payload)
	if err != nil {
		return Proof{}, refuse("malformed", "the claims are not a JSON object of the claims' types")
	}
	p := Proof{JKT: jkt, Alg: string(alg)}
	if err := v.checkClaims(c, r, &p); err != nil {
		return Proof{}, err
	}
	if err := v.checkNonce(c, r, &p); err != nil {
		return Proof{}, err
	}
	if v.Replay == nil {
		return Proof{}, errors.New("dpop: no replay cache")
	}
	until := p.IssuedAt.Add(v.maxAge() + v.skew())
	switch seen, err := v.Replay.Seen(ctx, replayPrefix+jkt+"|"+p.JTI, until); {
	case err != nil:
		return Proof{}, fmt.Errorf("%w: %w", &domain.Error{Code: domain.EUnavailable, Message: "could not check the DPoP proof for replay, retry", RetryAfterMs: 1000}, err)
	case seen:
		return Proof{}, refuse("replay", "jti was used before")
	}
	return p, nil
}

// parseHeader splits a compact JWS, checks that each part is base64url,
// and returns its protected header's members.
func parseHeader(proof string) (map[string]json.RawMessage, error) {
	parts := strings.Split(proof, ".")
	if len(parts) != 3 {
		return nil, errors.New("not three parts")
	}
	var raw [3][]byte
	for i, part := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(part)
		if err != nil {
			return nil, errors.New("a part is not base64url")
		}
		raw[i] = b
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(raw[0], &header); err != nil || header == nil {
		return nil, errors.New("the header is not a JSON object")
	}
	// Proofs need neither: a critical extension would have to be
	// understood, and an unencoded payload (RFC 7797) is not a JWT.
	if header["crit"] != nil || header["b64"] != nil {
		return nil, errors.New("crit and b64 are not supported")
	}
	return header, nil
}

// publicKey returns the public key raw holds if it is one RFC 9449
// proofs may be signed with and alg fits it.
func publicKey(raw json.RawMessage, alg jose.SignatureAlgorithm) (*jose.JSONWebKey, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil || members == nil {
		return nil, errors.New("must be a JSON Web Key")
	}
	for _, m := range privateMembers {
		if members[m] != nil {
			return nil, errors.New("must be a public key")
		}
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil || !k.Valid() || !k.IsPublic() {
		return nil, errors.New("is not a valid public key")
	}
	var fits bool
	switch key := k.Key.(type) {
	case *ecdsa.PublicKey:
		want := map[jose.SignatureAlgorithm]elliptic.Curve{jose.ES256: elliptic.P256(), jose.ES384: elliptic.P384(), jose.ES512: elliptic.P521()}[alg]
		fits = want != nil && key.Curve == want
	case ed25519.PublicKey:
		fits = alg == jose.EdDSA
	case *rsa.PublicKey:
		if key.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key must have at least %d bits", minRSABits)
		}
		fits = strings.HasPrefix(string(alg), "RS") || strings.HasPrefix(string(alg), "PS")
	default:
		return nil, errors.New("must be an EC, Ed25519 or RSA key")
	}
	if !fits {
		return nil, fmt.Errorf("key does not fit alg %s", alg)
	}
	return &k, nil
}

// claims are a proof's claims, read by their exact names.
type claims struct {
	jti, htm, htu, ath, nonce *string
	iat                       *float64
}

func parseClaims(payload []byte) (claims, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(payload, &members); err != nil || members == nil {
		return claims{}, errors.New("not a JSON object")
	}
	var c claims
	for name, dst := range map[string]**string{"jti": &c.jti, "htm": &c.htm, "htu": &c.htu, "ath": &c.ath, "nonce": &c.nonce} {
		if raw, ok := members[name]; ok {
			*dst = new(string)
			if err := json.Unmarshal(raw, *dst); err != nil {
				return claims{}, err
			}
		}
	}
	if raw, ok := members["iat"]; ok {
		c.iat = new(float64)
		if err := json.Unmarshal(raw, c.iat); err != nil {
			return claims{}, err
		}
	}
	return c, nil
}

// maxIAT bounds iat so that it converts to a time.Time exactly: the year
// 2242.
const maxIAT = 1 << 33

func (v *Verifier) checkClaims(c claims, r Request, p *Proof) error {
	switch {
	case c.jti == nil || *c.jti == "":
		return refuse("jti", "jti is required")
	case len(*c.jti) > maxJTISize:
		return refuse("jti", "jti must be at most %d bytes", maxJTISize)
	case c.htm == nil || *c.htm != r.Method:
		return refuse("htm", "htm must be %s", r.Method)
	}
	want, err := NormalizeURL(r.URL)
	if err != nil {
		return refuse("htu", "the request's URL is not an absolute http(s) URL")
	}
	if c.htu == nil {
		return refuse("htu", "htu is required")
	}
	if got, err := NormalizeURL(*c.htu); err != nil || got != want {
		return refuse("htu", "htu must be %s", want)
	}
	if c.iat == nil || math.IsNaN(*c.iat) || *c.iat < 0 || *c.iat > maxIAT {
		return refuse("iat", "iat is required")
	}
	sec, frac := math.Modf(*c.iat)
	iat := time.Unix(int64(sec), int64(frac*1e9))
	now := v.now()
	if iat.Before(now.Add(-v.maxAge()-v.skew())) || iat.After(now.Add(v.skew())) {
		return refuse("iat", "iat must be within %s before now", v.maxAge())
	}
	switch {
	case r.AccessToken == "" && c.ath != nil:
		return refuse("ath", "ath must be absent from a token request's proof")
	case r.AccessToken != "" && c.ath == nil:
		return refuse("ath", "ath is required with an access token")
	case r.AccessToken != "":
		sum := sha256.Sum256([]byte(r.AccessToken))
		if subtle.ConstantTimeCompare([]byte(*c.ath), []byte(base64.RawURLEncoding.EncodeToString(sum[:]))) != 1 {
			return refuse("ath", "ath is not the access token's hash")
		}
	}
	p.JTI, p.IssuedAt = *c.jti, iat
	return nil
}

// checkNonce refuses a proof without a valid nonce where one is required,
// and one with an invalid nonce even where none is: the client holds a
// stale nonce and learns the fresh one the same way.
func (v *Verifier) checkNonce(c claims, r Request, p *Proof) error {
	if v.Keys == nil {
		if r.NonceRequired {
			return errors.New("dpop: a nonce is required and there are no nonce keys")
		}
		return nil
	}
	if c.nonce != nil && v.NonceValid(*c.nonce) {
		p.Nonce = *c.nonce
		return nil
	}
	if c.nonce == nil && !r.NonceRequired {
		return nil
	}
	nonce, err := v.Nonce()
	if err != nil {
		return err
	}
	msg := "a DPoP nonce is required: retry with the nonce given"
	if c.nonce != nil {
		msg = "the DPoP nonce is stale or unknown: retry with the nonce given"
	}
	return &Refusal{Reason: "nonce", Err: &domain.Error{Code: domain.EUseDPoPNonce, Message: msg, DPoPNonce: nonce}}
}
