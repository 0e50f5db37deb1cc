package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/pii"
)

// Protector applies personal data protection (--pii-key-file) to events:
// the personal fields of an event (its subject and context) are sealed
// under the subject's data key before it is stored, and the stored subject
// is the subject's pseudonym. Erasing the subject's key leaves every copy
// of them unreadable. Without a Protector events are stored in clear, as
// the contract's v1 core describes them.
type Protector struct {
	keys *pii.Store
	// periods, if set, seals each event's context a second time, under
	// the key of the period it was written in, which expires: the context
	// (IP, user agent, ...) becomes unreadable after the retention, the
	// rest of the event stays.
	periods *pii.Periods
	// pseudonyms remembers the pseudonyms of the subjects seen last: an
	// HMAC per event was a third of what protection adds to a rotation.
	pseudonyms *lru.Cache[string, string]
}

// pseudonymCacheSize bounds the pseudonyms remembered: the subjects of as
// many families as the writer caches by default.
const pseudonymCacheSize = 16384

// NewProtector returns a protector sealing under keys' data keys, and
// the contexts also under periods' keys if periods is not nil.
func NewProtector(keys *pii.Store, periods *pii.Periods) *Protector {
	cache, _ := lru.New[string, string](pseudonymCacheSize)
	return &Protector{keys: keys, periods: periods, pseudonyms: cache}
}

// Pseudonym returns the pseudonym under which subject is stored.
func (p *Protector) Pseudonym(subject string) string {
	if ps, ok := p.pseudonyms.Get(subject); ok {
		return ps
	}
	ps := p.keys.Pseudonym(subject)
	p.pseudonyms.Add(subject, ps)
	return ps
}

// MarkerName names a subject's revoking marker (revoking.SubjectName): by
// its pseudonym, so the bucket holds no hash of a person's identifier. An
// erasure by pseudonym (api's subjects erase) gives the pseudonym itself,
// and marks the same subject as one by the subject in clear.
func (p *Protector) MarkerName(subject string) string {
	if pii.IsPseudonym(subject) {
		return subject
	}
	return p.Pseudonym(subject)
}

// origin is what the family's last event says of its personal fields: how
// the writer seals the next events (Protector.seal).
type origin uint8

const (
	// originClear: a new family, or a live one whose events were written
	// in clear (before protection was turned on). Its next event creates
	// the subject's data key if it has none, which brings the family under
	// protection.
	originClear origin = iota
	// originSealed: the subject's key must exist already: the family's
	// events are sealed, or it is a family in clear that can no longer be
	// used. A missing key means the subject was erased (an erasure revokes
	// every live family first): the key is never created again for it.
	// (An erased subject's family is Envelope.Erased, whatever its origin.)
	originSealed
)

// originFor is how the events decided on family f, in the state its last
// event left it (origin o), are sealed at time now: a family in clear
// that is revoked or expired may belong to an erased subject, whose key
// must not come back.
func originFor(f domain.Family, o origin, now time.Time) origin {
	if o == originClear && f.Exists() && f.StatusAt(now) != domain.StatusActive {
		return originSealed
	}
	return o
}

// personal is the plaintext of an event's sealed part. With a context
// retention, the context is sealed under its period's key inside it
// (ContextSealed), so that it is readable only while both keys exist:
// erasing the subject shreds it at once, and its period's expiry on
// schedule.
type personal struct {
	Subject       string         `json:"subject"`
	Context       domain.Context `json:"context,omitempty"`
	ContextSealed string         `json:"context_sealed,omitempty"`
}

