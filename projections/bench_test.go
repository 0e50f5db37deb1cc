package projections

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/tokens"
)

// rotationLoad issues families and rotates each rotations times, one worker
// per family, and returns the stream's last sequence and a current token of
// every family.
func (h *harness) rotationLoad(tb testing.TB, families, rotations int) (uint64, []string) {
	tb.Helper()
	ctx := context.Background()
	current := make([]string, families)
	seqs := make([]uint64, families)
	var wg sync.WaitGroup
	errs := make(chan error, families)
	for i := range families {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := fmt.Sprintf("client-%d", i%4)
			g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i), ClientID: client,
				Scope: []string{"openid", "api:read"}, Audience: []string{"https://api.example.com"}})
			for r := 0; err == nil && r < rotations; r++ {
				g, err = h.svc.Refresh(ctx, tokens.RefreshRequest{Token: g.Token.Value(), ClientID: client})
			}
			if err != nil {
				errs <- err
				return
			}
			current[i], seqs[i] = g.Token.Value(), g.Seq
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tb.Fatal(err)
	}
	return slices.Max(seqs), current
}

func (h *harness) clock() time.Time { return h.now }

// BenchmarkProjectionRebuild measures how fast a read model is built from
// the stream: each iteration projects 20,000 events into a new database,
// from few long families (a family row written once per batch for many
// events) and from many short ones (nearly a family row per event, the
// shape of live load with thousands of families rotating). The events
// carry TTLs as with tokend's default retention, which decide the expiry
// columns and so which partial indexes each row goes into.
//
//	go test -run '^$' -bench ProjectionRebuild -benchtime 5x ./projections
func BenchmarkProjectionRebuild(b *testing.B) {
	for _, shape := range []struct{ families, rotations int }{{200, 99}, {2000, 9}} {
		b.Run(fmt.Sprintf("families=%d", shape.families), func(b *testing.B) {
			h := MustHarness(b)
			h.withRetention(events.Retention{AfterExpiry: 90 * 24 * time.Hour, Archive: 365 * 24 * time.Hour})
			last, _ := h.rotationLoad(b, shape.families, shape.rotations)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				db := h.openDB(b, fmt.Sprintf("rebuild-%d.db", i))
				b.StartTimer()
				h.project(b, db, DefaultBatchSize, last)
			}
			b.ReportMetric(float64(shape.families*(shape.rotations+1)*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
