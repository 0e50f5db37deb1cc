package signals

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// testKeys are one keyset revision as SealingKeys, immutable like
// keys.LoadedKeys: a change makes a new value.
type testKeys struct {
	rev     uint64
	current string
	keys    map[string][]byte
}

func newTestKeys(t *testing.T) *testKeys {
	t.Helper()
	k := &testKeys{rev: 1, keys: map[string][]byte{}}
	k.current = k.add()
	return k
}

func (k *testKeys) add() string {
	var id [6]byte
	rand.Read(id[:])
	key := make([]byte, 32)
	rand.Read(key)
	kid := "mac-" + hex.EncodeToString(id[:])
	k.keys[kid] = key
	return kid
}

func (k *testKeys) next() *testKeys {
	return &testKeys{rev: k.rev + 1, current: k.current, keys: maps.Clone(k.keys)}
}

// promoted is k with a new current key, the old one still in effect
// (retired).
func (k *testKeys) promoted() *testKeys {
	n := k.next()
	n.current = n.add()
	return n
}

// without is k without key kid (expired, or revoked: revoking the current
// key makes a new one current).
func (k *testKeys) without(kid string) *testKeys {
	n := k.next()
	delete(n.keys, kid)
	if kid == n.current {
		n.current = n.add()
	}
	return n
}

func (k *testKeys) SealKey() (string, []byte, error) { return k.current, k.keys[k.current], nil }

func (k *testKeys) OpenKey(kid string) ([]byte, bool) {
	key, ok := k.keys[kid]
	return key, ok
}

func (k *testKeys) KeysetRevision() uint64 { return k.rev }

// whsec returns a Standard Webhooks secret made of the byte b.
func whsec(b byte) string {
	return WebhookSecretPrefix + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32))
}

func TestSealRoundTrip(t *testing.T) {
	k := newTestKeys(t)
	const id, other = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	sealed, err := seal(k, id, fieldAuthorization, "Bearer s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if sealed.Kid != k.current || sealed.KeysetRevision != 1 || bytes.Contains(sealed.Ciphertext, []byte("s3cret")) {
		t.Fatalf("sealed %+v", sealed)
	}
	if got, err := open(k, sealed, id, fieldAuthorization); err != nil || got != "Bearer s3cret" {
		t.Fatalf("opened %q, %v", got, err)
	}
	again, _ := seal(k, id, fieldAuthorization, "Bearer s3cret")
	if bytes.Equal(again.Nonce, sealed.Nonce) || bytes.Equal(again.Ciphertext, sealed.Ciphertext) {
		t.Fatal("two seals of one secret share their nonce")
	}

	// The additional data binds a sealed value to its stream and field.
	altered := sealed
	altered.Ciphertext = slices.Clone(sealed.Ciphertext)
	altered.Ciphertext[0] ^= 1
	for name, try := range map[string]func() (string, error){
		"another stream":   func() (string, error) { return open(k, sealed, other, fieldAuthorization) },
		"another field":    func() (string, error) { return open(k, sealed, id, webhookField("x")) },
		"an altered value": func() (string, error) { return open(k, altered, id, fieldAuthorization) },
		"a short nonce": func() (string, error) {
			s := sealed
			s.Nonce = s.Nonce[:4]
			return open(k, s, id, fieldAuthorization)
		},
	} {
		if got, err := try(); !errors.Is(err, ErrSecretLost) || got != "" {
			t.Errorf("%s: opened %q, %v", name, got, err)
		}
	}

	// A key this instance does not know: lost if it was revoked, not yet
	// known if it was sealed under a later keyset.
	gone := k.without(k.current)
	if _, err := open(gone, sealed, id, fieldAuthorization); !errors.Is(err, ErrSecretLost) {
		t.Fatalf("under a revoked key: %v", err)
	}
	later, _ := seal(gone.promoted(), id, fieldAuthorization, "x")
	if _, err := open(k, later, id, fieldAuthorization); domain.ErrorCode(err) != domain.EUnavailable || errors.Is(err, ErrSecretLost) {
		t.Fatalf("under a later keyset: %v", err)
	}
	if _, err := seal(nil, id, fieldAuthorization, "x"); domain.ErrorCode(err) != domain.EServerError {
		t.Fatalf("without keys: %v", err)
	}
}

