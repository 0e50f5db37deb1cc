package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// TestSlowQueriesDoNotStallCommands: more slow queries than both budgets
// together (each waits 2 s for a min_seq the stream never reaches) leave
// the commands' budget alone: a refresh is answered while every one of
// them that runs is still waiting (those past the queries' slots and
// waiting room are answered busy at once). With one budget shared by all
// requests, as before, it waited for their slots.
func TestSlowQueriesDoNotStallCommands(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxCommands, cfg.MaxQueries = 8, 4
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-busy", "web-app")

	const slow = 20
	answers := make(chan *nats.Msg, slow)
	sub, err := nc.ChanSubscribe(nats.NewInbox()+".>", answers)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	query, _ := json.Marshal(wire.AuditRequest{MinSeq: 1 << 40})
	for i := range slow {
		if err := nc.PublishRequest("tokens.query.audit", fmt.Sprintf("%s%d", strings.TrimSuffix(sub.Subject, ">"), i), query); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	r := refresh(t, nc, f.RefreshToken, "web-app")
	if r.errCode != "" {
		t.Fatalf("refresh: %s", r.raw)
	}
	// Those past the queries' slots and waiting room were answered at
	// once; none that ran may have ended yet.
	for n := len(answers); n > 0; n-- {
		if m := <-answers; strings.Contains(string(m.Data), "min_seq") {
			t.Fatal("the refresh was answered after a slow query ended: it waited for their slots")
		}
	}
	// The slow queries do end, as temporarily_unavailable.
	for {
		select {
		case m := <-answers:
			if m.Header.Get("Nats-Service-Error") != "temporarily_unavailable" {
				t.Fatalf("slow query: %s", m.Data)
			}
			if strings.Contains(string(m.Data), "min_seq") {
				return
			}
		case <-time.After(time.Minute):
			t.Fatal("slow queries never answered")
		}
	}
}
