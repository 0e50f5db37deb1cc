package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/cmd/internal/cli"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/projections"
)

var rebuildCommand = &command{
	summary:  "build a fresh SQLite read model from the event stream",
	synopsis: "--db PATH",
	jsonHelp: "print the summary as one JSON object",
	long:     true,
	help: `Reads the TOKENS stream from its start and writes the read model tokend
answers queries from (families, tokens, audit events) into a new SQLite
file: an offline copy for a security team, or a replacement projections.db
prepared without downtime (a tokend started on it resumes from where the
rebuild stopped).

PATH must not exist: rebuild never writes into an existing database, which
could be a running tokend's. It stops once everything the stream held when
it started is applied, and prints a summary. Progress goes to stderr.
--timeout bounds connecting and each request, not the rebuild.
Ctrl-C stops it cleanly (exit status 1): PATH keeps what was applied so
far, or is removed if that is nothing.`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		path := fs.String("db", "", "the new SQLite file (`PATH`, required; must not exist)")
		return func(ctx context.Context, e *env) error {
			if *path == "" {
				return usagef("--db is required")
			}
			// O_EXCL: refuse an existing file atomically, even one created
			// by someone else between a check and the open.
			f, err := os.OpenFile(*path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600) // audit data: owner only
			if errors.Is(err, os.ErrExist) {
				return usagef("--db %s already exists; rebuild only writes a new database (an existing one may be a running tokend's): give a new path or move the file away", *path)
			}
			if err != nil {
				return err
			}
			f.Close()
			// SQLite would replay a journal left by a deleted database at
			// this path into the new one: that would be no fresh rebuild.
			for _, leftover := range []string{*path + "-wal", *path + "-journal"} {
				if _, err := os.Lstat(leftover); err == nil {
					os.Remove(*path)
					return usagef("%s exists, left by an earlier database at %s; SQLite would replay it into the new one: remove it or give another path", leftover, *path)
				}
			}
			sum, err := rebuild(ctx, e, *path)
			if err != nil {
				if sum.applied == 0 {
					// Nothing worth keeping: leave the path free for a retry.
					for _, suffix := range []string{"", "-wal", "-shm"} {
						os.Remove(*path + suffix)
					}
				}
				return err
			}
			return sum.print(e, *path)
		}
	},
}

type rebuildSummary struct {
	applied, events, skipped uint64
	took                     time.Duration
}

func (s rebuildSummary) rate() float64 {
	return float64(s.events) / max(s.took.Seconds(), 1e-9)
}

func (s rebuildSummary) print(e *env, path string) error {
	if e.json {
		data, err := json.Marshal(map[string]any{"db": path, "applied_seq": s.applied, "events": s.events,
			"skipped": s.skipped, "seconds": s.took.Seconds()})
		if err != nil {
			return err
		}
		printRaw(e.stdout, data)
		return nil
	}
	rows := [][2]string{
		{"database", path},
		{"events", fmt.Sprint(s.events)},
		{"applied_seq", fmt.Sprint(s.applied)},
	}
	if s.skipped > 0 {
		rows = append(rows, [2]string{"skipped", fmt.Sprintf("%d malformed messages (see the warnings above)", s.skipped)})
	}
	rows = append(rows, [2]string{"took", s.took.Round(time.Millisecond).String()},
		[2]string{"rate", fmt.Sprintf("%.0f events/s", s.rate())})
	printKV(e.stdout, rows)
	return nil
}

// rebuild projects the stream into the new database at path until it has
// applied the stream's last sequence as of the start. The summary's applied
// is how far it got, also on failure.
func rebuild(ctx context.Context, e *env, path string) (rebuildSummary, error) {
	c, err := e.client()
	if err != nil {
		return rebuildSummary{}, err
	}
	js, err := jetstream.New(e.nc)
	if err != nil {
		return rebuildSummary{}, err
	}
	target, err := streamLastSeq(ctx, e, js)
	if err != nil {
		return rebuildSummary{}, err
	}
	db, err := projections.Open(ctx, path)
	if err != nil {
		return rebuildSummary{}, err
	}
	sum, err := project(ctx, e, db, js, events.Subjects{Prefix: c.Prefix()}, target)
	if cerr := db.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close %s: %w", path, cerr)
	}
	return sum, err
}