func TestValidWebhookSecret(t *testing.T) {
	for _, ok := range []string{whsec(7), WebhookSecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, 24)),
		WebhookSecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, 64))} {
		if err := ValidWebhookSecret(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "whsec_", whsec(7)[6:], "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 23)),
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 65)), "whsec_!!!!", "WHSEC_" + whsec(7)[6:]} {
		err := ValidWebhookSecret(bad)
		if domain.ErrorCode(err) != domain.EInvalidRequest || (len(bad) > 8 && strings.Contains(err.Error(), bad[6:])) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

// outbox records deployment events; failing makes it refuse them.
type outbox struct {
	mu       sync.Mutex
	got      []events.DeploymentEvent
	attempts int
	failing  bool
}

func (o *outbox) AppendDeployment(_ context.Context, ev events.DeploymentEvent) (uint64, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.attempts++
	if o.failing {
		return 0, errors.New("stream full")
	}
	o.got = append(o.got, ev)
	return uint64(len(o.got)), nil
}

func (o *outbox) events() []events.DeploymentEvent {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.got)
}

func (o *outbox) setFailing(f bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failing = f
}

func (o *outbox) attempted() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.attempts
}

// sealedStore opens a store sealing with k, announcing to out.
func sealedStore(t *testing.T, js jetstream.JetStream, k SealingKeys, out Outbox, now func() time.Time) *Store {
	t.Helper()
	if now == nil {
		now = time.Now
	}
	s, err := Open(context.Background(), js, Options{Replicas: 1, Keys: k, Outbox: out, Now: now, RetryEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// rawEntry is stream id's entry in TOKENS_SSF_STREAMS, as stored.
func rawEntry(t *testing.T, js jetstream.JetStream, id string) (raw []byte, stored struct {
	Delivery Delivery      `json:"delivery"`
	Secrets  SealedSecrets `json:"secrets"`
	Status   Status        `json:"status"`
	Reason   string        `json:"reason"`
}) {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), Bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(e.Value(), &stored); err != nil {
		t.Fatal(err)
	}
	return e.Value(), stored
}

// noPlaintext fails if raw holds any of secrets, as text or in base64.
func noPlaintext(t *testing.T, raw []byte, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s)), base64.RawURLEncoding.EncodeToString([]byte(s))} {
			if bytes.Contains(raw, []byte(form)) {
				t.Fatalf("the stored entry holds a secret in the clear: %s", raw)
			}
		}
	}
}

