//go:build reliability

// The erasure crash test kills tokend with SIGKILL while it erases a data
// subject, at several points of the erasure, and reads what the data
// directory holds after each kill. It takes about 30 s:
//
//	go test -tags reliability -race -count=1 -run TestCrashEraseKill9 -v ./cmd/tokend
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// eraseCrashFamilies is how many families the erased subject has in each
// round: enough that revoking them takes a while to kill into.
const eraseCrashFamilies = 300

// eraseKillPoint is when a round kills tokend: once afterRevoked of the
// subject's families are revoked, or once the subject's data key is
// purged from the bucket.
type eraseKillPoint struct {
	afterRevoked int
	afterKeyGone bool
}

func (k eraseKillPoint) String() string {
	if k.afterKeyGone {
		return "after the key's purge"
	}
	return fmt.Sprintf("after %d family.revoked", k.afterRevoked)
}

// erasureState is what the stream and the key bucket hold of one
// subject's erasure.
type erasureState struct {
	keyPresent bool
	revoked    int // families of the subject whose last event is family.revoked
	recorded   int // subject.erased events naming its pseudonym
}

func (s erasureState) String() string {
	return fmt.Sprintf("key present %v, %d of %d families revoked, %d subject.erased", s.keyPresent, s.revoked, eraseCrashFamilies, s.recorded)
}

// TestCrashEraseKill9: tokend erases a subject with hundreds of families
// and is killed with SIGKILL at different points: after the first, a
// third, two thirds and all of the family.revoked events, and right after
// the subject's data key is purged. After each kill the data directory,
// opened by a NATS server of the test's own, never holds the subject's key
// gone while one of its families is still active (nor subject.erased
// without the key gone), and another subject is untouched. Restarted on
// the same directory, tokend completes the erasure when asked again:
// every family revoked (the retry revokes exactly those the killed process
// had not), the key gone, subject.erased recorded once.
func TestCrashEraseKill9(t *testing.T) {
	bin := buildTokend(t)
	keyFile := piiKeyFile(t)
	deploymentKey, err := pii.LoadDeploymentKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pii.NewKeys(deploymentKey)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	args := []string{"--pii-key-file", keyFile}

	p := startTokend(t, bin, dataDir, args...)
	nc := connectNoReconnect(t, p.natsURL)
	var kept []string
	for range 3 {
		kept = append(kept, issueWith(t, nc, keptSubject, keptIP, "KeptAgent/1.0").FamilyID)
	}
	points := []eraseKillPoint{
		{afterRevoked: 1},
		{afterRevoked: eraseCrashFamilies / 3},
		{afterRevoked: 2 * eraseCrashFamilies / 3},
		{afterRevoked: eraseCrashFamilies},
		{afterKeyGone: true},
	}
	midRevocation := 0
	for round, point := range points {
		subject := fmt.Sprintf("crash-%d.erasure-test@example.org", round)
		reason := fmt.Sprintf("DSR-crash-%d", round)
		fams := make([]string, 0, eraseCrashFamilies)
		for range eraseCrashFamilies {
			fams = append(fams, issueWith(t, nc, subject, erasedIP, erasedUA).FamilyID)
		}
		pseudonym := keys.Pseudonym(subject)

		answered := killDuringErasure(t, p, nc, point, subject, reason, pseudonym, fams)
		nc.Close()
		wantCleanLogs(t, p.logs.String())

		// The data directory as the kill left it.
		ns, js := openDataDir(t, dataDir)
		atKill := readErasureState(t, js, pseudonym, fams)
		checkUntouched(t, js, keys.Pseudonym(keptSubject), kept)
		ns.Shutdown()
		ns.WaitForShutdown()
		t.Logf("round %d: killed %v (the erase had answered: %v): %v", round+1, point, answered, atKill)
		if !atKill.keyPresent && atKill.revoked != eraseCrashFamilies {
			t.Fatalf("round %d: the subject's data key is gone and %d of its %d families are still active: half-erased",
				round+1, eraseCrashFamilies-atKill.revoked, eraseCrashFamilies)
		}
		if atKill.recorded > 0 && atKill.keyPresent {
			t.Fatalf("round %d: subject.erased is recorded and the subject's data key is still there", round+1)
		}
		if atKill.keyPresent && atKill.revoked > 0 && atKill.revoked < eraseCrashFamilies {
			midRevocation++
		}

		// Retried after a restart, the erasure completes.
		p = startTokend(t, bin, dataDir, args...)
		nc = connectNoReconnect(t, p.natsURL)
		out := eraseUntilDone(t, nc, subject, reason)
		if out.Pseudonym != pseudonym || out.RevokedFamilies != eraseCrashFamilies-atKill.revoked {
			t.Fatalf("round %d: the retry answered %+v; want pseudonym %s and the %d families the kill left active revoked",
				round+1, out, pseudonym, eraseCrashFamilies-atKill.revoked)
		}
		js, err = jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		if done := readErasureState(t, js, pseudonym, fams); done.keyPresent || done.revoked != eraseCrashFamilies || done.recorded != 1 {
			t.Fatalf("round %d: after the retry: %v; want the key gone, every family revoked and subject.erased once", round+1, done)
		}
		checkUntouched(t, js, keys.Pseudonym(keptSubject), kept)
	}
	if midRevocation == 0 {
		t.Fatal("no kill landed while the families were being revoked: the test did not exercise what it is for")
	}

	// The other subject is readable through the API.
	page := auditPageOf(t, nc, wire.AuditRequest{Subject: keptSubject})
	if len(page.Events) != len(kept) {
		t.Fatalf("audit of the other subject: %d events, want %d", len(page.Events), len(kept))
	}
	for _, e := range page.Events {
		if e.Erased || e.Subject != keptSubject || !strings.Contains(string(e.Context), keptIP) {
			t.Fatalf("the other subject's events stay readable: %+v (context %s)", e, e.Context)
		}
	}
	p.stop(t)
	nc.Close()
	wantCleanLogs(t, p.logs.String())
}

