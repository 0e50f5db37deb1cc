package signals

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// lagTimeout bounds one stream's measurement.
const lagTimeout = 5 * time.Second

// measureLag reports every served stream's status and lag every LagEvery
// until ctx ends. Every instance reports every stream (the same numbers,
// read from the consumer), so the metrics do not depend on which instance
// delivers.
func (e *Engine) measureLag(ctx context.Context) {
	t := time.NewTicker(e.o.LagEvery)
	defer t.Stop()
	for {
		e.mu.Lock()
		streams := make([]Stream, 0, len(e.runners))
		for _, r := range e.runners {
			if st, deleted, _ := r.current(); !deleted {
				streams = append(streams, st)
			}
		}
		e.mu.Unlock()
		for _, st := range streams {
			e.o.Metrics.SSFStatus(st.ID, string(st.Status))
			if st.Status == StatusDisabled {
				e.o.Metrics.SSFLag(st.ID, 0, 0) // nothing is held for it
				continue
			}
			mctx, cancel := context.WithTimeout(ctx, lagTimeout)
			n, age, err := e.Lag(mctx, st.ID)
			cancel()
			if err == nil {
				e.o.Metrics.SSFLag(st.ID, n, age)
			} else if ctx.Err() == nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				e.log.Debug("SSF: lag not measured", "stream", st.ID, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Lag returns how many messages stream streamID's consumer has not had
// acknowledged (not delivered yet, or in flight), and the age of the
// oldest of them: the first message on one of its subjects after its ack
// floor. (Some of them may be passed over, being for other receivers.)
func (e *Engine) Lag(ctx context.Context, streamID string) (uint64, time.Duration, error) {
	stream, _, ok := e.started()
	if !ok {
		return 0, 0, errNotStarted
	}
	c, err := stream.Consumer(ctx, ConsumerName(streamID))
	if err != nil {
		return 0, 0, err
	}
	info := c.CachedInfo()
	n := info.NumPending + uint64(info.NumAckPending)
	if n == 0 {
		return 0, 0, nil
	}
	var oldest time.Time
	for _, subject := range e.filterSubjects(streamID) {
		m, err := stream.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, 0, err
		}
		if oldest.IsZero() || m.Time.Before(oldest) {
			oldest = m.Time
		}
	}
	if oldest.IsZero() {
		return n, 0, nil
	}
	return n, max(0, e.now().Sub(oldest)), nil
}
