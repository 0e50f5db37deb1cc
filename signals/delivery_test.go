package signals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

func TestPushDeliversASessionRevokedSET(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	rc := newReceiver(t)
	st := in.pushStream(t, "web-app", rc)

	txn := d.revoked("web-app")
	got := rc.await(t, 1)[0]
	// RFC 8935 section 2.1.
	for h, want := range map[string]string{"Content-Type": "application/secevent+jwt", "Accept": "application/json",
		"Authorization": "Bearer rcv-web-app"} {
		if v := got.header.Get(h); v != want {
			t.Errorf("%s: %q, want %q", h, v, want)
		}
	}
	c := verifySET(t, string(got.body), "web-app")
	if c.Txn != txn || c.ID != JTI(st.ID, txn, TypeSessionRevoked) {
		t.Errorf("txn %q jti %q, want the event's id %q and JTI", c.Txn, c.ID, txn)
	}
	var revoked SessionRevoked
	if err := json.Unmarshal(c.Events[TypeSessionRevoked], &revoked); err != nil || revoked.TokendReason != domain.ReasonRevoked {
		t.Errorf("events %s: %+v, %v", c.Events, revoked, err)
	}
	if c.SubID["format"] != FormatComplex || c.SubID["session"] == nil {
		t.Errorf("sub_id %v", c.SubID)
	}

	// Acknowledged once taken, and counted.
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := d.consumerState(st.ID)
		if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("consumer %+v, %v", info, err)
		}
		return nil
	})
	if n := in.metrics.get(func(m *metrics) int { return m.delivered[st.ID] }); n != 1 {
		t.Errorf("delivered %d, want 1", n)
	}
	// Design item 7: one durable consumer, its subjects, from the
	// stream's creation, a window of messages to the pinned instance.
	info, _ := d.consumerState(st.ID)
	cfg := info.Config
	if !slices.Equal(cfg.FilterSubjects, []string{"tokens.evt.*", "tokens.ops.*", "tokens.ssf." + st.ID}) ||
		cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.MaxAckPending != deliverWindow || cfg.PriorityPolicy != jetstream.PriorityPolicyPinned ||
		!slices.Equal(cfg.PriorityGroups, []string{pinGroup}) || cfg.PinnedTTL != 2*time.Second ||
		cfg.DeliverPolicy != jetstream.DeliverByStartTimePolicy || cfg.OptStartTime == nil || !cfg.OptStartTime.Equal(st.CreatedAt) {
		t.Errorf("consumer configuration %+v", cfg)
	}
}

func TestPushHonoursRetryAfter(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", func(o *EngineOptions) { o.MaxBackoff = 10 * time.Second })
	rc := newReceiver(t)
	rc.setAnswer(func(n int, _ request) (int, http.Header, string) {
		if n == 0 {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}}, ""
		}
		return http.StatusAccepted, nil, ""
	})
	st := in.pushStream(t, "web-app", rc)

	d.revoked("web-app")
	reqs := rc.await(t, 2)
	if a, b := jtiOf(t, reqs[0]), jtiOf(t, reqs[1]); a != b {
		t.Fatalf("the retry carries %s, the first attempt %s", b, a)
	}
	// Without Retry-After the wait would be MinBackoff (20 ms).
	if gap := reqs[1].at.Sub(reqs[0].at); gap < 900*time.Millisecond {
		t.Errorf("retried after %v, before Retry-After's second", gap)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		return in.metrics.expect(st.ID, 1, 0, 1)
	})
}

// expect checks a stream's delivered, failed and retried counts.
func (m *metrics) expect(stream string, delivered, failed, retried int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.delivered[stream] != delivered || m.failed[stream] != failed || m.retried[stream] != retried {
		return fmt.Errorf("delivered %d failed %d retried %d, want %d %d %d",
			m.delivered[stream], m.failed[stream], m.retried[stream], delivered, failed, retried)
	}
	return nil
}

