package projections

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/queries"
)

// DefaultBatchSize is the most events applied in one transaction. Applying
// ~2,000 events per commit instead of ~500 cut the projector's cost per
// event by a quarter (rebuild: 19k to 26k events/s); 4,000 saved nothing
// more and left 30 MiB more resident after a burst (docs/benchmarks.md).
const DefaultBatchSize = 2000

// batchLinger is how long a busy projector waits to fill a batch (see
// fill): about DefaultBatchSize events at tokend's top rotation rate here.
const batchLinger = 250 * time.Millisecond

// Projector applies the TOKENS stream to the read model, in order, in
// batches: each batch is one transaction that also stores the position, so
// a crash between batches loses and repeats nothing, and applying an event
// twice changes nothing.
type Projector struct {
	db       *DB
	js       jetstream.JetStream
	subjects events.Subjects
	log      *slog.Logger
	// BatchSize bounds a transaction and Linger how long a busy projector
	// waits to fill one; OnBatch, if set, is told each batch's size and
	// duration (metrics).
	BatchSize int
	Linger    time.Duration
	OnBatch   func(events int, took time.Duration)
	// MaxAge is the stream's MaxAge (0: none): the stream drops an event
	// stored without a TTL this long after it was stored, and so does the
	// read model.
	MaxAge time.Duration

	applied   atomic.Uint64
	streamSeq atomic.Uint64 // the newest event's stream sequence as last seen
	skipped   atomic.Uint64

	mu       sync.Mutex
	advanced chan struct{} // closed and replaced whenever applied moves
	// waiting counts the callers waiting for a sequence (read-your-writes,
	// revoke by subject): while there are any, freshness beats batch size
	// and no batch lingers. A count rather than a one-shot signal, so a
	// batch that ends without the awaited sequence does not let the next
	// one linger, and a caller that gave up cuts nothing short.
	waiting atomic.Int64
	// hurry wakes a lingering fill to look at waiting.
	hurry chan struct{}
}

