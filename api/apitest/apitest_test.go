package apitest_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/apitest"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

func request[Reply any](t *testing.T, nc *nats.Conn, subject string, req any) Reply {
	t.Helper()
	data, _ := json.Marshal(req)
	m, err := nc.Request(subject, data, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		t.Fatalf("%s: error %s: %s", subject, code, m.Data)
	}
	var reply Reply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		t.Fatal(err)
	}
	return reply
}

// TestServesAndSurvivesRestart: the test tokend issues and rotates with
// the configured knobs, records both in the stream, and serves again after
// its NATS server was stopped and started.
func TestServesAndSurvivesRestart(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: 42 * time.Second, Prefix: "acme"})
	if td.Options().ReuseInterval != 10*time.Second {
		t.Fatalf("default reuse interval = %v", td.Options().ReuseInterval)
	}
	nc := td.Connect(t)
	issued := request[wire.TokenReply](t, nc, "acme.cmd.issue", wire.IssueRequest{Subject: "user-42", ClientID: "web", Scope: "a b"})
	if issued.ExpiresIn != 42 {
		t.Fatalf("expires_in = %d, want the configured access TTL", issued.ExpiresIn)
	}
	url := td.URL()
	td.StopNATS()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	td.StartNATS()
	if td.URL() != url {
		t.Fatalf("URL moved from %s to %s", url, td.URL())
	}
	var rotated wire.TokenReply
	eventstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		data, _ := json.Marshal(wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "web"})
		m, err := nc.Request("acme.cmd.refresh", data, 5*time.Second)
		if err != nil {
			return err
		}
		if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
			return fmt.Errorf("refresh: %s", m.Data)
		}
		return json.Unmarshal(m.Data, &rotated)
	})
	evs := td.Events(t, issued.FamilyID)
	if len(evs) != 2 || evs[0].Type != "token.issued" || evs[1].Type != "token.rotated" || evs[1].Generation != 2 ||
		evs[1].Seq != rotated.Seq || apitest.Count(evs, "token.rotated") != 1 {
		t.Fatalf("events = %+v", evs)
	}
}