func TestPushErrorCodes(t *testing.T) {
	d := newDeployment(t)
	in := d.start("a", nil)
	tests := []struct {
		err    string // the receiver's RFC 8935 err; "" for a 400 without one
		giveUp bool
	}{
		{errInvalidRequest, true},
		{errInvalidState, true},
		{errInvalidKey, false},
		{errInvalidIssuer, false},
		{errInvalidAudience, false},
		{errAuthenticationFailed, false},
		{errAccessDenied, false},
		{"", false},
	}
	receivers := make([]*receiver, len(tests))
	streams := make([]Stream, len(tests))
	for i, tc := range tests {
		client := fmt.Sprintf("siem-%d", i)
		d.register(client, domain.ReceiverAll)
		receivers[i] = newReceiver(t)
		receivers[i].setAnswer(func(n int, _ request) (int, http.Header, string) {
			switch {
			case n > 0:
				return http.StatusAccepted, nil, ""
			case tc.err == "":
				return http.StatusBadRequest, nil, "bad request"
			}
			return http.StatusBadRequest, http.Header{"Content-Type": {"application/json"}},
				fmt.Sprintf(`{"err":%q,"description":"refused by the test"}`, tc.err)
		})
		streams[i] = in.pushStream(t, client, receivers[i])
	}
	first, second := d.revoked("web-app"), d.revoked("web-app")
	for i, tc := range tests {
		t.Run(tc.err, func(t *testing.T) {
			st := streams[i]
			want := []string{JTI(st.ID, first, TypeSessionRevoked), JTI(st.ID, second, TypeSessionRevoked)}
			if tc.giveUp {
				want = want[1:] // the refused SET is never sent again: the next one follows
			}
			got := receivers[i].awaitAccepted(t, len(want))
			if !slices.Equal(got, want) {
				t.Errorf("accepted %v, want %v", got, want)
			}
			failed, retried := 0, 1
			if tc.giveUp {
				failed, retried = 1, 0
			}
			eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				return in.metrics.expect(st.ID, len(want), failed, retried)
			})
			d.awaitLeft(t, st.ID, 0)
			if n := len(receivers[i].requests()); n != len(want)+1 {
				t.Errorf("%d requests, want %d", n, len(want)+1)
			}
		})
	}
}

func TestPausedStreamHoldsEventsUntilEnabled(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	d.register("siem", domain.ReceiverAll)
	in := d.start("a", nil)
	rc, witness := newReceiver(t), newReceiver(t)
	st := in.pushStream(t, "web-app", rc)
	in.pushStream(t, "siem", witness)

	// Paused by its receiver: nothing to announce, held at once.
	if _, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusPaused, ""); err != nil {
		t.Fatal(err)
	}
	awaitStatus(t, in, st.ID, StatusPaused)
	txns := []string{d.revoked("web-app"), d.revoked("web-app")}
	witness.awaitAccepted(t, 2) // the engine is delivering
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := d.consumerState(st.ID)
		if err != nil || info.NumPending+uint64(info.NumAckPending) != 2 {
			return fmt.Errorf("consumer %+v, %v", info, err)
		}
		in.metrics.mu.Lock()
		defer in.metrics.mu.Unlock()
		if lag := in.metrics.lag[st.ID]; lag[0] != 2 || lag[1] <= 0 {
			return fmt.Errorf("lag %v, want 2 events of some age", lag)
		}
		return nil
	})
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("a paused stream sent %d requests", n)
	}

	if _, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	want := []string{JTI(st.ID, txns[0], TypeSessionRevoked), JTI(st.ID, txns[1], TypeSessionRevoked)}
	if got := rc.awaitAccepted(t, 2); !slices.Equal(got, want) {
		t.Errorf("after enabling: %v, want the held events in order %v", got, want)
	}
}

// awaitStatus waits until in's engine serves stream id with status.
func awaitStatus(t *testing.T, in *instance, id string, status Status) {
	t.Helper()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		in.metrics.mu.Lock()
		defer in.metrics.mu.Unlock()
		if got := in.metrics.status[id]; got != string(status) {
			return fmt.Errorf("status %q, want %q", got, status)
		}
		return nil
	})
}

