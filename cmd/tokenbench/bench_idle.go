package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/cmd/internal/cli"
)

// idleReport is what bench --idle prints: how much memory tokend keeps for
// many families that are issued and then left alone.
type idleReport struct {
	Families        int     `json:"families"`
	IssueSeconds    float64 `json:"issue_s"`
	IssuesPerSecond float64 `json:"issues_per_s"`
	Errors          int64   `json:"errors"`
	IdleSeconds     float64 `json:"idle_s"`
	RSSBytes        int64   `json:"rss_bytes"`      // after the idle wait
	PeakRSSBytes    int64   `json:"peak_rss_bytes"` // over the whole run
}

// benchIdle starts tokend, issues n families with k workers, waits idle for
// o.duration and reports tokend's resident memory then and at its peak.
func benchIdle(ctx context.Context, e *env, o *benchOptions, bin string) error {
	proc, err := startServer(ctx, "tokend", bin, append([]string{"--subject-prefix", e.prefix}, o.tokendFlags...), tokendBenchEnv)
	if err != nil {
		return err
	}
	rep, err := idleLoad(ctx, e, o, proc)
	if stopErr := proc.stop(o.keep); err == nil {
		err = stopErr
	}
	if err != nil {
		return err
	}
	if e.json {
		data, _ := json.Marshal(rep)
		fmt.Fprintf(e.stdout, "%s\n", data)
		return nil
	}
	// Aligned "key: value" lines, as tokenctl prints them.
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 1, ' ', 0)
	for _, row := range [][2]string{
		{"families issued", fmt.Sprint(rep.Families)},
		{"issues/s", fmt.Sprintf("%.0f", rep.IssuesPerSecond)},
		{"errors", fmt.Sprint(rep.Errors)},
		{"idle", fmt.Sprintf("%.0fs", rep.IdleSeconds)},
		{"tokend RSS after idle (MiB)", fmt.Sprintf("%.1f", float64(rep.RSSBytes)/(1<<20))},
		{"tokend peak RSS (MiB)", fmt.Sprintf("%.1f", float64(rep.PeakRSSBytes)/(1<<20))},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

func idleLoad(ctx context.Context, e *env, o *benchOptions, proc *serverProc) (idleReport, error) {
	conns := make([]*client.Client, o.conns)
	for i := range conns {
		nc, err := nats.Connect(proc.natsURL, nats.Name("tokenbench"), nats.Timeout(e.timeout), nats.NoReconnect())
		if err != nil {
			return idleReport{}, fmt.Errorf("connect to %s: %w", proc.natsURL, err)
		}
		defer nc.Close()
		conns[i] = client.New(nc, e.prefix)
	}
	var next, errs atomic.Int64
	body, _ := json.Marshal(map[string]string{"subject": "bench-user", "client_id": benchClientID, "scope": "openid api:read"})
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.k {
		wg.Go(func() {
			c := conns[w%len(conns)]
			for next.Add(1) <= int64(o.idle) && ctx.Err() == nil {
				rctx, cancel := context.WithTimeout(ctx, e.timeout)
				err := c.Request(rctx, client.SubjectIssue, body, nil)
				cancel()
				if err != nil {
					errs.Add(1)
				}
			}
		})
	}
	wg.Wait()
	issued := time.Since(start)
	if err := ctx.Err(); err != nil {
		return idleReport{}, err
	}
	if e.stderr != nil && cli.IsTerminal(e.stderr) {
		fmt.Fprintf(e.stderr, "tokenbench: %d families issued in %v; idle for %v\n", o.idle, issued.Round(time.Millisecond), o.duration)
	}
	select {
	case <-ctx.Done():
		return idleReport{}, ctx.Err()
	case <-time.After(o.duration):
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", proc.pid()))
	if err != nil {
		return idleReport{}, fmt.Errorf("tokend memory: %w", err)
	}
	rss, err := parseStatusKB(status, "VmRSS:")
	if err != nil {
		return idleReport{}, err
	}
	peak, err := parseStatusKB(status, "VmHWM:")
	if err != nil {
		return idleReport{}, err
	}
	return idleReport{Families: o.idle, IssueSeconds: issued.Seconds(), IssuesPerSecond: float64(o.idle) / issued.Seconds(),
		Errors: errs.Load(), IdleSeconds: o.duration.Seconds(), RSSBytes: rss, PeakRSSBytes: peak}, nil
}