func streamLastSeq(ctx context.Context, e *env, js jetstream.JetStream) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, fmt.Errorf("no stream %s on %s: is this tokend's NATS server?", events.StreamName, e.natsURL)
	}
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	// The newest event, not the stream's last sequence: a stream written by
	// an earlier version may end on a sealed child the read model never holds.
	last, err := events.LastEventSeq(ctx, s, events.Subjects{Prefix: e.prefix})
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", events.StreamName, err)
	}
	return last, nil
}

func project(ctx context.Context, e *env, db *projections.DB, js jetstream.JetStream, subjects events.Subjects, target uint64) (rebuildSummary, error) {
	// The projector logs its own progress at Info; the bar replaces that,
	// but warnings (a skipped malformed message) must still show.
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := projections.NewProjector(ctx, db, js, subjects, log)
	if err != nil {
		return rebuildSummary{}, err
	}
	start, from := time.Now(), p.Applied()
	// Counted from the batches: events applied, not stream sequences.
	var applied atomic.Int64
	p.OnBatch = func(n int, _ time.Duration) { applied.Add(int64(n)) }
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	reached := make(chan struct{})
	go func() {
		if p.WaitFor(runCtx, target) == nil {
			close(reached)
		}
	}()

	bar := newProgress(e.stderr, from, target)
	tick := time.NewTicker(bar.every)
	defer tick.Stop()
	var runErr error
	running := true
wait:
	for {
		select {
		case <-reached:
			break wait
		case runErr = <-done:
			running = false
			break wait
		case <-ctx.Done():
			break wait
		case <-tick.C:
			bar.draw(p.Applied())
		}
	}
	stop()
	if running {
		runErr = <-done // Run commits the batch in progress before it returns
	}
	reachedSeq := p.Applied()
	bar.finish(reachedSeq)
	sum := rebuildSummary{applied: reachedSeq, events: uint64(applied.Load()) - p.Skipped(), skipped: p.Skipped(), took: time.Since(start)}
	switch {
	case runErr != nil:
		return sum, fmt.Errorf("rebuild failed at seq %d of %d: %w", reachedSeq, target, runErr)
	case reachedSeq >= target:
		return sum, nil
	case ctx.Err() != nil:
		return sum, fmt.Errorf("rebuild interrupted at seq %d of %d; the database keeps the events applied so far", reachedSeq, target)
	}
	return sum, fmt.Errorf("rebuild stopped at seq %d of %d: the stream consumer ended (connection lost?)", reachedSeq, target)
}

// progress shows a rebuild's progress on stderr: a bar redrawn in place on a
// terminal, else (a log file) a line every few seconds.
type progress struct {
	w            io.Writer
	tty          bool
	every        time.Duration
	start        time.Time
	from, target uint64
}

func newProgress(w io.Writer, from, target uint64) *progress {
	p := &progress{w: w, tty: cli.IsTerminal(w), every: 2 * time.Second, start: time.Now(), from: from, target: target}
	if p.tty {
		p.every = 200 * time.Millisecond
	} else {
		fmt.Fprintf(w, "tokenctl rebuild: applying stream %s up to seq %d\n", events.StreamName, target)
	}
	return p
}

func (p *progress) draw(applied uint64) {
	if p.target == 0 {
		return
	}
	done := min(applied, p.target)
	frac := float64(done) / float64(p.target)
	rate := float64(applied-p.from) / time.Since(p.start).Seconds()
	eta := "?"
	if rate > 0 {
		eta = time.Duration(float64(p.target-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	if !p.tty {
		fmt.Fprintf(p.w, "tokenctl rebuild: seq %d/%d (%.1f%%), %.0f seq/s, ETA %s\n", done, p.target, 100*frac, rate, eta)
		return
	}
	const width = 30
	filled := int(frac * width)
	// \r and erase-line redraw the same line.
	fmt.Fprintf(p.w, "\r[%s%s] %5.1f%%  seq %d/%d  %.0f/s  ETA %s\x1b[K",
		strings.Repeat("=", filled), strings.Repeat(" ", width-filled), 100*frac, done, p.target, rate, eta)
}

// finish draws the final state and ends the bar's line.
func (p *progress) finish(applied uint64) {
	if p.tty && p.target > 0 {
		p.draw(applied)
		fmt.Fprintln(p.w)
	}
}
