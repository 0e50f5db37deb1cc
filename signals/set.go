package signals

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"
)

// SETType is the typ header of every SET tokend signs (SSF 1.0 section
// 4.1.1, RFC 8417 section 2.3).
const SETType = "secevent+jwt"

// minRSABits is the smallest key the CAEP interoperability profile
// allows for RS256.
const minRSABits = 2048

// Signer provides the key SETs are signed with: the deployment's current
// key of kind set (RSA, published in the JWKS with alg RS256).
type Signer interface {
	SETKey() (kid string, key crypto.Signer, err error)
}

// Claims are a SET's claims (RFC 8417 section 2.2, SSF 1.0 section 4.1).
// There is no sub and no exp: SSF 1.0 sections 4.1.2 and 4.1.7 forbid them.
type Claims struct {
	Issuer   string       `json:"iss"`
	Audience jwt.Audience `json:"aud"`
	// ID (jti) is unique per SET, and the same for a redelivery of the
	// same event on the same stream, so a receiver drops duplicates: JTI.
	ID       string `json:"jti"`
	IssuedAt int64  `json:"iat"`
	// Txn is the tokend event's id (SSF 1.0 section 4.1.8).
	Txn string `json:"txn"`
	// TimeOfEvent (toe, RFC 8417 section 2.2) is when the event happened.
	TimeOfEvent int64          `json:"toe"`
	SubjectID   Subject        `json:"sub_id"`
	Events      map[string]any `json:"events"`
}

// JTI returns the jti of the SET carrying a signal of type eventType with
// txn txn on stream streamID: 128 bits of SHA-256 over the three, in hex.
// Every delivery of that signal on that stream has it; any other signal,
// or the same one on another stream, another.
func JTI(streamID, txn, eventType string) string {
	h := sha256.Sum256([]byte(streamID + "\x00" + txn + "\x00" + eventType))
	return hex.EncodeToString(h[:16])
}

// Claims returns the claims of the SET carrying sig on stream s, issued
// by issuer at now. The events claim holds sig alone (the CAEP
// interoperability profile allows one event per SET).
func (sig Signal) Claims(issuer string, s Stream, now time.Time) Claims {
	return Claims{Issuer: issuer, Audience: jwt.Audience(s.Audience), ID: JTI(s.ID, sig.Txn, sig.Type), IssuedAt: now.Unix(),
		Txn: sig.Txn, TimeOfEvent: sig.Time.Unix(), SubjectID: sig.Subject, Events: map[string]any{sig.Type: sig.Event}}
}

// EncodeSET signs c with the signer's key as a compact JWS: RS256, with
// typ secevent+jwt and the key's kid in the header.
func EncodeSET(signer Signer, c Claims) (string, error) {
	kid, key, err := signer.SETKey()
	if err != nil {
		return "", fmt.Errorf("SET key: %w", err)
	}
	pub, ok := key.Public().(*rsa.PublicKey)
	if !ok || pub.N.BitLen() < minRSABits {
		return "", errors.New("the SET key is not an RSA key of 2048 bits or more")
	}
	if kid == "" {
		return "", errors.New("the SET key has no kid")
	}
	opts := (&jose.SignerOptions{}).WithType(SETType).WithHeader(jose.HeaderKey("kid"), kid)
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: cryptosigner.Opaque(key)}, opts)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	sig, err := js.Sign(payload)
	if err != nil {
		return "", err
	}
	return sig.CompactSerialize()
}