func TestStoreSealsDeliverySecrets(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	k := newTestKeys(t)
	s := sealedStore(t, js, k, &outbox{}, nil)

	st, err := s.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	raw, stored := rawEntry(t, js, st.ID)
	noPlaintext(t, raw, "s3cret")
	if stored.Delivery.AuthorizationHeader != "" || stored.Secrets.Authorization == nil || stored.Secrets.Authorization.Kid != k.current {
		t.Fatalf("stored %s", raw)
	}
	// Reads never show it; the delivery opens it.
	got, err := s.Get(ctx, st.ID)
	if err != nil || got.Delivery.AuthorizationHeader != "" || st.Delivery.AuthorizationHeader != "" {
		t.Fatalf("read %+v, %v", got, err)
	}
	cfg, _ := json.Marshal(got.Config(Transmitter{Issuer: issuer}))
	if bytes.Contains(cfg, []byte("s3cret")) || bytes.Contains(cfg, []byte("authorization")) {
		t.Fatalf("the configuration shows the secret: %s", cfg)
	}
	if sec, err := s.DeliverySecrets(got); err != nil || sec.Authorization != push.AuthorizationHeader || sec.Webhook != nil {
		t.Fatalf("delivery secrets %+v, %v", sec, err)
	}

	// The header is write-only: an update keeps it, also one sending the
	// same push delivery back without it (as read), unless it asks to
	// remove it; another endpoint never inherits it; a header sent
	// replaces it.
	authorization := func(what string, r StreamRequest, replace bool, want string) {
		t.Helper()
		got, err := s.Update(ctx, st.ID, 0, func(x *Stream) (bool, error) {
			if replace {
				return true, x.Replace(r)
			}
			return true, x.Patch(r)
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if sec, err := s.DeliverySecrets(got); err != nil || sec.Authorization != want || got.HasAuthorization() != (want != "") {
			t.Fatalf("%s: the delivery sends %q, %v", what, sec.Authorization, err)
		}
	}
	same := &Delivery{Method: DeliveryPush, EndpointURL: push.EndpointURL}
	authorization("a description", StreamRequest{Description: ptr("d")}, false, push.AuthorizationHeader)
	authorization("the same delivery, read back", StreamRequest{Delivery: same}, false, push.AuthorizationHeader)
	authorization("the same delivery replaced", StreamRequest{Delivery: same}, true, push.AuthorizationHeader)
	authorization("a new header", StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: push.EndpointURL, AuthorizationHeader: "Bearer n3w"}},
		true, "Bearer n3w")
	raw, _ = rawEntry(t, js, st.ID)
	noPlaintext(t, raw, "n3w", "s3cret")
	authorization("an empty header", StreamRequest{Delivery: same, RemoveAuthorization: true}, false, "")
	authorization("a header again", StreamRequest{Delivery: push}, false, push.AuthorizationHeader)
	authorization("another endpoint", StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/other"}}, false, "")
	authorization("back to the first endpoint", StreamRequest{Delivery: same}, false, "")
	authorization("a header again", StreamRequest{Delivery: push}, false, push.AuthorizationHeader)
	authorization("poll", StreamRequest{Delivery: &Delivery{Method: DeliveryPoll}}, false, "")

	// A webhook's secret likewise.
	wh, err := s.Create(ctx, NewStream{CreatedBy: "alice", WebhookSecret: whsec(1),
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook"}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, stored = rawEntry(t, js, wh.ID)
	noPlaintext(t, raw, whsec(1), whsec(1)[len(WebhookSecretPrefix):], string(bytes.Repeat([]byte{1}, 32)))
	if len(stored.Secrets.Webhook) != 1 || stored.Secrets.Webhook[0].Ref != wh.Delivery.SecretRef {
		t.Fatalf("stored %s", raw)
	}
	if sec, err := s.DeliverySecrets(wh); err != nil || !slices.Equal(sec.Webhook, []string{whsec(1)}) || sec.Authorization != "" {
		t.Fatalf("webhook secrets %+v, %v", sec, err)
	}
	// Moved to another stream, a sealed value does not open.
	moved := wh
	moved.ID = st.ID
	if _, err := s.DeliverySecrets(moved); !errors.Is(err, ErrSecretLost) {
		t.Fatalf("a webhook secret on another stream: %v", err)
	}

	// Without keys, a secret cannot be stored at all.
	keyless, err := Open(ctx, js, Options{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer keyless.Stop()
	if _, err := keyless.Create(ctx, NewStream{Receiver: "rp-2", Request: StreamRequest{Delivery: push}}); domain.ErrorCode(err) != domain.EServerError {
		t.Fatalf("a secret without keys: %v", err)
	}
}

// sealedUnder waits until every secret of stream id is sealed under kid.
func sealedUnder(t *testing.T, js jetstream.JetStream, id, kid string) {
	t.Helper()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		raw, stored := rawEntry(t, js, id)
		kids := []string{}
		if a := stored.Secrets.Authorization; a != nil {
			kids = append(kids, a.Kid)
		}
		for _, w := range stored.Secrets.Webhook {
			kids = append(kids, w.Sealed.Kid)
		}
		if len(kids) == 0 || slices.ContainsFunc(kids, func(k string) bool { return k != kid }) {
			return fmt.Errorf("sealed under %v, waiting for %s: %s", kids, kid, raw)
		}
		return nil
	})
}

// TestStoreSealsAgainAfterARotation: a promotion has every secret sealed
// again under the new key, by one instance; so the old key's expiry or
// revocation loses nothing.
func TestStoreSealsAgainAfterARotation(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	k1 := newTestKeys(t)
	a, b := sealedStore(t, js, k1, &outbox{}, nil), sealedStore(t, js, k1, &outbox{}, nil)
	st, err := a.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	wh, err := a.Create(ctx, NewStream{CreatedBy: "alice", WebhookSecret: whsec(1),
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.RotateWebhookSecret(ctx, wh.ID, whsec(2), time.Hour); err != nil {
		t.Fatal(err)
	}

	k2 := k1.promoted()
	a.UseKeys(k2)
	b.UseKeys(k2)
	sealedUnder(t, js, st.ID, k2.current)
	sealedUnder(t, js, wh.ID, k2.current)
	kv, _ := js.KeyValue(ctx, Bucket)
	if h, err := kv.History(ctx, st.ID); err != nil || len(h) != 2 {
		t.Fatalf("the push stream has %d revisions, want 2 (created, sealed again once): %v", len(h), err)
	}

	// The old key expires (or is revoked): nothing was sealed under it.
	k3 := k2.without(k1.current)
	a.UseKeys(k3)
	b.UseKeys(k3)
	for _, s := range []*Store{a, b} {
		eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			got, ok := s.Lookup(st.ID)
			if !ok {
				return errors.New("not seen yet")
			}
			if sec, err := s.DeliverySecrets(got); err != nil || sec.Authorization != push.AuthorizationHeader {
				return fmt.Errorf("push: %+v, %v", sec, err)
			}
			hook, _ := s.Lookup(wh.ID)
			if sec, err := s.DeliverySecrets(hook); err != nil || !slices.Equal(sec.Webhook, []string{whsec(2), whsec(1)}) {
				return fmt.Errorf("webhook: %+v, %v", sec, err)
			}
			return nil
		})
	}
	if got, _ := a.Get(ctx, st.ID); got.Status != StatusEnabled || got.Secrets.Lost {
		t.Fatalf("after the old key went: %+v", got)
	}
}

// TestStoreLeavesNewerSecretsAlone: an instance that has not loaded the
// latest keyset neither seals back under its own key nor takes the
// unknown key for a revoked one.
func TestStoreLeavesNewerSecretsAlone(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	k1 := newTestKeys(t)
	k2 := k1.promoted()
	ahead := sealedStore(t, js, k2, &outbox{}, nil)
	behind := sealedStore(t, js, k1, &outbox{}, nil)
	st, err := ahead.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, ok := behind.Lookup(st.ID); !ok {
			return errors.New("not seen yet")
		}
		return nil
	})
	seen, _ := behind.Lookup(st.ID)
	if needsTending(seen, behind.sealingKeys()) || !behind.tendAll(ctx) {
		t.Fatal("an instance behind would tend a secret sealed under a later keyset")
	}
	if got, _ := behind.Get(ctx, st.ID); got.Revision != st.Revision {
		t.Fatal("an instance behind changed the stream")
	}
	if _, err := behind.DeliverySecrets(seen); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("opened behind: %v", err)
	}
}

