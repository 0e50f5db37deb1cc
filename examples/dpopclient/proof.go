// Package dpopclient is a small OAuth 2.0 DPoP client (RFC 9449), written
// from the RFC alone: it holds a key pair, makes DPoP proofs for token and
// resource requests, keeps the servers' nonces (section 8) and retries once
// when a server asks for a fresh one, and checks that the access tokens it
// gets are bound to its key.
//
// It knows nothing of any authorization server in particular, tokend
// included: it uses the standard library, golang.org/x/oauth2 for the
// refresh token grant and github.com/lestrrat-go/jwx for JOSE. Use it as a
// worked example, or as a start for a client of your own.
package dpopclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Key is a client's DPoP key pair; its public half travels in every
// proof's header.
type Key struct {
	private jwk.Key
	public  jwk.Key
	alg     jwa.SignatureAlgorithm
}

// GenerateKey makes a new P-256 key, the curve of ES256, which every DPoP
// server is likely to accept.
func GenerateKey() (*Key, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewKey(k)
}

// NewKey wraps a private key: ECDSA on P-256, P-384 or P-521, Ed25519, or
// RSA (signing with PS256).
func NewKey(signer crypto.Signer) (*Key, error) {
	var alg jwa.SignatureAlgorithm
	switch k := signer.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			alg = jwa.ES256()
		case elliptic.P384():
			alg = jwa.ES384()
		case elliptic.P521():
			alg = jwa.ES512()
		default:
			return nil, fmt.Errorf("dpopclient: ECDSA curve %s has no JWS algorithm", k.Curve.Params().Name)
		}
	case ed25519.PrivateKey:
		alg = jwa.EdDSA()
	case *rsa.PrivateKey:
		alg = jwa.PS256()
	default:
		return nil, fmt.Errorf("dpopclient: unsupported key type %T", signer)
	}
	private, err := jwk.Import(signer)
	if err != nil {
		return nil, err
	}
	public, err := jwk.PublicKeyOf(private)
	if err != nil {
		return nil, err
	}
	return &Key{private: private, public: public, alg: alg}, nil
}

// Algorithm is the JWS alg of the key's proofs.
func (k *Key) Algorithm() string { return k.alg.String() }

// Thumbprint is the base64url SHA-256 JWK thumbprint of the public key
// (RFC 7638): the jkt an authorization server binds tokens to (RFC 9449
// section 6.1).
func (k *Key) Thumbprint() (string, error) {
	sum, err := k.public.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// ProofRequest is what a proof is made for.
type ProofRequest struct {
	// Method and URL of the HTTP request; the URL's query and fragment
	// are left out of htu (RFC 9449 section 4.2).
	Method, URL string
	// Nonce is the server's last DPoP-Nonce, if it gave one (section 8).
	Nonce string
	// AccessToken is set for a request to a protected resource: the proof
	// then carries its hash, ath (section 4.2).
	AccessToken string
}

// Proof returns a DPoP proof JWT (RFC 9449 section 4.2) for r, signed by k
// with a fresh jti and iat now.
func (k *Key) Proof(r ProofRequest) (string, error) {
	htu, err := targetURI(r.URL)
	if err != nil {
		return "", err
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	b := jwt.NewBuilder().
		JwtID(base64.RawURLEncoding.EncodeToString(jti)).
		IssuedAt(time.Now()).
		Claim("htm", r.Method).
		Claim("htu", htu)
	if r.Nonce != "" {
		b = b.Claim("nonce", r.Nonce)
	}
	if r.AccessToken != "" {
		b = b.Claim("ath", AccessTokenHash(r.AccessToken))
	}
	claims, err := b.Build()
	if err != nil {
		return "", err
	}
	header := jws.NewHeaders()
	if err := header.Set(jws.TypeKey, "dpop+jwt"); err != nil {
		return "", err
	}
	if err := header.Set(jws.JWKKey, k.public); err != nil {
		return "", err
	}
	proof, err := jwt.Sign(claims, jwt.WithKey(k.alg, k.private, jws.WithProtectedHeaders(header)))
	if err != nil {
		return "", err
	}
	return string(proof), nil
}

// AccessTokenHash is ath: base64url of the SHA-256 of the access token's
// ASCII (RFC 9449 section 4.2).
func AccessTokenHash(accessToken string) string {
	sum := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// targetURI is raw without its query and fragment.
func targetURI(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if !u.IsAbs() || u.Host == "" {
		return "", fmt.Errorf("dpopclient: %q is not an absolute http(s) URL", raw)
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	return u.String(), nil
}

// ErrNotBound: an access token that is not bound to this client's key.
var ErrNotBound = errors.New("dpopclient: the access token is not bound to this key")

// CheckBinding tells whether a JWT access token (RFC 9068) carries the
// confirmation cnf.jkt of k (RFC 9449 section 6.1). It reads the claims
// without verifying the signature: the client is not the token's audience
// and only checks that the server bound the token as asked; a resource
// server verifies the token itself.
func (k *Key) CheckBinding(accessToken string) error {
	tok, err := jwt.ParseInsecure([]byte(accessToken))
	if err != nil {
		return fmt.Errorf("dpopclient: the access token is not a JWT: %w", err)
	}
	var cnf map[string]any
	if err := tok.Get("cnf", &cnf); err != nil {
		return fmt.Errorf("%w: no cnf claim", ErrNotBound)
	}
	jkt, err := k.Thumbprint()
	if err != nil {
		return err
	}
	if got, _ := cnf["jkt"].(string); got != jkt {
		return fmt.Errorf("%w: cnf.jkt %q", ErrNotBound, got)
	}
	return nil
}