// connectNoReconnect connects to a tokend process that the test may kill.
func connectNoReconnect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// killDuringErasure asks p to erase subject and kills it at point, or as
// soon as the erase answers if that comes first (then the point was never
// reached; the state after the kill tells what happened). It reports
// whether the erase had answered.
func killDuringErasure(t *testing.T, p *tokendProcess, nc *nats.Conn, point eraseKillPoint, subject, reason, pseudonym string, fams []string) bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reached := make(chan struct{})
	var once sync.Once
	reach := func() { once.Do(func() { close(reached) }) }

	if point.afterKeyGone {
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := js.KeyValue(ctx, pii.Bucket)
		if err != nil {
			t.Fatal(err)
		}
		w, err := kv.Watch(ctx, strings.TrimPrefix(pseudonym, "p:"), jetstream.UpdatesOnly(), jetstream.MetaOnly())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		go func() {
			for e := range w.Updates() {
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					reach()
					return
				}
			}
		}()
	} else {
		ofSubject := make(map[string]bool, len(fams))
		for _, id := range fams {
			ofSubject[id] = true
		}
		var mu sync.Mutex
		revoked := map[string]bool{}
		// A consumer of the stream sees each event once it is stored.
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		cons, err := tokensStream(t, ctx, js).OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"tokens.evt.*"}, DeliverPolicy: jetstream.DeliverNewPolicy})
		if err != nil {
			t.Fatal(err)
		}
		consuming, err := cons.Consume(func(m jetstream.Msg) {
			id := strings.TrimPrefix(m.Subject(), "tokens.evt.")
			if !ofSubject[id] {
				return
			}
			if typ, ok := events.PeekType(m.Data()); !ok || typ != string(domain.FamilyRevoked) {
				return
			}
			mu.Lock()
			revoked[id] = true
			n := len(revoked)
			mu.Unlock()
			if n >= point.afterRevoked {
				reach()
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer consuming.Stop()
	}
	replies := make(chan *nats.Msg, 1)
	inbox := nats.NewInbox()
	sub, err := nc.ChanSubscribe(inbox, replies)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil { // the subscriptions are in place
		t.Fatal(err)
	}
	req, err := json.Marshal(api.SubjectEraseRequest{Subject: subject, Reason: reason, By: "dpo"})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest("tokens."+api.SubjectSubjectsErase, inbox, req); err != nil {
		t.Fatal(err)
	}
	answered := false
	select {
	case <-reached:
	case m := <-replies:
		answered = true
		t.Logf("the erase answered before the kill point: %s", m.Data)
	case <-time.After(time.Minute):
		t.Fatalf("the kill point (%v) was not reached and the erase did not answer\n%s", point, p.logs)
	}
	p.kill(t)
	return answered
}

// openDataDir opens the JetStream store of a stopped tokend's data
// directory with a NATS server of the test's own.
func openDataDir(t *testing.T, dataDir string) (*server.Server, jetstream.JetStream) {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: filepath.Join(dataDir, "jetstream")})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("the data dir's NATS server did not start")
	}
	t.Cleanup(ns.Shutdown)
	js, err := jetstream.New(eventstest.MustConnect(t, ns.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	return ns, js
}

// readErasureState reads the erasure of the subject with that pseudonym
// and those families from the stream and the key bucket.
func readErasureState(t *testing.T, js jetstream.JetStream, pseudonym string, fams []string) erasureState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var st erasureState
	st.keyPresent = dataKeyPresent(t, ctx, js, pseudonym)
	stream := tokensStream(t, ctx, js)
	for _, id := range fams {
		if lastEventType(t, ctx, stream, id) == string(domain.FamilyRevoked) {
			st.revoked++
		}
	}
	for _, ev := range subjectErasedEvents(t, ctx, stream) {
		if ev.Subject == pseudonym {
			st.recorded++
		}
	}
	return st
}

