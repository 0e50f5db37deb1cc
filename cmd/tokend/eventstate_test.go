package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestEventStateFullForRollingUpgrades: an instance started with
// --event-state full stores data.family, which versions before data.state
// read, and instances storing either form work on each other's families.
func TestEventStateFullForRollingUpgrades(t *testing.T) {
	url, apps := mustInstances(t, 1, nil)
	compactWriter := apps[0]
	cfg := testConfig(t)
	cfg.NATSURL = url
	cfg.EventState = "full"
	legacyWriter := MustApp(t, cfg, nil)

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	stream := tokensStream(t, ctx, js)
	lastForm := func(familyID string) string {
		t.Helper()
		m, err := stream.GetLastMsgForSubject(ctx, "tokens.evt."+familyID)
		if err != nil {
			t.Fatal(err)
		}
		hasState, hasFamily := bytes.Contains(m.Data, []byte(`"state":{`)), bytes.Contains(m.Data, []byte(`"family":{`))
		switch {
		case hasState && !hasFamily:
			return "compact"
		case hasFamily && !hasState:
			return "full"
		}
		t.Fatalf("event holds neither form alone: %s", m.Data)
		return ""
	}

	// One writer issues, the other rotates from the event the first stored
	// (its cache has no such family), and the first rotates again from
	// the second's event (its cached state is stale: the fence sends it to
	// the stream).
	for _, order := range []struct {
		first, second *App
		want          [2]string
	}{{legacyWriter, compactWriter, [2]string{"full", "compact"}}, {compactWriter, legacyWriter, [2]string{"compact", "full"}}} {
		g, err := order.first.api.Tokens.Issue(ctx, eventsIssue("user-upgrade", "web"))
		if err != nil {
			t.Fatal(err)
		}
		if got := lastForm(g.Family.ID); got != order.want[0] {
			t.Fatalf("issued as %s, want %s", got, order.want[0])
		}
		r, err := order.second.api.Tokens.Refresh(ctx, eventsRefresh(g.Token.Value(), "web"))
		if err != nil {
			t.Fatal(err)
		}
		if got := lastForm(g.Family.ID); got != order.want[1] {
			t.Fatalf("rotated as %s, want %s", got, order.want[1])
		}
		if _, err := order.first.api.Tokens.Refresh(ctx, eventsRefresh(r.Token.Value(), "web")); err != nil {
			t.Fatalf("rotating after the other form: %v", err)
		}
		evs := familyEvents(t, nc, g.Family.ID)
		if len(evs) != 3 || evs[2].Type != "token.rotated" || evs[2].Generation != 3 {
			t.Fatalf("family's events: %+v", evs)
		}
	}
}