// An operator's (or the transmitter's) pause is announced with a stream
// updated event before it takes effect (SSF 1.0 section 8.1.5): the
// events before the announcement and the announcement are delivered, the
// later ones held.
func TestAnnouncedPauseDeliversUpToTheAnnouncement(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	rc := newReceiver(t)
	failing := true
	rc.setAnswer(func(int, request) (int, http.Header, string) {
		if failing {
			return http.StatusServiceUnavailable, nil, ""
		}
		return http.StatusAccepted, nil, ""
	})
	st := in.pushStream(t, "web-app", rc)

	before := d.revoked("web-app")
	rc.await(t, 1) // being retried
	announced := d.deploymentEvent(events.StreamUpdatedEvent(st.ID, string(StatusPaused), "maintenance", st.Revision+1, time.Now()))
	if _, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusPaused, "maintenance"); err != nil {
		t.Fatal(err)
	}
	after := d.revoked("web-app")
	awaitStatus(t, in, st.ID, StatusPaused)
	rc.mu.Lock()
	failing = false
	rc.mu.Unlock()

	want := []string{JTI(st.ID, before, TypeSessionRevoked), JTI(st.ID, announced, TypeStreamUpdated)}
	if got := rc.awaitAccepted(t, 2); !slices.Equal(got, want) {
		t.Fatalf("accepted %v, want the event before the pause, then the announcement %v", got, want)
	}
	// Everything up to the announcement acknowledged, the event after
	// it not (held, or fetched and handed back).
	d.awaitLeft(t, st.ID, 1)
	if got := rc.accepted(t); len(got) != 2 {
		t.Fatalf("a paused stream delivered past its announcement: %v", got)
	}

	if _, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	if got := rc.awaitAccepted(t, 3); got[2] != JTI(st.ID, after, TypeSessionRevoked) {
		t.Errorf("after enabling: %v, want the held event last", got)
	}
}

func TestDisabledStreamDropsEvents(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	rc := newReceiver(t)
	st := in.pushStream(t, "web-app", rc)

	first := d.revoked("web-app")
	rc.awaitAccepted(t, 1)
	if _, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusDisabled, ""); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := d.consumerState(st.ID); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("consumer of a disabled stream: %v", err)
		}
		return nil
	})
	d.revoked("web-app") // while disabled: never delivered
	if _, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := d.consumerState(st.ID)
		return err
	})
	last := d.revoked("web-app")
	want := []string{JTI(st.ID, first, TypeSessionRevoked), JTI(st.ID, last, TypeSessionRevoked)}
	if got := rc.awaitAccepted(t, 2); !slices.Equal(got, want) {
		t.Errorf("accepted %v, want %v: nothing from while it was disabled", got, want)
	}
}

