package signals

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tokend/tokend/domain"
)

// Delivery secrets (a push stream's authorization_header, a webhook's
// signing secrets) are stored in TOKENS_SSF_STREAMS sealed, never in the
// clear, so that TOKENS_KEYS stays the one secret a deployment stores
// (invariant 9): AES-256-GCM under a key derived from the current MAC key
// (keys.LoadedKeys.SealKey), the MAC key's id kept with the nonce and
// ciphertext, and the stream id and field name as additional data, so a
// sealed value copied to another stream or field does not open. The store
// seals them again under the current key whenever the keyset changes
// (tend.go); a secret whose MAC key is gone (revoked) is lost.

// SealingKeys are the keys delivery secrets are sealed with: the
// deployment's MAC keys, as *keys.LoadedKeys offers them.
type SealingKeys interface {
	// SealKey returns the key to seal with now, and the id of the MAC key
	// it derives from.
	SealKey() (kid string, key []byte, err error)
	// OpenKey returns the key derived from MAC key kid, if kid is in
	// effect.
	OpenKey(kid string) ([]byte, bool)
	// KeysetRevision is the revision of TOKENS_KEYS these keys are.
	KeysetRevision() uint64
}

// Sealed is one delivery secret as TOKENS_SSF_STREAMS stores it.
type Sealed struct {
	// Kid is the MAC key the sealing key derives from.
	Kid string `json:"kid"`
	// KeysetRevision is the TOKENS_KEYS revision it was sealed under: an
	// instance that does not know Kid and has loaded an earlier revision
	// is behind, not looking at a revoked key.
	KeysetRevision uint64 `json:"keyset_revision"`
	Nonce          []byte `json:"nonce"`
	// Ciphertext is AES-256-GCM's, its tag included.
	Ciphertext []byte `json:"ciphertext"`
}

// SealedSecrets are a stream's delivery secrets, sealed. Nothing shows
// them: Store.DeliverySecrets opens them for the delivery only.
type SealedSecrets struct {
	// Authorization is a push stream's authorization_header.
	Authorization *Sealed `json:"authorization_header,omitempty"`
	// Webhook are a webhook's signing secrets, newest first. The newest is
	// Delivery.SecretRef's; older ones sign too until their ExpiresAt, the
	// overlap of a rotation.
	Webhook []WebhookSecret `json:"webhook,omitempty"`
	// Lost says a secret could not be opened any more (its MAC key was
	// revoked): the stream is paused until the receiver sends its delivery
	// again, or an operator rotates the webhook's secret.
	Lost bool `json:"lost,omitempty"`
}

// WebhookSecret is one signing secret of a webhook.
type WebhookSecret struct {
	Ref       string    `json:"ref"`
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is set on a secret replaced by a rotation: it signs too
	// until then.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Sealed    Sealed    `json:"sealed"`
}

// HasAuthorization reports whether s has an authorization_header, without
// opening it.
func (s Stream) HasAuthorization() bool {
	return s.Secrets.Authorization != nil || s.plainAuthorization != ""
}

// live reports whether w still signs at now.
func (w WebhookSecret) live(now time.Time) bool {
	return w.ExpiresAt.IsZero() || now.Before(w.ExpiresAt)
}

// DeliverySecrets are a stream's delivery secrets in the clear, for the
// delivery only: never log them, never show them.
type DeliverySecrets struct {
	// Authorization is the Authorization header of every push, "" if the
	// receiver gave none.
	Authorization string
	// Webhook are the secrets (whsec_...) a webhook's requests are signed
	// with, newest first: Standard Webhooks puts a signature of each in
	// webhook-signature, space-separated, so a SIEM that has only the
	// previous one verifies during a rotation's overlap.
	Webhook []string
}

// ErrSecretLost: a stream's delivery secret cannot be opened, its MAC key
// having been revoked. Deliver nothing: the store pauses the stream.
var ErrSecretLost = errors.New("the stream's delivery secret was lost with a revoked key")

// ReasonSecretLost is the reason of a stream paused for ErrSecretLost.
const ReasonSecretLost = "delivery secret lost with a revoked key: update the stream"

// Names of the sealed fields, in their additional data.
const (
	fieldAuthorization = "authorization_header"
	fieldWebhookSecret = "webhook_secret"
)

// seal seals plain for field of stream id under k's current key.
func seal(k SealingKeys, id, field, plain string) (Sealed, error) {
	if k == nil {
		return Sealed{}, domain.Errorf(domain.EServerError, "delivery secrets cannot be stored: no keys to seal them")
	}
	kid, key, err := k.SealKey()
	if err != nil {
		return Sealed{}, err
	}
	gcm, err := newGCM(key)
	if err != nil {
		return Sealed{}, err
	}
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	return Sealed{Kid: kid, KeysetRevision: k.KeysetRevision(), Nonce: nonce,
		Ciphertext: gcm.Seal(nil, nonce, []byte(plain), additionalData(id, field))}, nil
}

// open returns the secret s seals for field of stream id. It fails with
// ErrSecretLost if s's key is gone from k, or s does not open (it was
// altered, or moved from another stream or field), and with
// temporarily_unavailable if k is an earlier keyset than s was sealed
// under (this instance has not loaded the latest yet).
func open(k SealingKeys, s Sealed, id, field string) (string, error) {
	if k == nil {
		return "", domain.Errorf(domain.EServerError, "delivery secrets cannot be opened: no keys")
	}
	key, ok := k.OpenKey(s.Kid)
	if !ok {
		if s.KeysetRevision > k.KeysetRevision() {
			return "", &domain.Error{Code: domain.EUnavailable, Message: "the keys have not been loaded here yet, retry", RetryAfterMs: 1000}
		}
		return "", fmt.Errorf("%w (key %s)", ErrSecretLost, s.Kid)
	}
	gcm, err := newGCM(key)
	if err != nil {
		return "", err
	}
	if len(s.Nonce) != gcm.NonceSize() {
		return "", fmt.Errorf("%w: a nonce of %d bytes", ErrSecretLost, len(s.Nonce))
	}
	plain, err := gcm.Open(nil, s.Nonce, s.Ciphertext, additionalData(id, field))
	if err != nil {
		return "", fmt.Errorf("%w: it does not open under key %s", ErrSecretLost, s.Kid)
	}
	return string(plain), nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// additionalData binds a sealed value to its stream and field.
func additionalData(id, field string) []byte { return []byte(id + "\x00" + field) }

// webhookField names the sealed field of webhook secret ref.
func webhookField(ref string) string { return fieldWebhookSecret + "\x00" + ref }

// WebhookSecretPrefix starts a Standard Webhooks secret.
const WebhookSecretPrefix = "whsec_"

// ValidWebhookSecret checks a webhook signing secret as Standard Webhooks
// writes it: whsec_ and the standard base64 of 24 to 64 random bytes.
// Errors are invalid_request, and never show the secret.
func ValidWebhookSecret(secret string) error {
	raw, ok := strings.CutPrefix(secret, WebhookSecretPrefix)
	if ok {
		if b, err := base64.StdEncoding.DecodeString(raw); err == nil && len(b) >= 24 && len(b) <= 64 {
			return nil
		}
	}
	return domain.Errorf(domain.EInvalidRequest, "a webhook secret is %s and the base64 of 24 to 64 random bytes", WebhookSecretPrefix)
}
