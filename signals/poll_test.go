package signals

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// pollStream creates a poll stream for receiver clientID.
func (in *instance) pollStream(t *testing.T, clientID string) Stream {
	t.Helper()
	st, err := in.store.Create(context.Background(), NewStream{Receiver: clientID,
		Request: StreamRequest{Delivery: &Delivery{Method: DeliveryPoll}}})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// awaitPending waits until stream id's consumer has n messages to
// deliver: the server counts new messages asynchronously, and a poll that
// returns at once sees only what it has counted.
func (d *deployment) awaitPending(t *testing.T, id string, n uint64) {
	t.Helper()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info, err := d.consumerState(id)
		if err != nil || info.NumPending != n {
			return fmt.Errorf("consumer %+v, %v: want %d pending", info, err, n)
		}
		return nil
	})
}

func mustPoll(t *testing.T, in *instance, st Stream, req PollRequest) PollResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := in.engine.Poll(ctx, st, req)
	if err != nil {
		t.Fatalf("poll on %s: %v", in.name, err)
	}
	return resp
}

func TestPollAcknowledgedOnAnyInstance(t *testing.T) {
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	a, b := d.start("a", nil), d.start("b", nil)
	st := a.pollStream(t, "web-app")
	txns := []string{d.revoked("web-app"), d.revoked("web-app"), d.revoked("web-app")}
	d.revoked("other-app") // not this receiver's
	d.awaitPending(t, st.ID, 4)

	got := mustPoll(t, a, st, PollRequest{ReturnImmediately: true})
	var jtis []string
	for _, txn := range txns {
		jtis = append(jtis, JTI(st.ID, txn, TypeSessionRevoked))
	}
	if keys := slices.Sorted(maps.Keys(got.Sets)); !slices.Equal(keys, slices.Sorted(slices.Values(jtis))) || got.MoreAvailable {
		t.Fatalf("sets %v more %v, want %v", keys, got.MoreAvailable, jtis)
	}
	for jti, set := range got.Sets {
		if c := verifySET(t, set, "web-app"); c.ID != jti {
			t.Errorf("set under %s has jti %s", jti, c.ID)
		}
	}

	// Two acknowledged on the other instance; the third is still out.
	if got := mustPoll(t, b, st, PollRequest{Ack: jtis[:2], ReturnImmediately: true}); len(got.Sets) != 0 {
		t.Fatalf("sets %v while the third is out and the others acknowledged", slices.Collect(maps.Keys(got.Sets)))
	}
	// Not acknowledged within PollAckWait: handed out again, same jti.
	again := mustPoll(t, b, st, PollRequest{})
	if keys := slices.Collect(maps.Keys(again.Sets)); !slices.Equal(keys, jtis[2:]) {
		t.Fatalf("after PollAckWait: %v, want the unacknowledged %v", keys, jtis[2:])
	}
	mustPoll(t, a, st, PollRequest{Ack: jtis[2:], MaxEvents: ptr(0)})
	d.awaitLeft(t, st.ID, 0)
	delivered := a.metrics.get(func(m *metrics) int { return m.delivered[st.ID] }) + b.metrics.get(func(m *metrics) int { return m.delivered[st.ID] })
	if delivered != 3 {
		t.Errorf("delivered %d, want 3", delivered)
	}
	if got := mustPoll(t, a, st, PollRequest{ReturnImmediately: true}); len(got.Sets) != 0 {
		t.Errorf("acknowledged SETs came back: %v", slices.Collect(maps.Keys(got.Sets)))
	}
}

