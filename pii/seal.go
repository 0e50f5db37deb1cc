package pii

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// SealedVersion is the version of the Sealed format written.
const SealedVersion = 1

// ErrOpen reports a sealed part that cannot be opened with the key given:
// altered, sealed for another event, or under another key.
var ErrOpen = errors.New("pii: sealed data cannot be opened")

// DataKey is one subject's data key. Ref names it in what it sealed: the
// subject's bucket key and the revision the key was created at, so that a
// part sealed under an erased key is told from one under the subject's
// current key (a subject erased and seen again gets a new key).
type DataKey struct {
	Ref  string
	aead cipher.AEAD
}

// Sealed is a sealed part as stored: {"v":1,"k":ref,"n":nonce,"c":ciphertext}
// (n and c in base64).
type Sealed struct {
	V int    `json:"v"`
	K string `json:"k"`
	N []byte `json:"n"`
	C []byte `json:"c"`
}

// Seal encrypts plaintext under key with AES-256-GCM and a random nonce,
// bound to its event: it opens only for the same event id, family id and
// key, so a sealed part copied into another event does not open there.
func Seal(key DataKey, eventID, familyID string, plaintext []byte) (Sealed, error) {
	nonce := make([]byte, key.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, err
	}
	c := key.aead.Seal(nil, nonce, plaintext, associatedData(eventID, familyID, key.Ref))
	return Sealed{V: SealedVersion, K: key.Ref, N: nonce, C: c}, nil
}

// Open decrypts s, sealed by Seal for the same event under key.
func Open(key DataKey, eventID, familyID string, s Sealed) ([]byte, error) {
	if s.V != SealedVersion {
		return nil, fmt.Errorf("pii: sealed version %d unknown", s.V)
	}
	// GCM panics on a nonce of another size, and a part sealed under
	// another key must not be tried with this one.
	if s.K != key.Ref || len(s.N) != key.aead.NonceSize() {
		return nil, ErrOpen
	}
	plain, err := key.aead.Open(nil, s.N, s.C, associatedData(eventID, familyID, key.Ref))
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}

// associatedData is the event's identity: each field with its length
// before it, so that no two different triples give the same bytes (plain
// concatenation would make ("ab","c") and ("a","bc") equal).
func associatedData(fields ...string) []byte {
	ad := []byte("tokend pii v1")
	for _, f := range fields {
		ad = binary.AppendUvarint(ad, uint64(len(f)))
		ad = append(ad, f...)
	}
	return ad
}