func TestReceiversSeeOnlyWhatTheyMay(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	d.register("siem", domain.ReceiverAll)
	d.register("gone-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	own, all, gone := newReceiver(t), newReceiver(t), newReceiver(t)
	ownSt, allSt, goneSt := in.pushStream(t, "web-app", own), in.pushStream(t, "siem", all), in.pushStream(t, "gone-app", gone)
	d.register("gone-app", domain.ReceiverNone) // no longer a receiver

	mine := d.revoked("web-app")
	others := d.revoked("other-app")
	goneOwn := d.revoked("gone-app")
	userWide := d.deploymentEvent(events.SubjectRevokedEvent("user-42", "user_disabled", 3, 10, time.Now()))
	key := d.deploymentEvent(events.KeyRevokedEvent("k-1", "mac", "leaked", "ops", 7, time.Now()))
	clientWide := d.deploymentEvent(events.ClientRevokedEvent("web-app", "compromised", 5, 11, time.Now()))

	jtis := func(st Stream, txns ...[2]string) []string {
		var out []string
		for _, x := range txns {
			out = append(out, JTI(st.ID, x[0], x[1]))
		}
		return out
	}
	session := func(txn string) [2]string { return [2]string{txn, TypeSessionRevoked} }
	wantAll := jtis(allSt, session(mine), session(others), session(goneOwn), session(userWide), [2]string{key, TypeKeyRevoked}, session(clientWide))
	if got := all.awaitAccepted(t, len(wantAll)); !slices.Equal(got, wantAll) {
		t.Errorf("a receiver of all events got %v, want %v", got, wantAll)
	}
	// own: its client's sessions and revocation, and a key revoked (every
	// receiver's); not another client's, nor a user's sessions with every
	// client.
	wantOwn := jtis(ownSt, session(mine), [2]string{key, TypeKeyRevoked}, session(clientWide))
	if got := own.awaitAccepted(t, len(wantOwn)); !slices.Equal(got, wantOwn) {
		t.Errorf("an own receiver got %v, want %v", got, wantOwn)
	}
	d.awaitLeft(t, goneSt.ID, 0)
	if n := len(gone.requests()); n != 0 {
		t.Errorf("a client that is no longer a receiver got %d requests", n)
	}
	if n := len(own.requests()); n != len(wantOwn) {
		t.Errorf("an own receiver got %d requests, want %d", n, len(wantOwn))
	}
}

func TestOneInstanceDeliversAStreamAndAnotherTakesOver(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	instances := map[string]*instance{"a": d.start("a", nil), "b": d.start("b", nil)}
	rc := newReceiver(t)
	st := instances["a"].pushStream(t, "web-app", rc)

	for range 10 {
		d.revoked("web-app")
	}
	reqs := rc.await(t, 10)
	by := reqs[0].header.Get("X-Test-Instance")
	for _, r := range reqs {
		if got := r.header.Get("X-Test-Instance"); got != by {
			t.Fatalf("both %s and %s delivered the stream", by, got)
		}
	}
	// Stopped when idle (a request in flight would be cancelled, and its
	// SET sent again by the next instance: a duplicate the jti tells).
	d.awaitLeft(t, st.ID, 0)
	pinned := func() string {
		info, err := d.consumerState(st.ID)
		if err != nil || len(info.PriorityGroups) != 1 {
			t.Fatalf("consumer %+v, %v", info, err)
		}
		return info.PriorityGroups[0].PinnedClientID
	}
	before := pinned()
	instances[by].engine.Stop()
	instances[by].store.Stop()
	// A clean stop hands the stream over at once, not after PinnedTTL.
	if after := pinned(); after == before {
		t.Errorf("still pinned to the stopped instance (%s)", before)
	}

	for range 10 {
		d.revoked("web-app")
	}
	reqs = rc.await(t, 20)
	seen := map[string]bool{}
	for i, r := range reqs {
		jti := jtiOf(t, r)
		if seen[jti] {
			t.Errorf("%s delivered twice", jti)
		}
		seen[jti] = true
		if i >= 10 && r.header.Get("X-Test-Instance") == by {
			t.Errorf("request %d came from the stopped instance %s", i, by)
		}
	}
	if len(reqs) != 20 {
		t.Errorf("%d requests, want 20", len(reqs))
	}
}

func TestConsumerFollowsTheStream(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	// A consumer left by a stream deleted while no instance ran.
	stream, err := d.js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	orphan := "00000000000000000000000000000001"
	if _, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: ConsumerName(orphan), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	in := d.start("a", nil)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := d.consumerState(orphan); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("orphan consumer: %v", err)
		}
		return nil
	})

	rc := newReceiver(t)
	st := in.pushStream(t, "web-app", rc)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := d.consumerState(st.ID)
		return err
	})
	poll := Delivery{Method: DeliveryPoll}
	if _, err := in.store.Update(ctx, st.ID, 0, func(s *Stream) (bool, error) {
		return true, s.Patch(StreamRequest{Delivery: &poll})
	}); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := d.consumerState(st.ID)
		if err != nil || info.Config.PriorityPolicy != jetstream.PriorityPolicyNone || len(info.Config.PriorityGroups) != 0 ||
			info.Config.MaxAckPending != pollMaxAckPending || info.Config.AckWait != time.Second {
			return fmt.Errorf("a polled stream's consumer: %+v, %v", info, err)
		}
		return nil
	})
	if err := in.store.Delete(ctx, st.ID, 0); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := d.consumerState(st.ID); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("consumer of a deleted stream: %v", err)
		}
		if in.metrics.get(func(m *metrics) int { return len(m.forgotten) }) != 1 {
			return errors.New("its metrics are still reported")
		}
		return nil
	})
}

func TestBackoff(t *testing.T) {
	e := NewEngine(EngineOptions{MinBackoff: time.Second, MaxBackoff: 5 * time.Minute})
	for n, ceiling := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		for range 20 {
			if d := e.backoff(n, 0); d < ceiling/2 || d > ceiling {
				t.Errorf("attempt %d: %v, want within [%v, %v]", n+2, d, ceiling/2, ceiling)
			}
		}
	}
	for _, n := range []int{9, 20, 63, 1000} {
		if d := e.backoff(n, 0); d < 150*time.Second || d > 5*time.Minute {
			t.Errorf("attempt %d: %v, want the cap with jitter", n+2, d)
		}
	}
	if d := e.backoff(0, time.Minute); d != time.Minute {
		t.Errorf("with Retry-After 60: %v", d)
	}
	if d := e.backoff(0, time.Hour); d != 5*time.Minute {
		t.Errorf("with Retry-After 3600: %v, want the cap", d)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "7": 7 * time.Second, " 7 ": 7 * time.Second, "-1": 0, "soon": 0,
		"Sun, 01 Nov 2026 10:00:30 GMT": 30 * time.Second, "Sun, 01 Nov 2026 09:00:00 GMT": 0,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
}