// checkUntouched fails unless the subject with that pseudonym keeps its
// data key and every one of its families is as issued.
func checkUntouched(t *testing.T, js jetstream.JetStream, pseudonym string, fams []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !dataKeyPresent(t, ctx, js, pseudonym) {
		t.Fatal("another subject's data key is gone")
	}
	stream := tokensStream(t, ctx, js)
	for _, id := range fams {
		if typ := lastEventType(t, ctx, stream, id); typ != string(domain.TokenIssued) {
			t.Fatalf("another subject's family %s: last event %s, want token.issued", id, typ)
		}
	}
}

// dataKeyPresent reports whether the bucket holds a data key for the
// pseudonym (a purge marker, or no message at all, is none).
func dataKeyPresent(t *testing.T, ctx context.Context, js jetstream.JetStream, pseudonym string) bool {
	t.Helper()
	kv, err := js.KeyValue(ctx, pii.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	_, err = kv.Get(ctx, strings.TrimPrefix(pseudonym, "p:"))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// lastEventType returns the type of a family's last event.
func lastEventType(t *testing.T, ctx context.Context, stream jetstream.Stream, familyID string) string {
	t.Helper()
	m, err := stream.GetLastMsgForSubject(ctx, "tokens.evt."+familyID)
	if err != nil {
		t.Fatalf("family %s: %v", familyID, err)
	}
	env, err := events.Decode(m.Data, familyID)
	if err != nil {
		t.Fatal(err)
	}
	return env.Type
}

// subjectErasedEvents returns every subject.erased event in the stream.
func subjectErasedEvents(t *testing.T, ctx context.Context, stream jetstream.Stream) []events.DeploymentEvent {
	t.Helper()
	kind := events.OpsKind(events.SubjectErased)
	subject := "tokens.ops." + kind
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	want := int(info.State.Subjects[subject])
	if want == 0 {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []events.DeploymentEvent
	for len(out) < want {
		msgs, err := cons.Fetch(want-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range msgs.Messages() {
			ev, err := events.DecodeDeployment(m.Data(), kind)
			if err != nil {
				t.Fatal(err)
			}
			out, got = append(out, ev), got+1
		}
		if msgs.Error() != nil {
			t.Fatal(msgs.Error())
		}
		if got == 0 {
			t.Fatalf("%d of %d subject.erased events read", len(out), want)
		}
	}
	return out
}

// eraseUntilDone erases subject, retrying while tokend answers
// temporarily_unavailable (its read model catching up after the restart).
func eraseUntilDone(t *testing.T, nc *nats.Conn, subject, reason string) api.SubjectErased {
	t.Helper()
	req := api.SubjectEraseRequest{Subject: subject, Reason: reason, By: "dpo"}
	var out api.SubjectErased
	eventstest.CheckFor(t, time.Minute, 200*time.Millisecond, func() error {
		o := tryCall(nc, "tokens."+api.SubjectSubjectsErase, req, api.EraseTimeout+5*time.Second)
		if o.err != nil {
			return o.err
		}
		if o.reply.errCode != "" {
			if o.reply.err.Error != domain.EUnavailable {
				t.Fatalf("erase: %s", o.raw)
			}
			return fmt.Errorf("erase: %s", o.raw)
		}
		return json.Unmarshal(o.raw, &out)
	})
	return out
}
