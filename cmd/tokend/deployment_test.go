package main

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// deploymentEvents reads every deployment event of the ops subjects.
func deploymentEvents(t *testing.T, js jetstream.JetStream) []events.DeploymentEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	subjects := events.Subjects{Prefix: "tokens"}
	stream := tokensStream(t, ctx, js)
	want := countSubjects(t, js, subjects.AllOps())
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AllOps()}})
	if err != nil {
		t.Fatal(err)
	}
	var out []events.DeploymentEvent
	for uint64(len(out)) < want {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("read %d of %d deployment events: %v", len(out), want, err)
		}
		ev, err := events.DecodeDeployment(m.Data(), subjects.OpsKindOf(m.Subject()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// TestRevocationsRecordDeploymentEvents: revokes by subject and by client
// and a key revocation leave subject.revoked, client.revoked and
// key.revoked in the stream, once each however often a lost reply makes
// the caller retry; the read model neither reads nor waits for them.
func TestRevocationsRecordDeploymentEvents(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReadyMaxLag = 0
	a := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, a.NATSURL())
	for _, who := range [][2]string{{"user-a", "web-app"}, {"user-a", "mobile-app"}, {"user-b", "mobile-app"}} {
		mustIssue(t, nc, who[0], who[1])
	}
	revoke := func(req map[string]string) wire.RevokeReply {
		t.Helper()
		r := call(t, nc, "tokens.cmd.revoke", req)
		var out wire.RevokeReply
		if r.errCode != "" || json.Unmarshal(r.raw, &out) != nil {
			t.Fatalf("revoke %v: %s", req, r.raw)
		}
		return out
	}
	bySubject := revoke(map[string]string{"subject": "user-a", "reason": "user_disabled"})
	// The caller lost the reply and asks again: nothing more is revoked,
	// at the same position, and no second event is stored.
	if again := revoke(map[string]string{"subject": "user-a", "reason": "user_disabled"}); again.RevokedFamilies != 0 || again.Seq != bySubject.Seq {
		t.Fatalf("the retry answered %+v after %+v", again, bySubject)
	}
	byClient := revoke(map[string]string{"client_id": "mobile-app"})

	staged := call(t, nc, "tokens."+api.SubjectKeysStage, map[string]any{})
	var st api.KeysStatus
	if err := json.Unmarshal(staged.raw, &st); err != nil {
		t.Fatal(err)
	}
	kid := ""
	for _, k := range st.Keys {
		if k.Kind == "mac" && k.State == "next" {
			kid = k.Kid
		}
	}
	keyRevoked := call(t, nc, "tokens."+api.SubjectKeysRevoke, map[string]string{"kid": kid, "reason": "backup lost", "by": "alice"})
	var kr api.KeysRevoked
	if keyRevoked.errCode != "" || json.Unmarshal(keyRevoked.raw, &kr) != nil {
		t.Fatalf("keys revoke: %s", keyRevoked.raw)
	}

	got := deploymentEvents(t, a.js)
	if len(got) != 3 {
		t.Fatalf("%d deployment events, want 3: %+v", len(got), got)
	}
	want := []events.DeploymentEvent{
		events.SubjectRevokedEvent("user-a", "user_disabled", 2, bySubject.Seq, got[0].Time),
		events.ClientRevokedEvent("mobile-app", "revoked", 1, byClient.Seq, got[1].Time),
		events.KeyRevokedEvent(kid, "mac", "backup lost", "alice", kr.Revision, got[2].Time),
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if bySubject.RevokedFamilies != 2 || byClient.RevokedFamilies != 1 {
		t.Fatalf("revoked %d by subject and %d by client", bySubject.RevokedFamilies, byClient.RevokedFamilies)
	}
	// Deployment events are no lag: the read model is caught up with the
	// family events, and /readyz (with no lag allowed) says so.
	if err := a.ready(t.Context()); err != nil {
		t.Fatalf("not ready after deployment events: %v", err)
	}
	if a.projector.Skipped() != 0 {
		t.Fatalf("the read model skipped %d messages", a.projector.Skipped())
	}
}