func TestVisible(t *testing.T) {
	own := domain.Client{ID: "web-app", Receiver: domain.ReceiverOwn}
	all := domain.Client{ID: "siem", Receiver: domain.ReceiverAll}
	none := domain.Client{ID: "web-app"}
	tests := []struct {
		name           string
		v              Visibility
		own, all, none bool
	}{
		{"its own client's sessions", Visibility{Client: "web-app"}, true, true, false},
		{"another client's sessions", Visibility{Client: "other-app"}, false, true, false},
		{"a key revoked", Visibility{Deployment: true}, true, true, false},
		{"a user's sessions with every client", Visibility{}, false, true, false},
		{"addressed to a stream", Visibility{Stream: "s"}, true, true, false},
	}
	for _, tc := range tests {
		sig := Signal{Visibility: tc.v}
		if Visible(own, sig) != tc.own || Visible(all, sig) != tc.all || Visible(none, sig) != tc.none {
			t.Errorf("%s: own %v all %v not a receiver %v", tc.name, Visible(own, sig), Visible(all, sig), Visible(none, sig))
		}
	}
}

// A stream disabled and enabled again while an instance was not looking
// (it saw only the result) still starts again from the moment it was
// enabled: the consumer it finds is from before, and goes.
func TestEnabledAgainStartsFromThen(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	rc := newReceiver(t)
	st := in.pushStream(t, "web-app", rc)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := d.consumerState(st.ID)
		return err
	})

	// Another engine, told of the changes before it starts.
	js, err := jetstream.New(eventstest.MustConnect(t, d.url))
	if err != nil {
		t.Fatal(err)
	}
	late := NewEngine(EngineOptions{JS: js, Subjects: d.subjects, Mapper: Mapper{Issuer: issuer},
		Signer: testSigner{kid: setKID, key: mustRSAKey(t)}, Receivers: d.lookup})
	disabled, enabled := st, st
	disabled.Status = StatusDisabled
	enabled.UpdatedAt = st.CreatedAt.Add(time.Minute).Truncate(time.Millisecond)
	late.Changed(StreamChange{Stream: st})
	late.Changed(StreamChange{Stream: disabled, Previous: &st})
	late.Changed(StreamChange{Stream: enabled, Previous: &disabled})
	in.engine.Stop() // the first instance leaves the consumer as it is
	if err := late.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(late.Stop)
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := d.consumerState(st.ID)
		if err != nil || info.Config.OptStartTime == nil || !info.Config.OptStartTime.Equal(enabled.UpdatedAt) {
			return fmt.Errorf("consumer %+v, %v: want it to start when the stream was enabled again", info, err)
		}
		return nil
	})
}

// While a push is retried for longer than AckWait, the message stays
// with the instance retrying it, and so do those queued behind it: none
// is handed out again, so the receiver gets each once.
func TestRetriedMessageIsNotHandedOutAgain(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil) // AckWait 3 s
	rc := newReceiver(t)
	var mu sync.Mutex
	down := true
	rc.setAnswer(func(int, request) (int, http.Header, string) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return http.StatusServiceUnavailable, nil, ""
		}
		return http.StatusAccepted, nil, ""
	})
	st := in.pushStream(t, "web-app", rc)

	first := d.revoked("web-app")
	second := d.revoked("web-app") // waits behind the first
	// Both are with the instance, the first retried, for longer than
	// AckWait.
	var since time.Time
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		consumer, err := d.js.Consumer(context.Background(), events.StreamName, ConsumerName(st.ID))
		if err != nil {
			return err
		}
		info := consumer.CachedInfo()
		switch {
		case info.NumRedelivered != 0:
			t.Fatalf("%d messages handed out again while the first was retried", info.NumRedelivered)
		case info.NumAckPending != 2:
			since = time.Time{}
			return fmt.Errorf("%d messages with the instance", info.NumAckPending)
		case since.IsZero():
			since = time.Now()
		}
		if held := time.Since(since); held < 4*time.Second {
			return fmt.Errorf("held for %v", held)
		}
		return nil
	})
	mu.Lock()
	down = false
	mu.Unlock()
	want := []string{JTI(st.ID, first, TypeSessionRevoked), JTI(st.ID, second, TypeSessionRevoked)}
	if got := rc.awaitAccepted(t, 2); !slices.Equal(got, want) {
		t.Errorf("accepted %v, want %v once each", got, want)
	}
}