// TestStoreLostSecretPausesTheStream: revoking the key a secret is sealed
// under loses it: the stream is paused with a reason, its receiver told
// first, until it sends its delivery again.
func TestStoreLostSecretPausesTheStream(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	k1 := newTestKeys(t)
	out := &outbox{}
	s := sealedStore(t, js, k1, out, nil)
	st, err := s.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	poll, err := s.Create(ctx, NewStream{Receiver: "rp-1"})
	if err != nil {
		t.Fatal(err)
	}
	wh, err := s.Create(ctx, NewStream{CreatedBy: "alice", WebhookSecret: whsec(1),
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, changed, err := s.SetStatus(ctx, wh.ID, 0, StatusDisabled, "not yet"); err != nil || !changed {
		t.Fatal(err)
	}

	// The announcement comes first: while it cannot be stored, nothing
	// changes.
	out.setFailing(true)
	s.UseKeys(k1.without(k1.current)) // the current key revoked: another is current
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := out.attempted(); n < 2 {
			return fmt.Errorf("%d attempts to announce", n)
		}
		return nil
	})
	if got, _ := s.Get(ctx, st.ID); got.Status != StatusEnabled {
		t.Fatalf("paused before its receiver was told: %+v", got)
	}
	out.setFailing(false)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, err := s.Get(ctx, st.ID)
		if err != nil || got.Status != StatusPaused || got.Reason != ReasonSecretLost || !got.Secrets.Lost || got.Secrets.Authorization != nil {
			return fmt.Errorf("%+v, %v", got, err)
		}
		return nil
	})
	evs := out.events()
	if len(evs) != 1 || evs[0].Type != events.SSFStreamUpdated || evs[0].StreamID != st.ID || evs[0].Status != "paused" ||
		evs[0].Reason != ReasonSecretLost {
		t.Fatalf("announced %+v", evs)
	}
	// The disabled webhook lost its secret too, and stays disabled,
	// unannounced; the poll stream had nothing to lose.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got, _ := s.Get(ctx, wh.ID); !got.Secrets.Lost || got.Status != StatusDisabled || len(got.Secrets.Webhook) != 0 {
			return fmt.Errorf("webhook %+v", got)
		}
		return nil
	})
	if got, _ := s.Get(ctx, poll.ID); got.Status != StatusEnabled || got.Revision != poll.Revision {
		t.Fatalf("the poll stream changed: %+v", got)
	}
	got, _ := s.Get(ctx, st.ID)
	if _, err := s.DeliverySecrets(got); !errors.Is(err, ErrSecretLost) {
		t.Fatalf("delivering a lost secret: %v", err)
	}
	if _, _, err := s.SetStatus(ctx, st.ID, 0, StatusEnabled, ""); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("resumed with its secret lost: %v", err)
	}
	if _, _, err := s.SetStatus(ctx, wh.ID, 0, StatusEnabled, ""); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("a webhook resumed with its secret lost: %v", err)
	}

	// The same delivery read back, without the header, does not give it.
	same := &Delivery{Method: DeliveryPush, EndpointURL: push.EndpointURL}
	if got, err := s.Update(ctx, st.ID, 0, func(x *Stream) (bool, error) { return true, x.Patch(StreamRequest{Delivery: same}) }); err != nil || !got.Secrets.Lost {
		t.Fatalf("the delivery read back: %+v, %v", got, err)
	}
	// The receiver sends its delivery again, and resumes.
	got, err = s.Update(ctx, st.ID, 0, func(x *Stream) (bool, error) { return true, x.Patch(StreamRequest{Delivery: push}) })
	if err != nil || got.Secrets.Lost {
		t.Fatalf("delivery sent again: %+v, %v", got, err)
	}
	if _, _, err := s.SetStatus(ctx, st.ID, 0, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get(ctx, st.ID)
	if sec, err := s.DeliverySecrets(got); err != nil || sec.Authorization != push.AuthorizationHeader {
		t.Fatalf("after the update: %+v, %v", sec, err)
	}
	// A rotation gives the webhook a secret again.
	if hook, err := s.RotateWebhookSecret(ctx, wh.ID, whsec(3), time.Hour); err != nil || hook.Secrets.Lost {
		t.Fatalf("rotated: %+v, %v", hook, err)
	}
	if _, _, err := s.SetStatus(ctx, wh.ID, 0, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
}

// TestStoreSealsPlaintextOfAnEarlierVersion: an authorization_header an
// earlier version stored in the clear is never shown, still delivered,
// and sealed at once.
func TestStoreSealsPlaintextOfAnEarlierVersion(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	const id = "00112233445566778899aabbccddeeff"
	var seen changes
	keyless, err := Open(ctx, js, Options{Replicas: 1, OnChange: seen.add})
	if err != nil {
		t.Fatal(err)
	}
	defer keyless.Stop()
	kv, _ := js.KeyValue(ctx, Bucket)
	if _, err := kv.Put(ctx, id, []byte(`{"stream_id":"`+id+`","status":"enabled","receiver":"rp-1","aud":["rp-1"],`+
		`"delivery":{"method":"urn:ietf:rfc:8935","endpoint_url":"https://rp.example/ssf","authorization_header":"Bearer 0ld"}}`)); err != nil {
		t.Fatal(err)
	}
	// Before it is sealed (a store without keys cannot), it is delivered
	// but never shown.
	plain, err := keyless.Get(ctx, id)
	if err != nil || plain.Delivery.AuthorizationHeader != "" {
		t.Fatalf("read %+v, %v", plain, err)
	}
	if sec, err := keyless.DeliverySecrets(plain); err != nil || sec.Authorization != "Bearer 0ld" {
		t.Fatalf("delivery secrets %+v, %v", sec, err)
	}

	// A store with keys seals it at once.
	k := newTestKeys(t)
	s := sealedStore(t, js, k, &outbox{}, nil)
	sealedUnder(t, js, id, k.current)
	raw, _ := rawEntry(t, js, id)
	noPlaintext(t, raw, "0ld")
	// Nor is it left in the bucket's history.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		history, err := kv.History(ctx, id)
		if err != nil {
			return err
		}
		for _, e := range history {
			if bytes.Contains(e.Value(), []byte("0ld")) {
				return fmt.Errorf("revision %d holds it in the clear", e.Revision())
			}
		}
		return nil
	})
	// Dropping that history (a rollup) is no deletion of the stream.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got, ok := s.Lookup(id); !ok || got.Secrets.Authorization == nil {
			return fmt.Errorf("held %+v, %v", got, ok)
		}
		return nil
	})
	seen.await(t, 2) // the entry as written, then sealed
	seen.mu.Lock()
	defer seen.mu.Unlock()
	for _, ch := range seen.got {
		if ch.Deleted {
			t.Fatalf("an instance saw the stream deleted: %+v", seen.got)
		}
	}
	got, err := s.Get(ctx, id)
	if err != nil || got.Delivery.AuthorizationHeader != "" || got.Revision == plain.Revision {
		t.Fatalf("read %+v, %v", got, err)
	}
	if sec, err := s.DeliverySecrets(got); err != nil || sec.Authorization != "Bearer 0ld" {
		t.Fatalf("delivery secrets %+v, %v", sec, err)
	}
}

