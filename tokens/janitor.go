package tokens

import (
	"context"
	"time"
)

// Janitor archives families whose absolute lifetime is over: it appends
// family.archived, the summary that outlives their history under the
// stream's retention. Every instance may run one: the writer's fence and
// the decider (archive once) make a family archived exactly once.
type Janitor struct {
	Tokens *Service
	// Expired lists up to limit families whose absolute expiry is before
	// the given time and that are not archived yet (the read model knows).
	Expired func(ctx context.Context, before time.Time, limit int) ([]string, error)
	Now     func() time.Time
	// OnArchived, if set, is told how many families a sweep archived.
	OnArchived func(n int)
}

// janitorBatch bounds the families one sweep archives, so archiving a
// backlog (after an upgrade, say) never crowds out refreshes.
const janitorBatch = 256

// SweepAll archives every expired family the read model lists, a batch at
// a time, and returns how many it archived.
func (j *Janitor) SweepAll(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := j.Sweep(ctx)
		total += n
		if err != nil || n < janitorBatch {
			return total, err // a full batch means a backlog: sweep again
		}
	}
}

// Sweep archives one batch of expired families and returns how many it
// archived.
func (j *Janitor) Sweep(ctx context.Context) (int, error) {
	ids, err := j.Expired(ctx, j.Now(), janitorBatch)
	if err != nil {
		return 0, err
	}
	archived := 0
	for _, id := range ids {
		ok, err := j.Tokens.Archive(ctx, id)
		if err != nil {
			return archived, err
		}
		if ok {
			archived++
		}
	}
	if archived > 0 && j.OnArchived != nil {
		j.OnArchived(archived)
	}
	return archived, nil
}