func TestPollLimitsAndErrors(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	st := in.pollStream(t, "web-app")
	for range 3 {
		d.revoked("web-app")
	}
	d.awaitPending(t, st.ID, 3)

	two := mustPoll(t, in, st, PollRequest{MaxEvents: ptr(2), ReturnImmediately: true})
	if len(two.Sets) != 2 || !two.MoreAvailable {
		t.Fatalf("maxEvents 2: %d sets, moreAvailable %v", len(two.Sets), two.MoreAvailable)
	}
	// A SET the receiver cannot process is acknowledged, counted, and
	// never comes back.
	var refused, taken string
	for jti := range two.Sets {
		if refused == "" {
			refused = jti
		} else {
			taken = jti
		}
	}
	rest := mustPoll(t, in, st, PollRequest{Ack: []string{taken, "not-a-jti"},
		SetErrs: map[string]SetErr{refused: {Err: "invalid_key", Description: "unknown kid"}}, ReturnImmediately: true})
	if len(rest.Sets) != 1 || rest.Sets[refused] != "" || rest.Sets[taken] != "" {
		t.Fatalf("after ack and setErrs: %v", slices.Collect(maps.Keys(rest.Sets)))
	}
	if err := in.metrics.expect(st.ID, 1, 1, 0); err != nil {
		t.Error(err)
	}

	// A long poll returns as soon as an event comes.
	for jti := range rest.Sets {
		mustPoll(t, in, st, PollRequest{Ack: []string{jti}, MaxEvents: ptr(0)})
	}
	done := make(chan PollResponse, 1)
	go func() { done <- mustPoll(t, in, st, PollRequest{}) }()
	txn := d.revoked("web-app")
	if got := <-done; len(got.Sets) != 1 || got.Sets[JTI(st.ID, txn, TypeSessionRevoked)] == "" {
		t.Errorf("long poll: %v", slices.Collect(maps.Keys(got.Sets)))
	}

	// Paused: no SETs (a receiver's pause announces nothing: held at once).
	paused, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusPaused, "")
	if err != nil {
		t.Fatal(err)
	}
	d.revoked("web-app")
	d.awaitPending(t, st.ID, 1)
	if got := mustPoll(t, in, paused, PollRequest{ReturnImmediately: true}); len(got.Sets) != 0 {
		t.Errorf("a paused stream handed out %d SETs", len(got.Sets))
	}

	disabled := paused
	disabled.Status = StatusDisabled
	push := paused
	push.Delivery = Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf"}
	for name, tc := range map[string]struct {
		st      Stream
		req     PollRequest
		wantErr error
	}{
		"disabled":           {disabled, PollRequest{}, ErrStreamDisabled},
		"a push stream":      {push, PollRequest{}, nil},
		"negative maxEvents": {paused, PollRequest{MaxEvents: ptr(-1)}, nil},
		"too many acks":      {paused, PollRequest{Ack: make([]string, MaxPollAcks+1)}, nil},
	} {
		_, err := in.engine.Poll(ctx, tc.st, tc.req)
		if domain.ErrorCode(err) != domain.EInvalidRequest || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPollDeadline(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	bg := context.Background()
	soon, cancel := context.WithDeadline(bg, now.Add(5*time.Second))
	defer cancel()
	late, cancel2 := context.WithDeadline(bg, now.Add(time.Hour))
	defer cancel2()
	for name, tc := range map[string]struct {
		ctx         context.Context
		immediately bool
		want        time.Time
	}{
		"returnImmediately":   {soon, true, now},
		"before the deadline": {soon, false, now.Add(4500 * time.Millisecond)},
		"at most maxPollWait": {late, false, now.Add(maxPollWait)},
		"no deadline":         {bg, false, now.Add(maxPollWait)},
	} {
		if got := pollDeadline(tc.ctx, now, tc.immediately); !got.Equal(tc.want) {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

// A poll stream paused with an announcement hands out what came before
// the announcement and the announcement, then nothing.
func TestPollAnnouncedPause(t *testing.T) {
	ctx := context.Background()
	d := newDeployment(t)
	d.register("web-app", domain.ReceiverOwn)
	in := d.start("a", nil)
	st := in.pollStream(t, "web-app")
	before := d.revoked("web-app")
	announced := d.deploymentEvent(events.StreamUpdatedEvent(st.ID, string(StatusPaused), "maintenance", st.Revision+1, time.Now()))
	paused, _, err := in.store.SetStatus(ctx, st.ID, 0, StatusPaused, "maintenance")
	if err != nil {
		t.Fatal(err)
	}
	d.revoked("web-app")
	d.awaitPending(t, st.ID, 3)

	got := mustPoll(t, in, paused, PollRequest{ReturnImmediately: true})
	want := []string{JTI(st.ID, announced, TypeStreamUpdated), JTI(st.ID, before, TypeSessionRevoked)}
	if keys := slices.Sorted(maps.Keys(got.Sets)); !slices.Equal(keys, slices.Sorted(slices.Values(want))) {
		t.Errorf("sets %v, want %v", keys, want)
	}
}
