package dpop

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"

	"github.com/tokend/tokend/domain"
)

// nonceSlot is how long one nonce is minted; a nonce is accepted in its
// slot and the slots either side, so for 5 to 15 minutes, and on an
// instance whose clock is a slot off.
const nonceSlot = 300 // seconds

const (
	nonceTagSize = 16
	nonceSize    = 8 + nonceTagSize
)

// Nonce returns the nonce that proofs carry now (RFC 9449 section 8):
// the time slot and its HMAC under the current nonce key, so any instance
// holding the keys verifies it without shared state.
func (v *Verifier) Nonce() (string, error) {
	var current []byte
	if v.Keys != nil {
		current, _ = v.Keys().NonceKeys()
	}
	if len(current) == 0 {
		return "", &domain.Error{Code: domain.EUnavailable, Message: "no key to make DPoP nonces with, retry", RetryAfterMs: 1000}
	}
	b := make([]byte, nonceSize)
	slot := uint64(v.now().Unix() / nonceSlot)
	binary.BigEndian.PutUint64(b, slot)
	copy(b[8:], nonceTag(current, b[:8]))
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// NonceValid reports whether n is a nonce of this slot or one either side,
// under any nonce key in effect.
func (v *Verifier) NonceValid(n string) bool {
	if v.Keys == nil || base64.RawURLEncoding.DecodedLen(len(n)) != nonceSize {
		return false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(n)
	if err != nil || len(b) != nonceSize {
		return false
	}
	slot := binary.BigEndian.Uint64(b)
	now := uint64(v.now().Unix() / nonceSlot)
	if slot+1 < now || slot > now+1 {
		return false
	}
	_, all := v.Keys().NonceKeys()
	for _, key := range all {
		if hmac.Equal(b[8:], nonceTag(key, b[:8])) {
			return true
		}
	}
	return false
}

func nonceTag(key, slot []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("dpop-nonce"))
	m.Write(slot)
	return m.Sum(nil)[:nonceTagSize]
}