// seal replaces env's personal fields with its subject's pseudonym and
// their sealed form. A family whose subject was erased gets events that
// say so (pii without a key) and hold no personal data: its key is not
// created again, so a token of an erased subject presented later records
// neither the subject nor the presenter's context.
func (p *Protector) seal(ctx context.Context, env *Envelope) error {
	if env.Erased { // Subject is the pseudonym already
		env.PII, env.Context = erasedPart(), nil
		return nil
	}
	pseudonym := p.Pseudonym(env.Subject)
	key, err := p.keys.DataKey(ctx, pseudonym, env.origin == originClear)
	if errors.Is(err, pii.ErrNoKey) {
		env.Subject = pseudonym
		env.PII, env.Context, env.Erased = erasedPart(), nil, true
		return nil
	}
	if err != nil {
		return err
	}
	part := personal{Subject: env.Subject, Context: env.Context}
	if p.periods != nil && len(env.Context) > 0 {
		if part.ContextSealed, err = p.sealContext(ctx, env); err != nil {
			return err
		}
		part.Context = nil
	}
	plain, err := part.encode()
	if err != nil {
		return err
	}
	sealed, err := sealSubjectPart(key, env.ID, env.FamilyID, plain)
	if err != nil {
		return err
	}
	env.Subject = pseudonym
	env.PII, env.Context, env.origin = sealed, nil, originSealed
	return nil
}

// encode is the plaintext of p: the subject alone after a zero byte when
// that is all (most events: a rotation without context), else JSON.
// Every byte here is in every event and read model row, base64 encoded.
func (p personal) encode() ([]byte, error) {
	if p.Context == nil && p.ContextSealed == "" {
		return append([]byte{0}, p.Subject...), nil
	}
	return json.Marshal(p)
}

// decodePersonal reads encode's plaintext.
func decodePersonal(plain []byte) (personal, error) {
	if len(plain) > 0 && plain[0] == 0 {
		return personal{Subject: string(plain[1:])}, nil
	}
	var p personal
	if err := json.Unmarshal(plain, &p); err != nil {
		return personal{}, fmt.Errorf("%w: %v", pii.ErrOpen, err)
	}
	return p, nil
}

// sealSubjectPart seals plain for the event (eventID, familyID) under its
// subject's key, in its stored form, naming the key by its revision alone
// (pii.ShortRef): open completes it from the event's pseudonym.
func sealSubjectPart(key pii.DataKey, eventID, familyID string, plain []byte) (string, error) {
	sealed, err := pii.Seal(key, eventID, familyID, plain)
	if err != nil {
		return "", err
	}
	sealed.K = pii.ShortRef(sealed.K)
	return sealed.Text(), nil
}

// sealContext seals env's context under the current period's key.
func (p *Protector) sealContext(ctx context.Context, env *Envelope) (string, error) {
	key, err := p.periods.Current(ctx)
	if err != nil {
		return "", err
	}
	plain, err := json.Marshal(env.Context)
	if err != nil {
		return "", err
	}
	sealed, err := pii.Seal(key, env.ID, env.FamilyID, plain) // named by its full ref: the event names no period
	if err != nil {
		return "", err
	}
	return sealed.Text(), nil
}

// erasedPart is the sealed part of an event written after its subject was
// erased: no key, nothing sealed.
func erasedPart() string { return pii.Sealed{V: pii.SealedVersion}.Text() }

// Reveal opens env's sealed part in place: Subject and Context become the
// clear values again, or, if the subject was erased, Subject stays the
// pseudonym, Context is empty and Erased is set. An event stored in clear
// is left as it is.
func (p *Protector) Reveal(ctx context.Context, env *Envelope) error {
	r, err := p.OpenStored(ctx, env.ID, env.FamilyID, env.Subject, env.PII)
	if err != nil {
		return fmt.Errorf("event %s: %w", env.ID, err)
	}
	if env.PII == "" {
		env.origin = originClear
		return nil
	}
	env.Subject, env.Context, env.Erased, env.origin = r.Subject, r.Context, r.Erased, originSealed
	return nil
}

// Revealed is the personal part of a stored event or row.
type Revealed struct {
	Subject string
	Context domain.Context
	// Erased: the subject was erased; Subject is its pseudonym.
	Erased bool
	// ContextExpired: the context was sealed under a period key that has
	// expired (--pii-context-retention); Context is empty.
	ContextExpired bool
}