// A push carries the receiver's authorization_header, which the store
// keeps only sealed.
func TestPushCarriesTheSealedAuthorization(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	rc := newReceiver(t)
	st := in.pushStream(t, "web-app", rc)
	if st.Delivery.AuthorizationHeader != "" || st.Secrets.Authorization == nil {
		t.Fatalf("stored in the clear: %+v", st.Delivery)
	}
	d.revoked("web-app")
	if got := rc.await(t, 1)[0].header.Get("Authorization"); got != "Bearer rcv-web-app" {
		t.Errorf("Authorization %q", got)
	}
}

// A stream whose secrets cannot be opened sends nothing: neither a push
// without the receiver's credentials nor an unsigned webhook. It keeps
// retrying, so a new secret resumes it.
func TestNothingSentWithALostSecret(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	var mu sync.Mutex
	lost := true
	var asked int
	var in *instance
	in = d.start("a", func(o *EngineOptions) {
		o.Secrets = func(st Stream) (DeliverySecrets, error) {
			mu.Lock()
			defer mu.Unlock()
			asked++
			if lost {
				return DeliverySecrets{}, ErrSecretLost
			}
			return in.store.DeliverySecrets(st)
		}
	})
	push := newReceiver(t)
	in.pushStream(t, "web-app", push)
	hook := newReceiver(t)
	if _, err := in.store.Create(context.Background(), NewStream{CreatedBy: "ops", WebhookSecret: whsec(1),
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: hook.srv.URL}}}); err != nil {
		t.Fatal(err)
	}
	d.revoked("web-app")
	eventstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if asked < 6 {
			return fmt.Errorf("secrets asked %d times", asked)
		}
		return nil
	})
	if n, m := len(push.requests()), len(hook.requests()); n != 0 || m != 0 {
		t.Fatalf("sent %d pushes and %d webhooks without their secrets", n, m)
	}
	mu.Lock()
	lost = false
	mu.Unlock()
	push.awaitAccepted(t, 1)
	hook.awaitAccepted(t, 1)
}

func TestDefaultClientFollowsNoRedirect(t *testing.T) {
	target := newReceiver(t)
	redirect := newReceiver(t)
	redirect.setAnswer(func(int, request) (int, http.Header, string) {
		return http.StatusTemporaryRedirect, http.Header{"Location": {target.srv.URL}}, ""
	})
	e := NewEngine(EngineOptions{})
	a := e.post(context.Background(), redirect.srv.URL, http.Header{"Authorization": {"Bearer s3cret"}}, []byte("set"))
	if a.status != http.StatusTemporaryRedirect || a.outcome != failed || len(target.requests()) != 0 {
		t.Errorf("status %d outcome %v, %d requests at the redirect's target", a.status, a.outcome, len(target.requests()))
	}
}

func TestTransportErrorLeavesTheURLOut(t *testing.T) {
	err := &url.Error{Op: "Post", URL: "https://rp.example/ssf?token=s3cret", Err: errors.New("connection refused")}
	if got := transportError(fmt.Errorf("push: %w", err)); got != "connection refused" {
		t.Errorf("%q", got)
	}
}

// fakeMsg is a message of stream sequence seq that records its Nak.
type fakeMsg struct {
	jetstream.Msg
	seq   uint64
	naked *[]uint64
}

func (m fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}}, nil
}

func (m fakeMsg) Nak() error { *m.naked = append(*m.naked, m.seq); return nil }

// The queue hands messages out in the stream's order, whatever order the
// server hands them back in, and gives back what is left in that order.
func TestMsgQueueKeepsTheStreamsOrder(t *testing.T) {
	var naked []uint64
	q := newMsgQueue()
	for _, seq := range []uint64{7, 5, 9, 6, 8} {
		q.push(fakeMsg{seq: seq, naked: &naked})
	}
	for _, want := range []uint64{5, 6} {
		if got := q.pop().(fakeMsg).seq; got != want {
			t.Fatalf("popped %d, want %d", got, want)
		}
	}
	q.close()
	q.push(fakeMsg{seq: 10, naked: &naked}) // after close: straight back
	if !slices.Equal(naked, []uint64{7, 8, 9, 10}) || q.pop() != nil {
		t.Errorf("handed back %v", naked)
	}
}