// manualClock is a clock a test moves.
type manualClock struct{ at atomic.Int64 }

func (c *manualClock) now() time.Time      { return time.Unix(0, c.at.Load()) }
func (c *manualClock) set(t time.Time)     { c.at.Store(t.UnixNano()) }
func (c *manualClock) add(d time.Duration) { c.at.Add(int64(d)) }

func TestWebhookSecretRotation(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	var clk manualClock
	clk.set(at)
	s := sealedStore(t, js, newTestKeys(t), &outbox{}, clk.now)
	wh, err := s.Create(ctx, NewStream{CreatedBy: "alice", WebhookSecret: whsec(1),
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook"}}})
	if err != nil {
		t.Fatal(err)
	}
	secrets := func(st Stream) []string {
		t.Helper()
		sec, err := s.DeliverySecrets(st)
		if err != nil {
			t.Fatal(err)
		}
		return sec.Webhook
	}
	first := wh.Delivery.SecretRef
	wh, err = s.RotateWebhookSecret(ctx, wh.ID, whsec(2), time.Hour)
	if err != nil || wh.Delivery.SecretRef == first || !slices.Equal(secrets(wh), []string{whsec(2), whsec(1)}) {
		t.Fatalf("rotated with an hour's overlap: %+v, %v", wh, err)
	}
	clk.add(time.Hour)
	if got := secrets(wh); !slices.Equal(got, []string{whsec(2)}) {
		t.Fatalf("after the overlap: %d secrets", len(got))
	}
	// The next write drops what stopped signing.
	wh, err = s.RotateWebhookSecret(ctx, wh.ID, whsec(3), 0)
	if err != nil || len(wh.Secrets.Webhook) != 1 || !slices.Equal(secrets(wh), []string{whsec(3)}) {
		t.Fatalf("rotated without an overlap: %+v, %v", wh, err)
	}
	for i := range MaxWebhookSecrets - 1 {
		if _, err := s.RotateWebhookSecret(ctx, wh.ID, whsec(byte(10+i)), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RotateWebhookSecret(ctx, wh.ID, whsec(99), time.Hour); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("secret %d at once: %v", MaxWebhookSecrets+1, err)
	}
	for name, try := range map[string]func() error{
		"a bad secret":     func() error { _, err := s.RotateWebhookSecret(ctx, wh.ID, "s3cret", 0); return err },
		"a negative grace": func() error { _, err := s.RotateWebhookSecret(ctx, wh.ID, whsec(4), -time.Second); return err },
		"a push stream": func() error {
			st, err := s.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push}})
			if err != nil {
				return err
			}
			_, err = s.RotateWebhookSecret(ctx, st.ID, whsec(4), 0)
			return err
		},
	} {
		if err := try(); domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestChangeStatusAnnouncesFirst: a status change the receiver did not
// ask for appends ssf.stream_updated, then changes; if the event cannot
// be stored, nothing changes.
func TestChangeStatusAnnouncesFirst(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	out := &outbox{}
	s := sealedStore(t, js, newTestKeys(t), out, nil)
	st, err := s.Create(ctx, NewStream{Receiver: "rp-1"})
	if err != nil {
		t.Fatal(err)
	}
	out.setFailing(true)
	if _, changed, err := s.ChangeStatus(ctx, st.ID, StatusPaused, "maintenance"); changed || domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("with the outbox failing: %v, %v", changed, err)
	}
	if got, _ := s.Get(ctx, st.ID); got.Status != StatusEnabled {
		t.Fatal("paused without its announcement")
	}
	out.setFailing(false)
	paused, changed, err := s.ChangeStatus(ctx, st.ID, StatusPaused, "maintenance")
	if err != nil || !changed || paused.Status != StatusPaused || paused.Reason != "maintenance" {
		t.Fatalf("paused %+v, %v, %v", paused, changed, err)
	}
	want := events.StreamUpdatedEvent(st.ID, "paused", "maintenance", st.Revision, time.Time{})
	if evs := out.events(); len(evs) != 1 || evs[0].ID != want.ID || evs[0].Status != "paused" || evs[0].Reason != "maintenance" {
		t.Fatalf("announced %+v", evs)
	}
	if _, changed, err := s.ChangeStatus(ctx, st.ID, StatusPaused, "maintenance"); changed || err != nil || len(out.events()) != 1 {
		t.Fatalf("pausing again: %v, %v, %d events", changed, err, len(out.events()))
	}
	if _, _, err := s.ChangeStatus(ctx, st.ID, "on", ""); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("a bad status: %v", err)
	}
	if _, _, err := s.ChangeStatus(ctx, "00000000000000000000000000000000", StatusPaused, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("no such stream: %v", err)
	}
	noOutbox, err := Open(ctx, js, Options{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer noOutbox.Stop()
	if _, _, err := noOutbox.ChangeStatus(ctx, st.ID, StatusEnabled, ""); domain.ErrorCode(err) != domain.EServerError {
		t.Fatalf("without an outbox: %v", err)
	}
}

// TestPreviousWebhookSecretLostAlone: a webhook secret in a rotation's
// overlap whose key is gone is dropped; only the current one's loss stops
// the webhook.
func TestPreviousWebhookSecretLostAlone(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	k1 := newTestKeys(t)
	k2 := k1.promoted()
	previous, _ := seal(k1, id, webhookField("a"), whsec(1))
	current, _ := seal(k2, id, webhookField("b"), whsec(2))
	s := &Store{now: time.Now}
	st := Stream{ID: id, Status: StatusEnabled, Secrets: SealedSecrets{Webhook: []WebhookSecret{
		{Ref: "b", Sealed: current}, {Ref: "a", Sealed: previous, ExpiresAt: time.Now().Add(time.Hour)}}}}

	gone := k2.without(k1.current)
	if !needsTending(st, gone) {
		t.Fatal("a secret under a key gone needs no tending")
	}
	kept := st
	lost, err := s.sealAgain(&kept, gone)
	if err != nil || lost != nil || len(kept.Secrets.Webhook) != 1 || kept.Secrets.Webhook[0].Ref != "b" {
		t.Fatalf("the previous secret lost: %v, %v, %+v", lost, err, kept.Secrets)
	}

	both := st
	lost, err = s.sealAgain(&both, k2.without(k2.current))
	if err != nil || !errors.Is(lost, ErrSecretLost) || len(both.Secrets.Webhook) != 0 {
		t.Fatalf("the current secret lost: %v, %v, %+v", lost, err, both.Secrets)
	}
}
