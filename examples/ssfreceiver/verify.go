package ssfreceiver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// Event types this package names.
const (
	// TypeVerification is SSF 1.0 section 8.1.4.1; TypeStreamUpdated 8.1.5.
	TypeVerification  = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	TypeStreamUpdated = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
	// TypeSessionRevoked is CAEP 1.0's; TypeCredentialCompromise RISC 1.0's.
	TypeSessionRevoked       = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	TypeCredentialCompromise = "https://schemas.openid.net/secevent/risc/event-type/credential-compromise"
)

// Error codes a receiver answers a SET with (RFC 8935 section 2.4, and
// RFC 8936 section 2.4.4 for polled SETs).
const (
	ErrInvalidRequest       = "invalid_request"
	ErrInvalidKey           = "invalid_key"
	ErrInvalidIssuer        = "invalid_issuer"
	ErrInvalidAudience      = "invalid_audience"
	ErrAuthenticationFailed = "authentication_failed"
	ErrAccessDenied         = "access_denied"
	// ErrInvalidState: a verification event's state is not the one asked
	// for (SSF 1.0 section 8.1.4.1).
	ErrInvalidState = "invalid_state"
)

// Error is a SET refused, as RFC 8935 section 2.3 and RFC 8936 section
// 2.2 (setErrs) carry it.
type Error struct {
	Code        string `json:"err"`
	Description string `json:"description"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Description }

func refuse(code, format string, args ...any) *Error {
	return &Error{Code: code, Description: fmt.Sprintf(format, args...)}
}

// SET is a verified Security Event Token (RFC 8417) carrying one event.
type SET struct {
	JTI      string
	Issuer   string
	Audience []string
	IssuedAt time.Time
	// Txn joins SETs of one underlying event (SSF 1.0 section 4.1.9); it
	// is optional.
	Txn string
	// TimeOfEvent is toe (RFC 8417 section 2.2), zero when absent.
	TimeOfEvent time.Time
	// SubjectID is sub_id (SSF 1.0 section 3), as JSON.
	SubjectID json.RawMessage
	// Type is the event type URI, Event its event object.
	Type  string
	Event json.RawMessage
}

// VerificationState returns the state of a verification event (SSF 1.0
// section 8.1.4.1), and whether set is one.
func (set SET) VerificationState() (string, bool) {
	if set.Type != TypeVerification {
		return "", false
	}
	var ev struct {
		State string `json:"state"`
	}
	_ = json.Unmarshal(set.Event, &ev) // the event is an object: Verify checked it
	return ev.State, true
}

// Verifier checks SETs from one transmitter to one receiver.
type Verifier struct {
	Issuer   string
	Audience string
	// Leeway is the clock skew allowed for iat; 0 is a minute.
	Leeway time.Duration
	keys   keySet
}

// NewVerifier returns a Verifier of SETs issued by issuer for audience,
// signed with keys of the JWKS at jwksURI (SSF 1.0 section 4.1.4).
func NewVerifier(issuer, audience, jwksURI string, hc *http.Client) *Verifier {
	return &Verifier{Issuer: issuer, Audience: audience, keys: keySet{url: jwksURI, hc: hc}}
}

// Verify checks a SET as RFC 8417 and SSF 1.0 section 4 ask of a
// receiver, and returns it. A SET refused is an *Error with the RFC 8935
// code to answer; any other error (the JWKS could not be fetched) is the
// receiver's trouble, and the SET should be taken again later.
func (v *Verifier) Verify(ctx context.Context, raw []byte) (SET, error) {
	msg, err := jws.Parse(raw, jws.WithCompact())
	if err != nil {
		return SET{}, refuse(ErrInvalidRequest, "not a compact JWS: %v", err)
	}
	if len(msg.Signatures()) != 1 {
		return SET{}, refuse(ErrInvalidRequest, "not one signature")
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	// RFC 8417 section 2.3, SSF 1.0 section 4.1.1: explicitly typed, so
	// that no other kind of JWT is taken for a SET (RFC 8417 section 4.5).
	if typ, _ := h.Type(); !isSETType(typ) {
		return SET{}, refuse(ErrInvalidRequest, "typ %q is not secevent+jwt", typ)
	}
	// The CAEP interoperability profile 1.0 ("Event Signatures"): RS256
	// only, which also shuts out "none" and HMAC with a public key.
	if alg, _ := h.Algorithm(); alg != jwa.RS256() {
		return SET{}, refuse(ErrInvalidRequest, "alg %q is not RS256", alg)
	}
	kid, _ := h.KeyID()
	key, err := v.keys.lookup(ctx, kid)
	if err != nil {
		return SET{}, err
	}

	// RFC 8417 section 2.2: iss, iat and jti are required; SSF 1.0
	// section 4.1.6: iss is the issuer the configuration was asked of;
	// RFC 7519 section 4.1.3: a recipient not in aud rejects the JWT.
	tok, err := jwt.Parse(raw, jwt.WithKey(jwa.RS256(), key), jwt.WithValidate(true),
		jwt.WithIssuer(v.Issuer), jwt.WithAudience(v.Audience),
		jwt.WithRequiredClaim("jti"), jwt.WithRequiredClaim("iat"),
		jwt.WithAcceptableSkew(v.leeway()))
	switch {
	// RFC 8935 section 2.4: invalid_key, the signing key is not
	// acceptable; the transmitter may have rotated it and try again.
	case errors.Is(err, jws.VerifyError()), errors.Is(err, jws.VerificationError()):
		return SET{}, refuse(ErrInvalidKey, "the signature does not verify with key %q", kid)
	case errors.Is(err, jwt.InvalidIssuerError()):
		return SET{}, refuse(ErrInvalidIssuer, "iss is not %q", v.Issuer)
	case errors.Is(err, jwt.InvalidAudienceError()):
		return SET{}, refuse(ErrInvalidAudience, "aud does not hold %q", v.Audience)
	case err != nil:
		return SET{}, refuse(ErrInvalidRequest, "claims: %v", err)
	}

	var c struct {
		Sub    json.RawMessage            `json:"sub"`
		Exp    json.RawMessage            `json:"exp"`
		Txn    string                     `json:"txn"`
		Toe    *json.Number               `json:"toe"`
		SubID  json.RawMessage            `json:"sub_id"`
		Events map[string]json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(msg.Payload(), &c); err != nil {
		return SET{}, refuse(ErrInvalidRequest, "claims: %v", err)
	}
	// SSF 1.0 sections 4.1.2 and 4.1.7: no sub, no exp (RFC 8417 section
	// 4.5: what tells a SET from an ID token or access token).
	if c.Sub != nil || c.Exp != nil {
		return SET{}, refuse(ErrInvalidRequest, "a SET carries no sub and no exp")
	}
	// RFC 8417 section 2.2: events is required; SSF 1.0 section 4.2.1:
	// one event per SET (alternative URIs of one event aside, which this
	// receiver does not take).
	if len(c.Events) != 1 {
		return SET{}, refuse(ErrInvalidRequest, "events holds %d events, not one", len(c.Events))
	}
	set := SET{Txn: c.Txn, SubjectID: c.SubID}
	for typ, ev := range c.Events {
		if !bytes.HasPrefix(bytes.TrimSpace(ev), []byte("{")) {
			return SET{}, refuse(ErrInvalidRequest, "event %s is not an object", typ)
		}
		set.Type, set.Event = typ, ev
	}
	if c.Toe != nil {
		toe, err := c.Toe.Float64()
		if err != nil {
			return SET{}, refuse(ErrInvalidRequest, "toe: %v", err)
		}
		set.TimeOfEvent = time.Unix(int64(toe), 0)
	}
	set.JTI, _ = tok.JwtID()
	set.Issuer, _ = tok.Issuer()
	set.Audience, _ = tok.Audience()
	set.IssuedAt, _ = tok.IssuedAt()
	if set.JTI == "" {
		return SET{}, refuse(ErrInvalidRequest, "jti is empty")
	}
	return set, nil
}

func (v *Verifier) leeway() time.Duration {
	if v.Leeway == 0 {
		return time.Minute
	}
	return v.Leeway
}

// isSETType compares a typ with secevent+jwt as RFC 7515 section 4.1.9
// says: case-insensitively, with or without "application/".
func isSETType(typ string) bool {
	return strings.EqualFold(strings.TrimPrefix(strings.ToLower(typ), "application/"), "secevent+jwt")
}

// keySet is the transmitter's JWKS, fetched when first needed and again
// when a SET names a key it does not hold (after a key rotation), at most
// once per minRefetch so that forged kids cannot make it fetch in a loop.
type keySet struct {
	url     string
	hc      *http.Client
	mu      sync.Mutex
	set     jwk.Set
	fetched time.Time
}

const minRefetch = 30 * time.Second

func (k *keySet) lookup(ctx context.Context, kid string) (jwk.Key, error) {
	if kid == "" {
		return nil, refuse(ErrInvalidKey, "no kid: which key of the JWKS signed it?")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.find(kid)
	if !ok && (k.set == nil || time.Since(k.fetched) >= minRefetch) {
		// jwx refuses a JWKS with an RSA key under 2048 bits, the CAEP
		// interoperability profile 1.0's minimum for RS256.
		set, err := jwk.Fetch(ctx, k.url, jwk.WithHTTPClient(k.hc))
		if err != nil {
			return nil, fmt.Errorf("JWKS %s: %w", k.url, err)
		}
		k.set, k.fetched = set, time.Now()
		key, ok = k.find(kid)
	}
	if !ok {
		return nil, refuse(ErrInvalidKey, "key %q is not in the transmitter's JWKS", kid)
	}
	// RFC 7517 section 4.2: a key published for another use signs no SET.
	if use, ok := key.KeyUsage(); ok && use != "sig" {
		return nil, refuse(ErrInvalidKey, "key %q is for %q, not signatures", kid, use)
	}
	return key, nil
}

func (k *keySet) find(kid string) (jwk.Key, bool) {
	if k.set == nil {
		return nil, false
	}
	return k.set.LookupKeyID(kid)
}