// OpenStored returns the personal fields of the event eventID of family
// familyID (family "" for a deployment event), stored as subject, its
// pseudonym, and sealed, its sealed part (Envelope.PII; "" for an event
// in clear): for read models, which keep the sealed part as the event had
// it, and for Reveal.
func (p *Protector) OpenStored(ctx context.Context, eventID, familyID, subject, stored string) (Revealed, error) {
	if stored == "" {
		return Revealed{Subject: subject}, nil
	}
	sealed, err := pii.ParseSealed(stored)
	if err != nil {
		return Revealed{}, err
	}
	if sealed.K != "" {
		sealed.K = pii.FullRef(subject, sealed.K)
	}
	plain, gone, err := openPart(ctx, p.keys.KeyFor, eventID, familyID, sealed)
	if gone || err != nil {
		return Revealed{Subject: subject, Erased: gone}, err
	}
	r, err := decodePersonal(plain)
	if err != nil {
		return Revealed{}, err
	}
	out := Revealed{Subject: r.Subject, Context: r.Context}
	if r.ContextSealed != "" {
		out.Context, out.ContextExpired, err = p.openContext(ctx, eventID, familyID, r.ContextSealed)
	}
	return out, err
}

// openContext opens a context sealed under a period key; expired reports
// that the key is gone (or that this instance keeps no period keys: the
// context retention was turned off since).
func (p *Protector) openContext(ctx context.Context, eventID, familyID, stored string) (_ domain.Context, expired bool, _ error) {
	if p.periods == nil {
		return nil, true, nil
	}
	sealed, err := pii.ParseSealed(stored)
	if err != nil {
		return nil, false, err
	}
	plain, gone, err := openPart(ctx, p.periods.KeyFor, eventID, familyID, sealed)
	if gone || err != nil {
		return nil, gone, err
	}
	var c domain.Context
	if err := json.Unmarshal(plain, &c); err != nil {
		return nil, false, fmt.Errorf("%w: %v", pii.ErrOpen, err)
	}
	return c, false, nil
}

// openPart opens a sealed part with the key keyFor finds for it; gone
// reports that the part has no key (written after an erasure) or that its
// key was destroyed: what it sealed is unreadable.
func openPart(ctx context.Context, keyFor func(context.Context, string) (pii.DataKey, error), eventID, familyID string, sealed pii.Sealed) (plain []byte, gone bool, _ error) {
	if sealed.K == "" {
		return nil, true, nil
	}
	key, err := keyFor(ctx, sealed.K)
	if errors.Is(err, pii.ErrNoKey) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	plain, err = pii.Open(key, eventID, familyID, sealed)
	return plain, false, err
}

// ErrSealedWithoutKey reports an event with sealed personal fields read by
// an instance without the deployment key: it cannot tell who the family
// belongs to, so it must not act on it.
var ErrSealedWithoutKey = errors.New("the event's personal fields are sealed, and tokend runs without --pii-key-file")

// sealDeployment seals the subject of a subject.revoked event under the
// subject's data key, as an event of its families is, and names it by its
// pseudonym, in its id too (derived from the subject in clear otherwise).
// A subject without a key (erased, or never seen) is named by its
// pseudonym alone.
func (p *Protector) sealDeployment(ctx context.Context, ev *DeploymentEvent) error {
	pseudonym := p.Pseudonym(ev.Subject)
	key, err := p.keys.DataKey(ctx, pseudonym, false)
	if err != nil && !errors.Is(err, pii.ErrNoKey) {
		return err
	}
	subject := ev.Subject
	ev.ID = SubjectRevokedEvent(pseudonym, ev.Reason, ev.RevokedFamilies, ev.Seq, ev.Time).ID
	ev.Subject, ev.PII = pseudonym, erasedPart()
	if err != nil { // no key
		return nil
	}
	plain, err := personal{Subject: subject}.encode()
	if err != nil {
		return err
	}
	ev.PII, err = sealSubjectPart(key, ev.ID, "", plain)
	return err
}

// RevealDeployment opens the subject of a subject.revoked event sealed by
// sealDeployment; erased reports that it is gone (Subject stays the
// pseudonym). Other events are left as they are.
func (p *Protector) RevealDeployment(ctx context.Context, ev *DeploymentEvent) (erased bool, err error) {
	r, err := p.OpenStored(ctx, ev.ID, "", ev.Subject, ev.PII)
	if err != nil {
		return false, fmt.Errorf("event %s: %w", ev.ID, err)
	}
	ev.Subject = r.Subject
	return r.Erased, nil
}
