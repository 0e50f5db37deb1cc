package signals

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
)

// TestSecretsFollowTheKeyring: with the deployment's keyring as tokend
// wires it (keys.Keyring.OnChange to Store.UseKeys), a promotion has the
// secrets sealed again under the new MAC key, so revoking the old one
// loses nothing; revoking the key they are sealed under loses them, and
// the stream is paused with ssf.stream_updated in the TOKENS stream.
func TestSecretsFollowTheKeyring(t *testing.T) {
	nc, js := eventstest.MustJS(t)
	ctx := context.Background()
	subjects := events.Subjects{Prefix: "tokens"}
	stream, err := events.Setup(ctx, js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keys.OpenKeyring(ctx, js, 1, keys.Lifetimes{Refresh: time.Hour, Access: time.Minute}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, js, Options{Replicas: 1, Keys: ring.Loaded(), Outbox: events.NewStore(nc, js, stream, subjects)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	if err := ring.OnChange(func(l *keys.LoadedKeys) error { s.UseKeys(l); return nil }); err != nil {
		t.Fatal(err)
	}
	st, err := s.Create(ctx, NewStream{Receiver: "rp-1", Request: StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := ring.Loaded().SealKey()

	if _, err := ring.Stage(ctx, 0); err != nil {
		t.Fatal(err)
	}
	promoted, err := ring.Promote(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	second, _, _ := promoted.SealKey()
	sealedUnder(t, js, st.ID, second)
	// This instance follows the bucket: it holds the entry sealed again
	// once its watch delivers it.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got, _ := s.Lookup(st.ID); got.Secrets.Authorization == nil || got.Secrets.Authorization.Kid != second {
			return fmt.Errorf("this instance holds the secret sealed under %+v, want %s", got.Secrets.Authorization, second)
		}
		return nil
	})
	if _, _, err := ring.Revoke(ctx, first, 0); err != nil {
		t.Fatal(err)
	}
	delivered := func() error {
		got, ok := s.Lookup(st.ID)
		if !ok {
			return errors.New("not seen")
		}
		sec, err := s.DeliverySecrets(got)
		if err != nil {
			return err
		}
		if sec.Authorization != push.AuthorizationHeader {
			return fmt.Errorf("opened %+v", sec)
		}
		return nil
	}
	if err := delivered(); err != nil {
		t.Fatalf("after the old key's revocation: %v", err)
	}

	if _, _, err := ring.Revoke(ctx, second, 0); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, err := s.Get(ctx, st.ID)
		if err != nil || got.Status != StatusPaused || got.Reason != ReasonSecretLost {
			return fmt.Errorf("%+v, %v", got, err)
		}
		return nil
	})
	msg, err := stream.GetLastMsgForSubject(ctx, subjects.SSF(st.ID))
	if err != nil {
		t.Fatalf("no stream-updated event: %v", err)
	}
	ev, err := events.DecodeDeployment(msg.Data, st.ID)
	if err != nil || ev.Type != events.SSFStreamUpdated || ev.Status != string(StatusPaused) || ev.Reason != ReasonSecretLost {
		t.Fatalf("stored %+v, %v", ev, err)
	}
	if err := delivered(); !errors.Is(err, ErrSecretLost) {
		t.Fatalf("after the current key's revocation: %v", err)
	}
}
