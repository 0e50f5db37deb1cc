package projections

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/queries"
)

// position is where the read model stands in the stream: the last
// sequence applied, the SHA-256 of the message there (messageHash) and the
// created time of the stream it was applied from. A read model from before
// migration 0007 has neither hash nor created time (nil, zero): unknown.
type position struct {
	seq     uint64
	hash    []byte
	created time.Time
}

// readPosition returns the position stored in the read model; a new one
// stands at 0.
func readPosition(ctx context.Context, q *queries.Queries) (position, error) {
	row, err := q.Position(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return position{}, nil
	}
	if err != nil {
		return position{}, err
	}
	pos := position{seq: uint64(row.AppliedSeq), hash: row.AppliedHash}
	if row.StreamCreated.Valid {
		pos.created = time.Unix(0, row.StreamCreated.Int64)
	}
	return pos, nil
}

// messageHash identifies a stored message. Every event's data holds its
// unique id, so another event at the same sequence has another hash.
func messageHash(subject string, data []byte) []byte {
	h := sha256.New()
	h.Write([]byte(subject))
	h.Write([]byte{0})
	h.Write(data)
	return h.Sum(nil)
}

// streamState is what the stream says about a position: its created time,
// its last sequence (which stays when retention drops messages) and the
// hash of the message at the position's sequence, nil if that message is
// gone (its TTL or MaxAge ran out, or MaxBytes dropped it).
type streamState struct {
	created time.Time
	lastSeq uint64
	atSeq   []byte
}

// mismatch returns why a read model at pos cannot go on from there in the
// stream, "" if it can. It errs towards going on: a rebuild takes a while
// and a position it cannot disprove is kept.
func mismatch(pos position, s streamState) string {
	switch {
	case pos.seq == 0:
		return ""
	case pos.seq > s.lastSeq:
		return fmt.Sprintf("read model is ahead of the stream: applied seq %d, the stream's last seq is %d", pos.seq, s.lastSeq)
	case pos.hash != nil && s.atSeq != nil:
		if !bytes.Equal(pos.hash, s.atSeq) {
			return fmt.Sprintf("the stream holds another event at seq %d than the read model applied there: it was restored from a backup and written to since, or replaced", pos.seq)
		}
		// The same event at the same sequence: the same history, whatever
		// the created time says (a restore into a cluster gives a new one).
		return ""
	case !pos.created.IsZero() && !pos.created.Equal(s.created):
		return fmt.Sprintf("read model was built from another stream (created %s, this one %s)", formatCreated(pos.created), formatCreated(s.created))
	}
	return ""
}

func formatCreated(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// divergedError stops a run whose read model cannot go on in the stream;
// Run rebuilds it.
type divergedError struct{ reason string }

func (e *divergedError) Error() string { return e.reason }

// inspect reads the read model's position and then the stream, in that
// order: a healthy stream only grows past a position read before it. It
// returns the stream and why the read model cannot go on in it, "" if it
// can.
func (p *Projector) inspect(ctx context.Context) (jetstream.Stream, string, error) {
	pos, err := readPosition(ctx, p.db.R)
	if err != nil {
		return nil, "", err
	}
	stream, err := p.js.Stream(ctx, events.StreamName)
	if err != nil {
		return nil, "", err
	}
	info := stream.CachedInfo()
	now := streamState{created: info.Created, lastSeq: info.State.LastSeq}
	if pos.seq > 0 && pos.seq <= now.lastSeq && pos.hash != nil {
		m, err := stream.GetMsg(ctx, pos.seq)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return nil, "", err
		default:
			now.atSeq = messageHash(m.Subject, m.Data)
		}
	}
	return stream, mismatch(pos, now), nil
}

// rebuild empties the read model, which the projector then fills from the
// start of the stream: what it does with a deleted projections.db. Applied
// is 0 meanwhile, so /readyz reports the lag until the rebuild is done.
func (p *Projector) rebuild(ctx context.Context, reason string) error {
	p.log.Warn("rebuilding the read model from the stream", "reason", reason)
	if err := p.db.reset(ctx); err != nil {
		return fmt.Errorf("empty the read model to rebuild it: %w", err)
	}
	p.applied.Store(0)
	p.streamSeq.Store(0) // the old stream's newest sequence means nothing here
	return nil
}
