package signals

import (
	"context"
	"errors"
	"slices"
	"time"
)

// Tending the delivery secrets: every instance, when its keys change
// (UseKeys) and when it sees a stream that needs it (apply), seals again
// under the current MAC key the secrets sealed under another one, seals
// those an earlier version stored in the clear, and pauses, telling its
// receiver, a stream whose secret was lost with a revoked key. Changes
// are compare-and-set, so with several instances one of them does each;
// an instance that has not loaded the latest keyset leaves the secrets
// sealed under it alone.

// tendTimeout bounds one round of tending.
const tendTimeout = 30 * time.Second

// wakeTending has the tending loop run a round; it never blocks.
func (s *Store) wakeTending() {
	select {
	case s.tend <- struct{}{}:
	default: // a round is due already, and will see this
	}
}

// tendLoop runs a round each time it is woken, and again after
// retryEvery while a round fails, until ctx ends.
func (s *Store) tendLoop(ctx context.Context) {
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.tend:
		case <-retry:
		}
		retry = nil
		if !s.tendAll(ctx) {
			retry = time.After(s.retryEvery)
		}
	}
}

// tendAll tends every stream this instance holds that needs it, and
// reports whether all went well.
func (s *Store) tendAll(ctx context.Context) bool {
	k := s.sealingKeys()
	ctx, cancel := context.WithTimeout(ctx, tendTimeout)
	defer cancel()
	ok := true
	for _, st := range s.Streams() {
		if !needsTending(st, k) {
			continue
		}
		if err := s.tendStream(ctx, st.ID, k); err != nil {
			s.log.Warn("SSF stream's delivery secret not sealed again yet, retrying", "stream", st.ID, "err", err)
			ok = false
		}
	}
	return ok
}

// needsTending reports whether st holds a secret in the clear, one sealed
// under a key k does not seal with (unless sealed under a keyset k
// predates), or has lost a secret and is still enabled.
func needsTending(st Stream, k SealingKeys) bool {
	if k == nil {
		return false
	}
	if st.plainAuthorization != "" || (st.Secrets.Lost && st.Status == StatusEnabled) {
		return true
	}
	kid, _, err := k.SealKey()
	if err != nil {
		return false
	}
	stale := func(sealed Sealed) bool { return sealed.Kid != kid && sealed.KeysetRevision <= k.KeysetRevision() }
	if a := st.Secrets.Authorization; a != nil && stale(*a) {
		return true
	}
	return slices.ContainsFunc(st.Secrets.Webhook, func(w WebhookSecret) bool { return stale(w.Sealed) })
}

// tendStream tends stream id with keys k.
func (s *Store) tendStream(ctx context.Context, id string, k SealingKeys) error {
	for range changeAttempts {
		cur, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !needsTending(cur, k) {
			return nil // another instance did it
		}
		next := cur
		lost, err := s.sealAgain(&next, k)
		if err != nil {
			return err
		}
		if lost != nil {
			next.Secrets.Lost = true
			s.log.Error("SSF stream's delivery secret lost: the MAC key it was sealed under is gone (revoked); the receiver must send it again",
				"stream", id, "receiver", cur.Receiver, "err", lost)
		}
		if next.Secrets.Lost && next.Status == StatusEnabled {
			next.Status, next.Reason = StatusPaused, ReasonSecretLost
			if err := s.announce(ctx, cur, next); err != nil {
				return err
			}
			next.UpdatedAt = s.now().UTC()
		}
		if _, conflict, err := s.write(ctx, cur, next); !conflict {
			return err
		}
	}
	return keptChanging()
}

// sealAgain seals st's secrets under k's current key, and drops those
// that no longer open; lost is why the authorization_header or a
// webhook's current secret did not (nil if they did: a previous webhook
// secret, in a rotation's overlap, is dropped without a word). Secrets
// sealed under a later keyset than k are kept as they are.
func (s *Store) sealAgain(st *Stream, k SealingKeys) (lost error, _ error) {
	kid, _, err := k.SealKey()
	if err != nil {
		return nil, err
	}
	var why error // why the secret again last dropped did not open
	// again returns sealed, sealed under kid; nil if it is lost.
	again := func(sealed Sealed, field string) (*Sealed, error) {
		if sealed.Kid == kid || sealed.KeysetRevision > k.KeysetRevision() {
			return &sealed, nil
		}
		plain, err := open(k, sealed, st.ID, field)
		if errors.Is(err, ErrSecretLost) {
			why = err
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		resealed, err := seal(k, st.ID, field, plain)
		return &resealed, err
	}
	if a := st.Secrets.Authorization; a != nil {
		if st.Secrets.Authorization, err = again(*a, fieldAuthorization); err != nil {
			return nil, err
		}
		if st.Secrets.Authorization == nil {
			lost = why
		}
	}
	now := s.now()
	webhook := make([]WebhookSecret, 0, len(st.Secrets.Webhook))
	for i, w := range st.Secrets.Webhook {
		if !w.live(now) {
			continue
		}
		sealed, err := again(w.Sealed, webhookField(w.Ref))
		if err != nil {
			return nil, err
		}
		if sealed == nil {
			if i == 0 {
				lost = why
			}
			continue
		}
		w.Sealed = *sealed
		webhook = append(webhook, w)
	}
	st.Secrets.Webhook = webhook
	if lost != nil {
		st.Secrets.Webhook = nil // the previous secrets are not to sign alone
	}
	return lost, nil
}
