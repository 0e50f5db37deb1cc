package client

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
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenTypeDPoP is the token_type of an access token bound to a DPoP key
// (RFC 9449): it is sent as "Authorization: DPoP <token>" with a proof.
const TokenTypeDPoP = "DPoP"

// DPoP holds a DPoP key (RFC 9449) and makes the proofs that show
// possession of it: for tokend's token endpoint, so that a family bound
// to the key refreshes only with it, and for resource requests with an
// access token bound to it. It remembers the last nonce tokend gave it
// (RFC 9449 section 8) and puts it in later proofs, resource requests'
// included (a server that uses no nonces ignores it). It is safe for
// concurrent use.
type DPoP struct {
	signer jose.Signer
	jkt    string

	mu    sync.Mutex
	nonce string
}

// NewDPoP returns a DPoP holding key: an ECDSA key on P-256, P-384 or
// P-521 (proofs signed ES256, ES384, ES512), an Ed25519 key (EdDSA) or an
// RSA key of at least 2048 bits (PS256), held in memory or behind any
// crypto.Signer (a KMS, an HSM). A nil key generates an ECDSA P-256 key,
// kept in memory only.
func NewDPoP(key crypto.Signer) (*DPoP, error) {
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		key = k
	}
	alg, err := dpopAlg(key.Public())
	if err != nil {
		return nil, err
	}
	opaque := cryptosigner.Opaque(key)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: opaque},
		(&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt"))
	if err != nil {
		return nil, fmt.Errorf("client: DPoP key: %w", err)
	}
	thumb, err := opaque.Public().Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("client: DPoP key: %w", err)
	}
	return &DPoP{signer: signer, jkt: base64.RawURLEncoding.EncodeToString(thumb)}, nil
}

// dpopAlg is the signature algorithm of proofs by a key whose public half
// is pub: one that every RFC 9449 server accepts.
func dpopAlg(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
		return "", errors.New("client: a DPoP ECDSA key must be on P-256, P-384 or P-521")
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", errors.New("client: a DPoP RSA key needs at least 2048 bits")
		}
		return jose.PS256, nil
	}
	return "", fmt.Errorf("client: a DPoP key must be ECDSA, Ed25519 or RSA, not %T", pub)
}

// JKT returns the key's RFC 7638 SHA-256 thumbprint, base64url: the
// dpop_jkt that binds a family to the key at issue
// (wire.IssueRequest.DPoPJKT).
func (d *DPoP) JKT() string { return d.jkt }

// Nonce returns the nonce later proofs carry, "" if none.
func (d *DPoP) Nonce() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nonce
}

// SetNonce makes later proofs carry nonce, as tokend asked (its
// use_dpop_nonce error, or the dpop_nonce of a token reply). The Source
// calls it; "" is ignored.
func (d *DPoP) SetNonce(nonce string) {
	if nonce == "" {
		return
	}
	d.mu.Lock()
	d.nonce = nonce
	d.mu.Unlock()
}

// proofClaims are a DPoP proof's claims (RFC 9449 section 4.2).
type proofClaims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// Proof returns a new proof JWT for a request with method to url (its
// query and fragment are left out, as RFC 9449 section 4.2 asks), with a
// fresh jti: a server refuses a proof it has seen. accessToken, if not
// empty, is the access token the request carries (its hash goes in ath);
// it is empty at the token endpoint.
func (d *DPoP) Proof(method, url, accessToken string) (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	htu, _, _ := strings.Cut(url, "#")
	htu, _, _ = strings.Cut(htu, "?")
	c := proofClaims{JTI: base64.RawURLEncoding.EncodeToString(jti[:]), HTM: method, HTU: htu,
		IAT: time.Now().Unix(), Nonce: d.Nonce()}
	if accessToken != "" {
		sum := sha256.Sum256([]byte(accessToken))
		c.ATH = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	proof, err := jwt.Signed(d.signer).Claims(c).Serialize()
	if err != nil {
		return "", fmt.Errorf("client: signing a DPoP proof: %w", err)
	}
	return proof, nil
}

// Authorize sets req's Authorization header for token: for a token bound
// to the key (TokenType DPoP), "DPoP <token>" and a DPoP header with a new
// proof for req's method and URL; for any other, "Bearer <token>".
func (d *DPoP) Authorize(req *http.Request, token AccessToken) error {
	if !strings.EqualFold(token.TokenType, TokenTypeDPoP) {
		req.Header.Set("Authorization", "Bearer "+token.Token)
		req.Header.Del("DPoP")
		return nil
	}
	proof, err := d.Proof(req.Method, req.URL.String(), token.Token)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "DPoP "+token.Token)
	req.Header.Set("DPoP", proof)
	return nil
}
