package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// BenchmarkIntrospectOverNATS measures tokens.query.introspect end to end:
// NATS request, token hash, SQLite look-up, reply.
//
//	go test -run '^$' -bench IntrospectOverNATS ./cmd/tokend
func BenchmarkIntrospectOverNATS(b *testing.B) {
	cfg := testConfig(b)
	cfg.IssueRate = 0 // the setup issues families faster than a client may
	app := MustApp(b, cfg, nil)
	nc := eventstest.MustConnect(b, app.NATSURL())
	tokens := make([]string, 500)
	var last uint64
	for i := range tokens {
		f := mustIssue(b, nc, "user-bench", "web-app")
		tokens[i], last = f.RefreshToken, f.Seq
	}
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
	defer cancel()
	if err := app.projector.WaitFor(ctx, last); err != nil {
		b.Fatal(err)
	}
	introspect := func(tb testing.TB, token string) {
		data, _ := json.Marshal(map[string]string{"refresh_token": token})
		msg, err := nc.Request("tokens.query.introspect", data, 5*time.Second)
		if err != nil {
			tb.Fatal(err)
		}
		var r wire.Introspection
		if err := json.Unmarshal(msg.Data, &r); err != nil || !r.Active {
			tb.Fatalf("introspect: %s", msg.Data)
		}
	}
	b.Run("serial", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			introspect(b, tokens[i%len(tokens)])
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				introspect(b, tokens[i%len(tokens)])
			}
		})
	})
}
