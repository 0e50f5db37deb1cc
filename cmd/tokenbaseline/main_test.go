package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

type reply struct {
	RefreshToken string `json:"refresh_token"`
	FamilyID     string `json:"family_id"`
	Seq          uint64 `json:"seq"`
}

func mustStart(t *testing.T) *pipeline {
	t.Helper()
	p, err := start(t.Context(), config{dataDir: t.TempDir(), natsListen: "127.0.0.1:-1", httpAddr: "127.0.0.1:0",
		jsMaxMemory: 64 << 20, jsMaxStore: 1 << 30}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

func request(t *testing.T, nc *nats.Conn, subject, body string) *nats.Msg {
	t.Helper()
	msg, err := nc.Request(subject, []byte(body), 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	return msg
}

// TestIssueAndRefresh: each request is one fenced append on the family's
// subject, answered with its sequence, and the event is as large as a
// tokend rotation event (about 840 bytes).
func TestIssueAndRefresh(t *testing.T) {
	p := mustStart(t)
	nc, err := nats.Connect(p.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	var issued reply
	if err := json.Unmarshal(request(t, nc, "baseline.cmd.issue", `{"subject":"u","client_id":"c"}`).Data, &issued); err != nil {
		t.Fatal(err)
	}
	if issued.FamilyID == "" || issued.Seq != 1 || issued.RefreshToken != issued.FamilyID+".1" {
		t.Fatalf("issue reply %+v", issued)
	}
	var refreshed reply
	body := `{"family_id":"` + issued.FamilyID + `","refresh_token":"` + issued.RefreshToken + `"}`
	if err := json.Unmarshal(request(t, nc, "baseline.cmd.refresh", body).Data, &refreshed); err != nil {
		t.Fatal(err)
	}
	if refreshed.Seq != 2 || refreshed.FamilyID != issued.FamilyID {
		t.Fatalf("refresh reply %+v", refreshed)
	}

	msg, err := p.stream.GetLastMsgForSubject(t.Context(), "baseline.evt."+issued.FamilyID)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Sequence != 2 || msg.Header.Get(jetstream.MsgIDHeader) == "" {
		t.Fatalf("stored seq %d, headers %v", msg.Sequence, msg.Header)
	}
	if n := len(msg.Data); n < 800 || n > 880 {
		t.Fatalf("event is %d bytes, want about 840 like a tokend token.rotated event", n)
	}
}

// TestRefreshFailures answer like tokend: the contract body and the micro
// error headers.
func TestRefreshFailures(t *testing.T) {
	p := mustStart(t)
	nc, err := nats.Connect(p.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, c := range []struct{ body, code, status string }{
		{`not json`, "invalid_request", "400"},
		{`{"family_id":"a.b"}`, "invalid_request", "400"},
	} {
		msg := request(t, nc, "baseline.cmd.refresh", c.body)
		if got := msg.Header.Get(micro.ErrorCodeHeader); got != c.status || !strings.Contains(string(msg.Data), `"error":"`+c.code+`"`) {
			t.Errorf("%s: status %q, body %s; want %s %s", c.body, got, msg.Data, c.status, c.code)
		}
	}
}