// NewProjector returns a projector resuming from the position stored in
// db, or, if the stream no longer holds what the read model was built from
// (a restored backup, a recreated stream), one that rebuilds it: the read
// model is emptied before NewProjector returns, so nothing answers from it
// meanwhile.
func NewProjector(ctx context.Context, db *DB, js jetstream.JetStream, subjects events.Subjects, log *slog.Logger) (*Projector, error) {
	p := &Projector{db: db, js: js, subjects: subjects, log: log, BatchSize: DefaultBatchSize, Linger: batchLinger,
		advanced: make(chan struct{}), hurry: make(chan struct{}, 1)}
	pos, err := readPosition(ctx, db.W)
	if err != nil {
		return nil, err
	}
	p.applied.Store(pos.seq)
	if pos.seq == 0 {
		return p, nil
	}
	_, reason, err := p.inspect(ctx)
	if err != nil {
		return nil, fmt.Errorf("check the read model against stream %s: %w", events.StreamName, err)
	}
	if reason != "" {
		if err := p.rebuild(ctx, reason); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Applied returns the last stream sequence applied.
func (p *Projector) Applied() uint64 { return p.applied.Load() }

// Lag returns how far, in stream sequences, the read model is behind the
// newest event as last seen.
func (p *Projector) Lag() uint64 {
	last, applied := p.streamSeq.Load(), p.applied.Load()
	if last < applied {
		return 0
	}
	return last - applied
}

// StreamSeq returns the newest event's stream sequence as last seen.
func (p *Projector) StreamSeq() uint64 { return p.streamSeq.Load() }

// Skipped returns how many malformed messages were skipped.
func (p *Projector) Skipped() uint64 { return p.skipped.Load() }

// WaitFor blocks until sequence seq is applied or ctx ends.
func (p *Projector) WaitFor(ctx context.Context, seq uint64) error {
	if p.applied.Load() >= seq {
		return nil
	}
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	select {
	case p.hurry <- struct{}{}:
	default: // a wake-up is pending, and fill reads waiting after taking it
	}
	for {
		p.mu.Lock()
		ch := p.advanced
		p.mu.Unlock()
		if p.applied.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// CatchUp waits until every event in the stream now is applied.
func (p *Projector) CatchUp(ctx context.Context) (uint64, error) {
	last, err := p.refreshStreamSeq(ctx)
	if err != nil {
		return 0, err
	}
	return last, p.WaitFor(ctx, last)
}

func (p *Projector) refreshStreamSeq(ctx context.Context) (uint64, error) {
	s, err := p.js.Stream(ctx, events.StreamName)
	if err != nil {
		return 0, err
	}
	last, err := events.LastEventSeq(ctx, s, p.subjects)
	if err != nil {
		return 0, err
	}
	p.ObserveStreamSeq(last)
	return last, nil
}

// ObserveStreamSeq records the sequence of the stream's newest event as
// seen by someone else (the readiness check), so Lag stays current while
// the projector is stopped or stalled and its own poller is not running.
func (p *Projector) ObserveStreamSeq(seq uint64) {
	for {
		cur := p.streamSeq.Load()
		if seq <= cur || p.streamSeq.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// Run applies the stream until ctx ends; the batch in progress is committed
// before it returns. It returns nil once ctx ends. When it starts, and every
// second while it runs, it checks that the stream still holds what the read
// model was built from, and rebuilds the read model if not.
func (p *Projector) Run(ctx context.Context) error {
	for {
		err := p.run(ctx)
		var diverged *divergedError
		switch {
		case ctx.Err() != nil:
			return nil
		case !errors.As(err, &diverged):
			return err
		}
		if err := p.rebuild(ctx, diverged.reason); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

func (p *Projector) run(ctx context.Context) error {
	stream, reason, err := p.inspect(ctx)
	if err != nil {
		return err
	}
	if reason != "" {
		return &divergedError{reason}
	}
	// Recorded with every batch, and compared with the stream's while this
	// run lasts.
	created := stream.CachedInfo().Created
	last, err := events.LastEventSeq(ctx, stream, p.subjects)
	if err != nil {
		return err
	}
	p.ObserveStreamSeq(last)
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{p.subjects.Events()}, DeliverPolicy: jetstream.DeliverAllPolicy}
	if start := p.Applied(); start > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start+1
	}
	cons, err := p.js.OrderedConsumer(ctx, events.StreamName, cfg)
	if err != nil {
		return err
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(2 * p.BatchSize))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	incoming := make(chan jetstream.Msg, 2*p.BatchSize)
	go func() {
		defer close(incoming)
		for {
			m, err := iter.Next()
			if err != nil {
				return // stopped
			}
			select {
			case incoming <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { <-ctx.Done(); iter.Stop() }()

	if last > p.Applied() {
		go p.reportProgress(ctx, last)
	}
	go p.watch(ctx, created, cancel)

	batch := make([]jetstream.Msg, 0, p.BatchSize)
	busy := false
	for m := range incoming {
		batch = p.fill(append(batch[:0], m), incoming, busy)
		busy = len(batch) > 1
		if err := p.apply(context.WithoutCancel(ctx), batch, created); err != nil {
			return fmt.Errorf("apply batch ending at seq %d: %w", p.Applied(), err)
		}
	}
	var diverged *divergedError
	if errors.As(context.Cause(ctx), &diverged) {
		return diverged
	}
	return nil
}

// fill adds what is waiting in incoming to batch, up to BatchSize. Under
// load (busy: the last batch found more than one event waiting) it waits a
// moment for more, because a commit writes every page a batch touched and a
// larger batch writes each page once for many events, unless a reader is
// waiting for a sequence. Idle, an event is applied at once.
func (p *Projector) fill(batch []jetstream.Msg, incoming <-chan jetstream.Msg, busy bool) []jetstream.Msg {
	var linger <-chan time.Time
	if busy && p.waiting.Load() == 0 {
		timer := time.NewTimer(p.Linger)
		defer timer.Stop()
		linger = timer.C
	}
	for len(batch) < p.BatchSize {
		var (
			m  jetstream.Msg
			ok bool
		)
		if linger == nil {
			select {
			case m, ok = <-incoming:
			default:
				return batch
			}
		} else {
			select {
			case m, ok = <-incoming:
			case <-linger:
				return batch
			case <-p.hurry:
				if p.waiting.Load() > 0 {
					return batch
				}
				continue // the waiter that woke us has left
			}
		}
		if !ok {
			return batch
		}
		batch = append(batch, m)
	}
	return batch
}

// watch keeps the stream's newest sequence current and, every second,
// checks that the read model can still go on in the stream of the run,
// created at created (it may be restored or replaced under a running
// tokend with --nats-url); if not, it stops the run with the reason.
func (p *Projector) watch(ctx context.Context, created time.Time, stop context.CancelCauseFunc) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		reason := p.recheck(qctx, created)
		cancel()
		if reason != "" {
			stop(&divergedError{reason})
			return
		}
	}
}

// recheck returns why the read model cannot go on in the stream, "" if it
// can or the stream cannot be read now.
func (p *Projector) recheck(ctx context.Context, created time.Time) string {
	stream, reason, err := p.inspect(ctx)
	if err != nil {
		return ""
	}
	// Events applied since the stream was replaced may already be the
	// read model's last, so the new stream would seem to hold its history.
	if now := stream.CachedInfo().Created; !now.Equal(created) {
		return fmt.Sprintf("the stream was replaced while the projector ran (created %s, now %s)", formatCreated(created), formatCreated(now))
	}
	if reason != "" {
		return reason
	}
	if last, err := events.LastEventSeq(ctx, stream, p.subjects); err == nil {
		p.ObserveStreamSeq(last)
	}
	return ""
}

// reportProgress logs a rebuild or catch-up every few seconds, because a
// person is waiting for /readyz.
func (p *Projector) reportProgress(ctx context.Context, target uint64) {
	start, from := time.Now(), p.Applied()
	p.log.Info("projections catching up with the stream", "applied", from, "target", target)
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for p.Applied() < target {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			done := p.Applied()
			rate := float64(done-from) / time.Since(start).Seconds()
			p.log.Info("projections catching up with the stream", "applied", done, "target", target,
				"percent", fmt.Sprintf("%.1f", 100*float64(done)/float64(max(target, 1))), "events_per_second", int(rate))
		}
	}
	p.log.Info("projections caught up", "applied", p.Applied(), "took", time.Since(start).Round(time.Millisecond))
}

// apply writes batch, from the stream created at created, in one
// transaction with the position it reaches.
func (p *Projector) apply(ctx context.Context, batch []jetstream.Msg, created time.Time) error {
	start := time.Now()
	tx, err := p.db.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	q := p.db.W.WithTx(tx)
	var last uint64
	evs := make([]stateAt, 0, len(batch))
	for _, m := range batch {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		last = md.Sequence.Stream
		p.ObserveStreamSeq(last)
		familyID := p.subjects.FamilyOf(m.Subject())
		env, err := events.Decode(m.Data(), familyID)
		if err != nil {
			// A message from a misconfigured publisher: no tokend event can be
			// derived from it. Skip it (logged without its payload, counted)
			// rather than wedge every query behind it.
			p.skipped.Add(1)
			p.log.Warn("skipping malformed message on the event stream", "seq", last, "subject", m.Subject(), "err", errors.Unwrap(err))
			continue
		}
		evs = append(evs, stateAt{env: env, seq: last, expiresAt: p.expiry(m, md.Timestamp)})
	}
	if err := applyEvents(ctx, q, evs); err != nil {
		return err
	}
	// Every event carries its family's whole state, so a family needs its
	// row written once per batch, from its newest event.
	families := make(map[string]familyBatch, len(evs))
	for _, e := range evs {
		f, seen := families[e.env.FamilyID]
		f.newest = e
		if e.expiresAt != 0 && (f.pruneAt == 0 || e.expiresAt < f.pruneAt) {
			f.pruneAt = e.expiresAt
		}
		f.advances = (f.advances || !seen) && advances(e.env.Type)
		families[e.env.FamilyID] = f
	}
	for _, f := range families {
		if err := writeFamily(ctx, q, f); err != nil {
			return err
		}
	}
	lastMsg := batch[len(batch)-1]
	if err := q.SetPosition(ctx, queries.SetPositionParams{AppliedSeq: int64(last),
		AppliedHash: messageHash(lastMsg.Subject(), lastMsg.Data()), StreamCreated: nullTime(unixNanoOrZero(created))}); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	p.applied.Store(last)
	p.mu.Lock()
	close(p.advanced)
	p.advanced = make(chan struct{})
	p.mu.Unlock()
	if p.OnBatch != nil {
		p.OnBatch(len(batch), time.Since(start))
	}
	return nil
}

// stateAt is a family's state as of the event at seq; expiresAt is when
// the stream drops that event, 0 for never.
type stateAt struct {
	env       events.Envelope
	seq       uint64
	expiresAt int64
}

// familyBatch is what a batch holds of one family: its newest state, when
// the first of the batch's events of it expires (0: none does), and
// whether they are all rotations and reuses.
type familyBatch struct {
	newest   stateAt
	pruneAt  int64
	advances bool
}

// advances reports whether an event of type t changes no more of its
// family than AdvanceFamily writes.
func advances(t string) bool {
	return t == string(domain.TokenRotated) || t == string(domain.TokenReused)
}

// expiry returns when the stream drops m, stored at stored: after its TTL,
// else after the stream's MaxAge; 0 for never.
func (p *Projector) expiry(m jetstream.Msg, stored time.Time) int64 {
	ttl := p.MaxAge
	if h := m.Headers().Get(jetstream.MsgTTLHeader); h != "" {
		if secs, err := strconv.ParseInt(h, 10, 64); err == nil && secs > 0 {
			ttl = time.Duration(secs) * time.Second
		} else if d, err := time.ParseDuration(h); err == nil && d > 0 {
			ttl = d
		}
	}
	if ttl <= 0 {
		return 0
	}
	return stored.Add(ttl).UnixNano()
}

// applyEvents writes a batch's events, in seq order, with the time bounds
// that map a time window to a seq range (migration 0003): the latest time
// up to each event and the earliest from it on.
func applyEvents(ctx context.Context, q *queries.Queries, evs []stateAt) error {
	if len(evs) == 0 {
		return nil
	}
	minFrom := make([]int64, len(evs))
	for i := len(evs) - 1; i >= 0; i-- {
		minFrom[i] = evs[i].env.Time.UnixNano()
		if i+1 < len(evs) {
			minFrom[i] = min(minFrom[i], minFrom[i+1])
		}
	}
	first := int64(evs[0].seq)
	maxUpto := int64(math.MinInt64)
	before, err := q.BoundsBefore(ctx, first)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return err
	default:
		maxUpto = before.MaxTimeUpto
		if before.MinTimeFrom > minFrom[0] {
			if err := lowerMinTimeFrom(ctx, q, minFrom[0], first); err != nil {
				return err
			}
		}
	}
	for i, e := range evs {
		maxUpto = max(maxUpto, e.env.Time.UnixNano())
		if err := applyEvent(ctx, q, e, maxUpto, minFrom[i]); err != nil {
			return err
		}
		// A batch is tens of milliseconds of CPU: commands waiting for a
		// core run between its rows instead of after a slice of it (the
		// scheduler preempts only every 10 ms). p99 was 1 ms lower in 4
		// of 4 A/B pairs.
		runtime.Gosched()
	}
	return nil
}

// lowerMinTimeFrom gives the rows before seq whose min_time_from is after
// at, the time of an event at or after seq, that time instead.
func lowerMinTimeFrom(ctx context.Context, q *queries.Queries, at, seq int64) error {
	from, err := q.FirstMinTimeFromAfter(ctx, queries.FirstMinTimeFromAfterParams{Time: at, Seq: seq})
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	return q.LowerMinTimeFrom(ctx, queries.LowerMinTimeFromParams{Time: at, FromSeq: from, Seq: seq})
}

// applyEvent writes one event's audit row and, for a new token, its token
// row. Each write is idempotent, so a re-delivered event changes nothing.
func applyEvent(ctx context.Context, q *queries.Queries, e stateAt, maxTimeUpto, minTimeFrom int64) error {
	env := e.env
	ctxJSON := []byte("{}")
	if len(env.Context) > 0 {
		ctxJSON, _ = json.Marshal(env.Context)
	}
	return q.InsertAuditEvent(ctx, queries.InsertAuditEventParams{
		Seq: int64(e.seq), ID: env.ID, Type: env.Type, Time: env.Time.UnixNano(), FamilyID: env.FamilyID, Subject: env.Subject,
		ClientID: env.ClientID, Generation: int64(env.Generation), Reason: env.Reason, Context: string(ctxJSON),
		MaxTimeUpto: maxTimeUpto, MinTimeFrom: minTimeFrom, ExpiresAt: nullTime(e.expiresAt),
		PresentedBy: env.PresentedBy, PresentedGeneration: int64(env.PresentedGeneration), Pii: sealedColumn(env),
		DpopJkt: env.DPoPJKT, PresentedJkt: env.PresentedJKT,
	})
}

// sealedColumn is the stored form of an event's sealed personal fields,
// NULL for an event stored in clear.
func sealedColumn(env events.Envelope) sql.NullString {
	return sql.NullString{String: env.PII, Valid: env.PII != ""}
}

// nullTime is a unix-ns time column, NULL for 0.
func nullTime(ns int64) sql.NullInt64 { return sql.NullInt64{Int64: ns, Valid: ns != 0} }

// writeFamily writes a family's row as of its newest event in a batch;
// an older state than the row holds changes nothing. Most batches only
// rotate a family, and then only the columns a rotation changes are
// written (AdvanceFamily), which leaves most of the family's index entries
// alone.
func writeFamily(ctx context.Context, q *queries.Queries, b familyBatch) error {
	if b.advances {
		f := b.newest.env.Data.Family
		n, err := q.AdvanceFamily(ctx, queries.AdvanceFamilyParams{FamilyID: b.newest.env.FamilyID,
			Generation: int64(f.Generation), CurrentHash: f.CurrentHash, LastUsedAt: f.LastUsedAt.UnixNano(),
			IdleExpiresAt: f.IdleExpiresAt.UnixNano(), LastSeq: int64(b.newest.seq), PruneAt: b.pruneAt})
		if err != nil || n == 1 {
			return err
		}
	}
	return upsertFamily(ctx, q, b)
}

// upsertFamily writes a family's whole row.
func upsertFamily(ctx context.Context, q *queries.Queries, b familyBatch) error {
	s := b.newest
	f := s.env.Family()
	aud, _ := json.Marshal(nonNil(f.Audience))
	revokedAt := sql.NullInt64{}
	if !f.RevokedAt.IsZero() {
		revokedAt = sql.NullInt64{Int64: f.RevokedAt.UnixNano(), Valid: true}
	}
	return q.UpsertFamily(ctx, queries.UpsertFamilyParams{
		FamilyID: f.ID, Subject: f.Subject, ClientID: f.ClientID, Scope: domain.ScopeString(f.Scope),
		Audience: string(aud), Status: string(f.Status), Generation: int64(f.Generation), CurrentHash: f.CurrentHash,
		CreatedAt: f.CreatedAt.UnixNano(), LastUsedAt: f.LastUsedAt.UnixNano(), IdleExpiresAt: f.IdleExpiresAt.UnixNano(),
		AbsoluteExpiresAt: f.AbsoluteExpiresAt.UnixNano(), RevokedAt: revokedAt, RevokedReason: f.RevokedReason,
		LastSeq: int64(s.seq), ArchivedAt: nullTime(unixNanoOrZero(f.ArchivedAt)), PruneAt: nullTime(b.pruneAt),
		DpopJkt: f.DPoPJKT,
	})
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// pruneBatch bounds the rows one prune transaction dates or deletes (give
// or take a family), so the writer connection is never held long by a
// backlog (the first prune after an upgrade, say); pruneFamilies bounds
// the families it looks at.
const (
	pruneBatch    = 5000
	pruneFamilies = 200
)

// Prune drops the rows of events the stream has dropped by now (their TTL
// or the stream's MaxAge ran out), and each family with its last event.
// The stream drops them on its own clock, the read model on this one, at
// the same moments, so a rebuild from the stream yields the same rows. It
// returns how many audit rows it deleted.
func (p *Projector) Prune(ctx context.Context, now time.Time) (int64, error) {
	if p.MaxAge > 0 {
		if err := p.dateUndated(ctx); err != nil {
			return 0, err
		}
	}
	var deleted int64
	for {
		n, more, err := p.pruneSome(ctx, now.UnixNano())
		deleted += n
		if err != nil || !more {
			return deleted, err
		}
	}
}

// dateUndated gives rows from before retention the time the stream's
// MaxAge drops their events, and makes their families due then.
func (p *Projector) dateUndated(ctx context.Context) error {
	tx, err := p.db.writer.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	q := p.db.W.WithTx(tx)
	dated, err := q.DateUndatedEvents(ctx, queries.DateUndatedEventsParams{MaxAge: p.MaxAge.Nanoseconds(), Lim: pruneBatch})
	if err != nil {
		return err
	}
	first := map[string]int64{}
	for _, d := range dated {
		if at, ok := first[d.FamilyID]; !ok || d.ExpiresAt.Int64 < at {
			first[d.FamilyID] = d.ExpiresAt.Int64
		}
	}
	for id, at := range first {
		if err := q.PruneFamilyAt(ctx, queries.PruneFamilyAtParams{FamilyID: id, At: nullTime(at)}); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// pruneSome deletes the expired audit rows of some families due by now, in
// one transaction, and each family with its last row; more reports that
// families may be left.
func (p *Projector) pruneSome(ctx context.Context, now int64) (deleted int64, more bool, err error) {
	tx, err := p.db.writer.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback()
	q := p.db.W.WithTx(tx)
	due, err := q.FamiliesToPrune(ctx, queries.FamiliesToPruneParams{Now: nullTime(now), Lim: pruneFamilies})
	if err != nil {
		return 0, false, err
	}
	more = len(due) == pruneFamilies
	for _, id := range due {
		if deleted >= pruneBatch {
			more = true
			break
		}
		n, err := q.DeleteExpiredFamilyEvents(ctx, queries.DeleteExpiredFamilyEventsParams{FamilyID: id, Now: nullTime(now)})
		if err != nil {
			return 0, false, err
		}
		deleted += n
		gone, err := q.DeleteEmptyFamily(ctx, id)
		if err != nil {
			return 0, false, err
		}
		if gone == 0 {
			if err := q.ReschedulePrune(ctx, id); err != nil {
				return 0, false, err
			}
		}
	}
	return deleted, more, tx.Commit()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
